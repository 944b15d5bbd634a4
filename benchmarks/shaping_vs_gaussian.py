"""Attribution-shaped vs Gaussian-noise training on digits: cost, accuracy, IG sensitivity and SIC.

Same sigma, same epochs, same seeds; each run is a real Ray Train run of the default small model
(one worker), then the attribution evaluation of its final checkpoint (IG, 100 images,
10 perturbations). Prints one row per run and mean ± std per mode.

    python benchmarks/shaping_vs_gaussian.py --seeds 0 1 2 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import ray

from nsde_ray.config import EvalConfig, NoiseConfig, TrainConfig, TrialConfig
from nsde_ray.data import build_datasets
from nsde_ray.evaluate import evaluate
from nsde_ray.train import build_trainer, load_trained_model

COLUMNS = ("val_accuracy", "sensitivity", "sic", "train_time_s", "shaping_time_s")


def run(mode: str, seed: int, epochs: int, sigma: float, storage: str) -> dict:
    cfg = TrialConfig(noise=NoiseConfig(mode, sigma), train=TrainConfig(epochs=epochs, seed=seed))
    result = build_trainer(cfg, name=f"{mode}_seed{seed}", storage_path=storage).fit()
    if result.error is not None:
        raise RuntimeError(f"{mode} seed {seed} failed: {result.error}")
    with result.checkpoint.as_directory() as checkpoint_dir:
        model, cfg = load_trained_model(checkpoint_dir)
    metrics = evaluate(model, build_datasets(cfg.data), EvalConfig(methods=("ig",)), progress=False).metrics
    history = result.metrics
    return {
        "mode": mode,
        "seed": seed,
        "val_accuracy": history["val_accuracy"],
        "sensitivity": metrics["sensitivity"],
        "sic": metrics["sic"],
        "train_time_s": history["train_time_s"],
        "shaping_time_s": history["shaping_time_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="shaping_vs_gaussian_")
    rows = [
        run(mode, seed, args.epochs, args.sigma, storage) for seed in args.seeds for mode in ("gaussian", "attribution")
    ]
    for row in rows:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    for mode in ("gaussian", "attribution"):
        values = {c: [r[c] for r in rows if r["mode"] == mode] for c in COLUMNS}
        summary = ", ".join(
            f"{c} {statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"
            for c, v in values.items()
        )
        print(f"{mode} (n={len(args.seeds)}): {summary}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
