"""Training time with resident data against a DataLoader, side by side on the same data and model.

Trains one run (``nsde_ray.train.fit_single_worker``, the path of a one-worker trial) with
``train.resident_data=auto`` and with ``off``, each in a fresh process, alternating for
``--rounds`` rounds, and prints per side the medians of: the run's wall time (data set built,
decoded once if resident, trained, validated every epoch), the mean epoch time after the first
(what every further epoch costs) and the final validation accuracy. The two sides draw different
crops (the global RNG against the DataLoader processes' own), so accuracies agree only within
seed-to-seed spread.

    python benchmarks/resident_data.py --data-dir /data/cifar10_folder [--dataset imagefolder] \\
        [--epochs 3] [--rounds 2] [--use-gpu]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("auto", "off")


def worker(args: argparse.Namespace) -> None:
    """One timed run with ``args.worker`` as ``resident_data``; prints its figures as JSON."""
    from nsde_ray.config import DataConfig, ModelConfig, NoiseConfig, TrainConfig, TrialConfig
    from nsde_ray.train import fit_single_worker

    cfg = TrialConfig(
        model=ModelConfig(arch=args.arch),
        noise=NoiseConfig("gaussian", 0.5),
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            use_gpu=args.use_gpu,
            cpus_per_worker=args.cpus_per_worker,
            resident_data=args.worker,
        ),
    )
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        outcome = fit_single_worker(cfg, name="run", storage_path=storage)
        wall = time.perf_counter() - started
    epochs = [report["epoch_time_s"] for report in outcome.reports]
    print(
        json.dumps(
            {
                "wall_s": wall,
                "first_epoch_s": epochs[0],
                "later_epoch_s": statistics.mean(epochs[1:]) if len(epochs) > 1 else epochs[0],
                "val_accuracy": outcome.metrics["val_accuracy"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--arch", default="cifar_resnet8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpus-per-worker", type=int, default=os.cpu_count())
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return
    forwarded = [
        item
        for dest in ("data_dir", "dataset", "arch", "epochs", "batch_size", "cpus_per_worker")
        for item in (f"--{dest.replace('_', '-')}", str(getattr(args, dest)))
    ]
    forwarded += ["--use-gpu"] if args.use_gpu else []
    print(
        f"{args.arch} on {args.dataset} {args.data_dir}, {args.epochs} epochs, batch {args.batch_size}, "
        f"{args.cpus_per_worker} CPUs, {'GPU' if args.use_gpu else 'CPU'}, load average {os.getloadavg()}",
        flush=True,
    )
    results = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", mode, *forwarded], check=True, capture_output=True, text=True
            ).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(f"resident_data={mode}: {results[mode][-1]}", flush=True)
    print(f"load average {os.getloadavg()}\n")
    print("| resident_data | run wall s | first epoch s | later epochs s | val accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        median = {key: statistics.median(r[key] for r in results[mode]) for key in results[mode][0]}
        print(
            f"| {mode} | {median['wall_s']:.1f} | {median['first_epoch_s']:.1f} | {median['later_epoch_s']:.1f} "
            f"| {median['val_accuracy']:.3f} |"
        )


if __name__ == "__main__":
    main()
