"""Trials per GPU-hour of a CIFAR-10 sweep: the real sweep, one GPU, trials sharing it through fractional GPUs.

Runs ``python -m sweeps.accuracy_vs_robustness`` on CIFAR-10 (an image folder with ``train/``,
``val/`` and ``test/``) once per ``--gpus-per-worker`` value, in that order, each sweep the same
search (same ``--seed``: the same configurations, as far as the shorter sweep goes; the first two are
the reference points), with resident training data (the default:
decoded once into GPU memory where it fits), and reads every seed run back from MLflow. One seed
run is a trial's unit of work: training ``--epochs`` epochs from scratch, then the attribution
evaluation. Per sweep it prints and writes (``--json``):

- the sweep's wall seconds and seed runs finished; seed runs per GPU-hour = runs / (wall h x GPUs);
- per seed run, mean ± std: wall, training, evaluation and overhead seconds (``trial_wall_s``,
  ``train_time_s``, ``eval_time_s``, ``overhead_s``);
- the validation accuracy reached: of the plain ResNet reference (``noise_mode = none``) and of all runs.

Without a GPU it runs the same sweeps on CPU (``--gpus-per-worker`` is then ignored): a check of the
script, not a figure.

    python benchmarks/gpu_sweep.py --data-dir /tmp/cifar10 --gpus-per-worker 0.25 1 \\
        --num-samples 4 2 --json gpu_sweep.json
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from sweep_runs import run_sweep, seed_runs, spread

SPLIT = ("trial_wall_s", "train_time_s", "eval_time_s", "overhead_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 image folder: train/, val/, test/ of class folders")
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        nargs="+",
        default=[0.25, 1.0],
        help="one sweep per value; 0.25 lets four one-worker trials share the GPU",
    )
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2, help="the reference points' learning rate")
    parser.add_argument(
        "--num-samples",
        type=int,
        nargs="+",
        default=[4],
        help="configurations per sweep: one number for all, or one per --gpus-per-worker value",
    )
    parser.add_argument("--seeds-per-config", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPU cores the sweeps may use")
    parser.add_argument(
        "--out-dir", help="keep the sweeps' storage, MLflow store and logs here (default: a temporary folder)"
    )
    parser.add_argument("--json", help="write the figures here, after each sweep")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further sweep flags, passed as they are")
    args = parser.parse_args()
    if args.seeds_per_config < 2:
        parser.error("--seeds-per-config must be >= 2: the figures are read from the seed runs")
    if len(args.num_samples) not in (1, len(args.gpus_per_worker)):
        parser.error("--num-samples takes one number, or one per --gpus-per-worker value")
    folder = args.out_dir or tempfile.mkdtemp(prefix="gpu_sweep_")
    os.makedirs(folder, exist_ok=True)
    on_gpu = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if on_gpu else 0
    hardware = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(
        f"{time.strftime('%Y-%m-%d')} | {hardware} x {gpus} | {args.cpus} CPUs | torch {torch.__version__} | "
        f"output in {folder}",
        flush=True,
    )
    results = {"hardware": hardware, "gpus": gpus, "args": vars(args), "sweeps": {}}
    fractions = args.gpus_per_worker if on_gpu else [None]
    samples = args.num_samples * len(fractions) if len(args.num_samples) == 1 else args.num_samples
    for fraction, num_samples in zip(fractions, samples):
        concurrent = int(gpus / fraction) if on_gpu else args.cpus
        cpus_per_worker = max(1, args.cpus // concurrent)
        values = dict(
            dataset="imagefolder",
            data_dir=args.data_dir,
            arch=args.arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            num_samples=num_samples,
            seeds_per_config=args.seeds_per_config,
            cpus_per_worker=cpus_per_worker,
        )
        flags = [item for dest, value in values.items() for item in (f"--{dest.replace('_', '-')}", str(value))]
        flags += args.extra
        if on_gpu:
            flags += ["--use-gpu", "--gpus-per-worker", str(fraction)]
        name = f"gpu_sweep_{'cpu' if fraction is None else str(fraction).replace('.', '_')}"
        print(f"{name}: {concurrent} trials at once, {cpus_per_worker} CPUs each ...", flush=True)
        wall = run_sweep(folder, name, flags)
        runs = seed_runs(folder, name)
        metrics = [run.data.metrics for run in runs]
        scored = [run for run in runs if "val_accuracy" in run.data.metrics]
        plain = [run.data.metrics["val_accuracy"] for run in scored if run.data.params.get("noise_mode") == "none"]
        figures = {
            "gpus_per_worker": fraction,
            "configurations": num_samples,
            "trials_at_once": concurrent,
            "cpus_per_worker": cpus_per_worker,
            "wall_s": wall,
            "seed_runs": len(runs),
            "seed_runs_per_gpu_hour": len(runs) / (wall / 3600 * max(gpus, 1)),
            **{key: [m[key] for m in metrics if key in m] for key in SPLIT},
            "val_accuracy_plain": plain,
            "val_accuracy_all": [run.data.metrics["val_accuracy"] for run in scored],
        }
        results["sweeps"][name] = figures
        print(
            f"{name}: wall {wall:.0f} s, {len(runs)} seed runs, {figures['seed_runs_per_gpu_hour']:.0f} per "
            f"{'GPU-' if on_gpu else 'machine-'}hour; per run "
            + ", ".join(f"{key} {spread(figures[key])}" for key in SPLIT if figures[key])
            + (f"; plain ResNet val_accuracy {spread(plain, 4)}" if plain else "")
            + (f"; all runs {statistics.mean(figures['val_accuracy_all']):.4f}" if figures["val_accuracy_all"] else ""),
            flush=True,
        )
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
