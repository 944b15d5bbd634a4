"""Record per-(configuration, seed) outcomes of a dense design, for the front-replay benchmark.

Each (configuration, training seed) is trained in this process exactly as a one-worker sweep trial
trains it (:func:`nsde_ray.train.fit_single_worker`: same loop, seeds and checkpoints), then
evaluated as the sweep evaluates it (the sweep's base evaluation: IG and Saliency on 64 images,
evaluation seed 0). The first ``--eval-repeat-seeds`` training seeds of every configuration are
evaluated a second time on evaluation seed 1 (other images, perturbations and SIC draws), which
measures the evaluation's own spread (columns ``<objective>_eval1``).

One CSV row per (configuration, seed), appended as soon as it is measured, so the command is
resumable: run it again and it skips the rows it has (and a seed interrupted mid-training continues
from its latest checkpoint in ``--work-dir``).

    python benchmarks/front_replay_record.py --design digits --out benchmarks/data/front_replay_digits.csv
    python benchmarks/front_replay_record.py --design cifar10_subset --data-dir DIR \
        --out benchmarks/data/front_replay_cifar10.csv

Designs: ``digits`` is 12 configurations (every noise mode; sigma and the learning rate varied) x
8 seeds of the default sweep's base trial (``cifar_resnet8``, 6 epochs); ``cifar10_subset`` is 6
configurations x 5 seeds of RESULTS.md's CIFAR-10 subset set-up (15 epochs, resident data off).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from dataclasses import replace

import torch

from nsde_ray.config import EvalConfig, TrainConfig, TrialConfig
from nsde_ray.data import build_datasets
from nsde_ray.evaluate import evaluate
from nsde_ray.train import fit_single_worker, load_trained_model


def _configs(**runs: list[tuple[float, float]]) -> tuple[tuple[str, dict], ...]:
    """(configuration id, flat params applied to the design's base trial) for each noise mode's (sigma, lr)
    pairs, in order; ids as ``none_lr0.1`` and ``gaussian_0.5_lr0.1``."""
    return tuple(
        (
            f"{mode}_lr{lr}" if mode == "none" else f"{mode}_{sigma}_lr{lr}",
            {"noise_mode": mode, "noise_sigma": sigma, "lr": lr},
        )
        for mode, pairs in runs.items()
        for sigma, lr in pairs
    )


DIGITS_CONFIGS = _configs(
    none=[(0.0, 0.05), (0.0, 0.1), (0.0, 0.2)],
    gaussian=[(0.25, 0.1), (0.5, 0.1), (1.0, 0.1), (0.5, 0.05)],
    attribution=[(0.5, 0.1), (1.0, 0.1)],
    input=[(0.1, 0.1), (0.25, 0.1), (0.5, 0.1)],
)
CIFAR_IDS = (
    "none_lr0.05",
    "none_lr0.1",
    "gaussian_0.5_lr0.1",
    "attribution_0.5_lr0.1",
    "input_0.1_lr0.1",
    "input_0.25_lr0.1",
)
CIFAR_CONFIGS = tuple(config for config in DIGITS_CONFIGS if config[0] in CIFAR_IDS)  # the same order
SWEEP_EVAL = EvalConfig(methods=("ig", "saliency"), num_images=64)
DESIGNS = {
    "digits": (TrialConfig(eval=SWEEP_EVAL), DIGITS_CONFIGS, 8),
    "cifar10_subset": (
        TrialConfig(train=TrainConfig(epochs=15, resident_data="off"), eval=SWEEP_EVAL),
        CIFAR_CONFIGS,
        5,
    ),
}
OBJECTIVE_COLUMNS = ("val_accuracy", "sensitivity", "sic")
METRIC_COLUMNS = (
    "sensitivity_saliency",
    "sic_saliency",
    "sic_valid_fraction_ig",
    "randomisation_passed_ig",
    "noise_energy",
    "train_time_s",
    "eval_time_s",
)
COLUMNS = (
    "design",
    "config_id",
    "noise_mode",
    "noise_sigma",
    "lr",
    "seed",
    *OBJECTIVE_COLUMNS,
    *METRIC_COLUMNS,
    "sensitivity_eval1",
    "sic_eval1",
)


def done_rows(path: str) -> set[tuple[str, int]]:
    """The (configuration id, seed) pairs ``path`` holds already."""
    if not os.path.exists(path):
        return set()
    with open(path, newline="") as handle:
        return {(row["config_id"], int(row["seed"])) for row in csv.DictReader(handle)}


def measure(cfg: TrialConfig, name: str, work_dir: str, eval_twice: bool) -> dict[str, float]:
    """Train ``cfg`` (one worker, in this process) and evaluate it: the row's numbers."""
    outcome = fit_single_worker(cfg, name=name, storage_path=work_dir)
    if outcome.metrics.get("diverged"):
        return {"val_accuracy": math.nan, "train_time_s": outcome.metrics.get("train_time_s", math.nan)}
    with outcome.checkpoint.as_directory() as checkpoint_dir:
        model, _ = load_trained_model(checkpoint_dir)
    splits = build_datasets(cfg.data)
    started = time.perf_counter()
    metrics = evaluate(model, splits, cfg.eval, progress=False).metrics
    row = {name: metrics.get(name, math.nan) for name in (*OBJECTIVE_COLUMNS, *METRIC_COLUMNS)}
    row.update(
        val_accuracy=outcome.metrics["val_accuracy"],
        noise_energy=outcome.metrics["noise_energy"],
        train_time_s=outcome.metrics["train_time_s"],
        eval_time_s=time.perf_counter() - started,
    )
    if eval_twice:
        torch.manual_seed(cfg.eval.seed + 1)
        again = evaluate(model, splits, replace(cfg.eval, seed=cfg.eval.seed + 1), progress=False).metrics
        row.update(sensitivity_eval1=again["sensitivity"], sic_eval1=again["sic"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", choices=sorted(DESIGNS), default="digits")
    parser.add_argument("--data-dir", default=None, help="the image folder of the cifar10_subset design")
    parser.add_argument("--out", required=True, help="CSV to append rows to (created if missing)")
    parser.add_argument("--work-dir", default="/tmp/front_replay_work", help="training checkpoints")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: the design's)")
    parser.add_argument(
        "--eval-repeat-seeds",
        type=int,
        default=2,
        help="training seeds per configuration evaluated a second time (evaluation seed 1)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a default sweep trial has 1)")
    parser.add_argument(
        "--shard",
        type=int,
        nargs=2,
        default=(0, 1),
        metavar=("INDEX", "COUNT"),
        help="run only every COUNT-th (configuration, seed) from INDEX: parallel recorders",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, configs, seeds = DESIGNS[args.design]
    if args.design == "cifar10_subset":
        if not args.data_dir:
            parser.error("--design cifar10_subset needs --data-dir (benchmarks/cifar10_subset.py makes it)")
        base = base.with_params({"dataset": "imagefolder", "data_dir": args.data_dir})
    seeds = args.seeds or seeds
    have = done_rows(args.out)
    work = [(config_id, params, seed) for seed in range(seeds) for config_id, params in configs]
    work = work[args.shard[0] :: args.shard[1]]
    new_file = not os.path.exists(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="nan")
        if new_file:
            writer.writeheader()
        for config_id, params, seed in work:
            if (config_id, seed) in have:
                continue
            cfg = base.with_params({**params, "seed": seed})
            started = time.perf_counter()
            row = measure(cfg, f"{args.design}_{config_id}_seed{seed}", args.work_dir, seed < args.eval_repeat_seeds)
            writer.writerow({"design": args.design, "config_id": config_id, "seed": seed, **params, **row})
            handle.flush()
            print(
                f"{config_id} seed {seed}: "
                + " ".join(f"{k}={row.get(k, math.nan):.4g}" for k in OBJECTIVE_COLUMNS)
                + f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
