"""Command line of ``python -m sweeps.accuracy_vs_robustness``: flags -> validated config -> Ray.

Every flag is turned into a typed config and checked (including the data directory's layout and
whether a run to resume exists) before Ray starts, so a value that cannot work fails in a second
with a message that says what to do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from nsde_ray.config import (DATASETS, NOISE_MODES, ConfigError, DataConfig, ModelConfig, NoiseConfig, TrainConfig,
                             TrialConfig)
from nsde_ray.data import DataError, check_data
from nsde_ray.models import available_archs

DEFAULT_STORAGE = os.path.join("~", "ray_results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.accuracy_vs_robustness",
        description="Train a stochastic ResNet (a discretised neural SDE) with Ray Train. "
                    "With no flags: scikit-learn digits, a small CIFAR-style ResNet, local Ray.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS)}")
    data.add_argument("--data-dir", default=None, help="where cifar10/cifar100/imagenet/imagefolder live")
    data.add_argument("--download", action="store_true", help="download CIFAR into --data-dir")
    data.add_argument("--arch", default=ModelConfig.arch, help=f"one of: {', '.join(available_archs())}")
    noise = parser.add_argument_group("noise")
    noise.add_argument("--noise-mode", default=NoiseConfig.mode, help=f"one of: {', '.join(NOISE_MODES)}")
    noise.add_argument("--noise-sigma", type=float, default=NoiseConfig.sigma,
                       help="normalised noise magnitude: noise std = sigma * std(block output)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    train.add_argument("--lr", type=float, default=TrainConfig.lr)
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="per DDP worker")
    train.add_argument("--workers-per-trial", type=int, default=TrainConfig.num_workers, help="DDP workers")
    train.add_argument("--use-gpu", action="store_true", help="each DDP worker takes one GPU")
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    run = parser.add_argument_group("run")
    run.add_argument("--address", default=None, help="Ray cluster to join, e.g. ray://head:10001 or auto "
                                                     "(default: start a local one)")
    run.add_argument("--storage", default=DEFAULT_STORAGE,
                     help="where Ray keeps run state and checkpoints: a local dir, NFS or s3://")
    run.add_argument("--name", default=None, help="run name (default: timestamped); reuse it with --resume")
    run.add_argument("--resume", action="store_true", help="continue the run --name found in --storage")
    run.add_argument("--smoke-test", action="store_true", help="a tiny version of the same job, for CI")
    return parser


def trial_config_from_args(args: argparse.Namespace) -> TrialConfig:
    """The validated config the flags describe; raises ConfigError or DataError."""
    cfg = TrialConfig(
        model=ModelConfig(arch=args.arch),
        noise=NoiseConfig(mode=args.noise_mode, sigma=args.noise_sigma),
        data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, download=args.download),
        train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          num_workers=args.workers_per_trial, use_gpu=args.use_gpu, seed=args.seed))
    if args.smoke_test:
        cfg = replace(cfg, train=replace(cfg.train, epochs=min(cfg.train.epochs, 2)))
    check_data(cfg.data)
    return cfg


def resolve_storage(storage: str) -> str:
    """An absolute local path, or the URI unchanged."""
    return storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))


def run_exists(storage: str, name: str) -> bool:
    """Whether ``storage`` already holds a run called ``name`` (local path or pyarrow-readable URI)."""
    if "://" not in storage:
        return os.path.isdir(os.path.join(storage, name))
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    return filesystem.get_file_info(f"{root.rstrip('/')}/{name}").type != pyarrow.fs.FileType.NotFound


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"{parser.prog}: error: {message}\n(see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    storage = resolve_storage(args.storage)
    name = args.name or time.strftime("accuracy_vs_robustness_%Y%m%d_%H%M%S")
    try:
        cfg = trial_config_from_args(args)
    except (ConfigError, DataError) as err:
        _fail(parser, str(err))
    exists = run_exists(storage, name)
    if args.resume and not exists:
        _fail(parser, f"--resume: no run named {name!r} in {storage}; check --name and --storage "
                     f"(runs there: {', '.join(sorted(_list_runs(storage))) or 'none'})")
    if exists and not args.resume:
        _fail(parser, f"a run named {name!r} already exists in {storage}: pass --resume to continue it, "
                     "or choose another --name")

    import ray

    from nsde_ray.train import build_trainer

    started = time.perf_counter()
    ray.init(address=args.address)
    ray_started = time.perf_counter()
    print(f"[nsde-ray] run {name!r} in {storage}: {cfg.model.arch} on {cfg.data.dataset}, noise "
          f"{cfg.noise.mode} sigma={cfg.noise.sigma}, {cfg.train.num_workers} DDP worker(s), {cfg.train.epochs} epochs",
          flush=True)
    result = build_trainer(cfg, name=name, storage_path=storage).fit()
    finished = time.perf_counter()
    if result.error is not None:
        print(f"[nsde-ray] training failed: {result.error}", file=sys.stderr)
        return 1
    metrics = result.metrics or {}
    print(f"[nsde-ray] {'DIVERGED (non-finite loss), ' if metrics.get('diverged') else ''}"
          f"epoch {metrics.get('epoch')}: val_accuracy={metrics.get('val_accuracy', float('nan')):.4f} "
          f"train_loss={metrics.get('train_loss', float('nan')):.4f}")
    print(f"[nsde-ray] wall time {finished - started:.1f} s: Ray start {ray_started - started:.1f} s, "
          f"training run {finished - ray_started:.1f} s of which epochs {metrics.get('train_time_s', 0.0):.1f} s")
    print(f"[nsde-ray] checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    print(f"[nsde-ray] continue it with: --name {name} --storage {storage} --resume --epochs N")
    return 0


def _list_runs(storage: str) -> list[str]:
    return [e.name for e in os.scandir(storage) if e.is_dir()] if os.path.isdir(storage) else []
