"""Per-seed overhead of the smoke sweep, a one-worker trial under a ``TorchTrainer`` against in its own process.

Runs ``python -m sweeps.accuracy_vs_robustness --smoke-test`` (3 configurations x 2 seeds) in
rounds, each round once per path, alternating, on one machine:

- torch_trainer: ``--set train.single_process=false``, training under a ``TorchTrainer`` and the
  evaluation as a Ray task (every trial's path before the single-process path existed);
- single_process: the default, training and evaluation in the Tune trial's own process.

and reads each seed run's logged split from MLflow: ``overhead_s`` (wall minus training and
evaluation compute), of which ``train_startup_s`` and ``eval_startup_s``; plus ``trial_wall_s``,
``train_time_s`` and ``eval_time_s``, and the sweep's wall time. Prints a Markdown table of
mean ± std over the seed runs of each path.

    python benchmarks/trial_overhead.py [--rounds 1] [--out-dir DIR]
"""

import argparse
import os
import tempfile

from sweep_runs import run_sweep, seed_runs, spread

PATHS = {"torch_trainer": ["--set", "train.single_process=false"], "single_process": []}
SPLIT = ("overhead_s", "train_startup_s", "eval_startup_s", "trial_wall_s", "train_time_s", "eval_time_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="sweeps per path")
    parser.add_argument(
        "--out-dir", help="keep the sweeps' storage, MLflow store and logs here (default: a temporary folder)"
    )
    args = parser.parse_args()
    folder = args.out_dir or tempfile.mkdtemp(prefix="trial_overhead_")
    os.makedirs(folder, exist_ok=True)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, output in {folder}", flush=True)
    seeds = {path: [] for path in PATHS}
    walls = {path: [] for path in PATHS}
    for index in range(args.rounds):
        for path, flags in PATHS.items():
            name = f"{path}_{index}"
            walls[path].append(run_sweep(folder, name, ["--smoke-test", *flags]))
            seeds[path].extend({key: run.data.metrics[key] for key in SPLIT} for run in seed_runs(folder, name))
            print(f"{name}: sweep {walls[path][-1]:.0f} s, load average {os.getloadavg()}", flush=True)
    print(f"\n| path | sweep wall s | seed runs | {' | '.join(SPLIT)} |")
    print("| --- | ---: | ---: |" + " ---: |" * len(SPLIT))
    for path in PATHS:
        cells = " | ".join(spread([m[key] for m in seeds[path]]) for key in SPLIT)
        print(f"| {path} | {spread(walls[path])} | {len(seeds[path])} | {cells} |")


if __name__ == "__main__":
    main()
