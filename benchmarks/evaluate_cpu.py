"""Wall time of the attribution evaluation on CPU, before and after its speed-up, on the same model and images.

Trains the default small model (cifar_resnet8, Gaussian sigma 0.5) on digits for a few epochs, then
times two evaluations, each in a fresh process, alternating the code of ``--before`` (that
commit's ``nsde_ray`` package, extracted with ``git archive`` and put first on the path) with this
checkout's:

- sweep: the sweep's per-trial evaluation, ``evaluate_repeated`` with one repeat of IG and saliency
  on ``--sweep-images`` images, the other settings ``EvalConfig``'s defaults;
- papers: the papers' protocol, every method, ``--paper-images`` images x ``--paper-repeats`` repeats.

Every round runs both sides of both, so the two sides share the machine's load. The table gives
each side's median wall and CPU seconds (CPU: this process's threads together), the ratio
before / after, and the largest difference of any metric between the two sides.

    python benchmarks/evaluate_cpu.py [--threads N] [--rounds 2] [--evaluations sweep papers] [--model state_dict.pt]

``--threads`` sets torch's intra-op threads of every process (default: torch's own, the core count).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from nsde_ray.config import DataConfig, EvalConfig, NoiseConfig, TrainConfig
from nsde_ray.data import build_datasets
from nsde_ray.models import build_model
from nsde_ray.names import METHODS

BEFORE = "bb6c492"  # the last commit before the CPU speed-up of the evaluation
ARCH, NOISE = "cifar_resnet8", NoiseConfig("gaussian", 0.5)
SIDES = ("before", "after")


def configs(args: argparse.Namespace) -> dict[str, tuple[EvalConfig, int]]:
    """Evaluation name -> (configuration, repeats)."""
    return {
        "sweep": (EvalConfig(methods=("ig", "saliency"), num_images=args.sweep_images), 1),
        "papers": (EvalConfig(methods=METHODS, num_images=args.paper_images), args.paper_repeats),
    }


def train(path: str) -> None:
    """The default model trained on digits for 4 epochs (seeded), its state dict saved to ``path``."""
    from nsde_ray.train import fit_in_process  # the checkout's: a --before package may not have it

    torch.manual_seed(0)
    splits = build_datasets(DataConfig())
    model = build_model(ARCH, splits.num_classes, splits.in_channels, NOISE)
    torch.save(fit_in_process(model, splits.train, TrainConfig(epochs=4, batch_size=32)).state_dict(), path)


def worker(args: argparse.Namespace) -> None:
    """One timed evaluation (``args.worker``) of the saved model; prints seconds, CPU seconds and metrics as JSON."""
    from nsde_ray.evaluate import evaluate_repeated  # this process's nsde_ray: the checkout's or --before's

    splits = build_datasets(DataConfig())
    model = build_model(ARCH, splits.num_classes, splits.in_channels, NOISE)
    model.load_state_dict(torch.load(args.model, weights_only=True))
    cfg, repeats = configs(args)[args.worker]
    started, cpu = time.perf_counter(), time.process_time()
    metrics = evaluate_repeated(model, splits, cfg, repeats, progress=False).metrics
    print(
        json.dumps(
            {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "metrics": metrics}
        )
    )


def run_side(args: argparse.Namespace, name: str, model: str, package_root: str | None) -> dict:
    """:func:`worker` in a fresh process, on ``package_root``'s nsde_ray if given, else the checkout's."""
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--worker", name, "--model", model, *forwarded(args)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def forwarded(args: argparse.Namespace) -> list[str]:
    """The options a worker shares with the driver."""
    options = [
        "--sweep-images",
        args.sweep_images,
        "--paper-images",
        args.paper_images,
        "--paper-repeats",
        args.paper_repeats,
    ]
    return [str(o) for o in options] + ([] if args.threads is None else ["--threads", str(args.threads)])


def largest_difference(first: dict[str, float], second: dict[str, float]) -> float:
    """max |first - second| over the metrics of both (NaN on both sides counts as equal)."""
    return max(0.0 if math.isnan(first[k]) and math.isnan(second[k]) else abs(first[k] - second[k]) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="commit whose nsde_ray is timed as 'before'")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs per evaluation")
    parser.add_argument("--evaluations", nargs="+", choices=("sweep", "papers"), default=["sweep", "papers"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--sweep-images", type=int, default=64)
    parser.add_argument("--paper-images", type=int, default=16)
    parser.add_argument("--paper-repeats", type=int, default=2)
    parser.add_argument("--model", help="state dict of the model to evaluate (default: train one, as above)")
    parser.add_argument("--worker", choices=("sweep", "papers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker is not None:
        worker(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as scratch:
        archive = subprocess.run(
            ["git", "-C", root, "archive", args.before, "nsde_ray"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", scratch], input=archive, check=True)
        model = args.model or os.path.join(scratch, "model.pt")
        if args.model is None:
            train(model)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, before = {args.before}, "
            f"load average {os.getloadavg()}"
        )
        results = {(name, side): [] for name in args.evaluations for side in SIDES}
        for _ in range(args.rounds):
            for name in args.evaluations:
                for side in SIDES:
                    results[name, side].append(run_side(args, name, model, scratch if side == "before" else None))
                    print(f"{name} {side}: {results[name, side][-1]['seconds']:.1f} s", flush=True)
    print(f"load average {os.getloadavg()}\n")
    print("| evaluation | before s | after s | before / after | CPU s before / after | largest metric difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.evaluations:
        wall = [statistics.median(r["seconds"] for r in results[name, side]) for side in SIDES]
        cpu = [statistics.median(r["cpu_seconds"] for r in results[name, side]) for side in SIDES]
        difference = max(
            largest_difference(b["metrics"], a["metrics"])
            for b, a in zip(results[name, "before"], results[name, "after"])
        )
        print(
            f"| {name} | {wall[0]:.1f} | {wall[1]:.1f} | {wall[0] / wall[1]:.2f}x | {cpu[0]:.1f} / {cpu[1]:.1f} "
            f"| {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
