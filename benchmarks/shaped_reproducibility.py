"""Shaped training with one seed, on both data paths: does resident data change the trained model?

Trains the default digits trial with attribution-shaped noise (sigma 0.5, seed 0, 6 epochs, one torch
thread as a sweep trial has) with ``train.resident_data`` ``auto`` and ``off``, in this process, and
prints each run's validation accuracy per epoch and whether the final weights are bit for bit equal.

    python benchmarks/shaped_reproducibility.py
"""

import tempfile

import torch

from nsde_ray.config import NoiseConfig, TrainConfig, TrialConfig
from nsde_ray.train import fit_single_worker, load_checkpoint


def main() -> None:
    torch.set_num_threads(1)
    weights = {}
    for mode in ("auto", "off"):
        cfg = TrialConfig(
            noise=NoiseConfig("attribution", 0.5), train=TrainConfig(epochs=6, seed=0, resident_data=mode)
        )
        outcome = fit_single_worker(cfg, name=mode, storage_path=tempfile.mkdtemp())
        with outcome.checkpoint.as_directory() as folder:
            weights[mode] = load_checkpoint(folder)["model"]
        print(f"resident_data={mode}: val_accuracy per epoch {[r['val_accuracy'] for r in outcome.reports]}")
    first, second = weights["auto"], weights["off"]
    print("bit-for-bit equal weights:", all(torch.equal(first[k], second[k]) for k in first))


if __name__ == "__main__":
    main()
