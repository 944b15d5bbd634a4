"""Command line of ``python -m sweeps.accuracy_vs_robustness``: flags -> validated SweepConfig -> Ray Tune.

Every flag becomes part of a typed :class:`SweepConfig`, checked (data directory layout, whether a
sweep to resume exists, the MLflow store) before Ray starts, so a value that cannot work fails in
seconds with a message that says what to do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from nsde_ray.config import (DATASETS, ConfigError, DataConfig, EvalConfig, ModelConfig, SearchSpace, SweepConfig,
                             TrainConfig, TrialConfig)
from nsde_ray.data import DataError, check_data
from nsde_ray.models import available_archs

DEFAULT_STORAGE = os.path.join("~", "ray_results")
SWEEP_EVAL_METHODS = ("ig", "saliency")
# What --smoke-test shrinks: the same path, in about two minutes on 2 cores.
SMOKE_SAMPLES, SMOKE_EPOCHS = 3, 2
SMOKE_EVAL = dict(num_images=16, n_steps=16, n_perturbations=4, saturation_images=4, grid_images=4)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where the help text already says what no value means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.accuracy_vs_robustness",
        description="Search noise settings of stochastic ResNets (discretised neural SDEs) for the Pareto front of "
                    "accuracy against attribution robustness: Ray Tune + Optuna over Ray Train trials, tracked in "
                    "MLflow. With no flags: scikit-learn digits, a small CIFAR-style ResNet, local Ray, MLflow's "
                    "default local store.",
        formatter_class=_HelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS)}")
    data.add_argument("--data-dir", default=None, help="where cifar10/cifar100/imagenet/imagefolder live")
    data.add_argument("--download", action="store_true", help="download CIFAR into --data-dir")
    data.add_argument("--arch", default=ModelConfig.arch, help=f"one of: {', '.join(available_archs())}")
    search = parser.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=SweepConfig.num_samples,
                        help="trials in all, the two reference points (plain ResNet; gaussian sigma 0.5) included")
    search.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    search.add_argument("--sigma-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SearchSpace.sigma_range, help="noise_sigma search range")
    search.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SearchSpace.lr_range, help="learning-rate search range (log scale)")
    search.add_argument("--clip-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SearchSpace.clip_range, help="outlier-clipping percentile range of shaped trials")
    search.add_argument("--seed", type=int, default=TrainConfig.seed, help="search and training seed")
    train = parser.add_argument_group("training and evaluation")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="training epochs per trial")
    train.add_argument("--lr", type=float, default=TrainConfig.lr, help="learning rate of the reference points")
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="per DDP worker")
    train.add_argument("--workers-per-trial", type=int, default=TrainConfig.num_workers, help="DDP workers per trial")
    train.add_argument("--use-gpu", action="store_true", help="each DDP worker takes one GPU")
    train.add_argument("--eval-images", type=int, default=64, help="held-out images per attribution evaluation")
    train.add_argument("--eval-methods", nargs="+", default=list(SWEEP_EVAL_METHODS),
                       help="attribution methods evaluated (ig is required: sensitivity and sic are IG's)")
    run = parser.add_argument_group("run")
    run.add_argument("--address", default=None, help="Ray cluster to join, e.g. auto or ray://head:10001 "
                                                     "(default: start a local one)")
    run.add_argument("--storage", default=DEFAULT_STORAGE,
                     help="where Ray Tune keeps the sweep state and checkpoints: a local dir, NFS or s3://")
    run.add_argument("--name", default=None,
                     help="sweep name, also the MLflow experiment (default: timestamped); reuse it with --resume")
    run.add_argument("--resume", action="store_true",
                     help="continue the sweep --name in --storage with its stored settings")
    run.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: MLflow's own, sqlite:///mlflow.db here); "
                          "use an mlflow server URI on a multi-node cluster")
    run.add_argument("--smoke-test", action="store_true",
                     help=f"a tiny version of the same sweep, for CI: {SMOKE_SAMPLES} trials of {SMOKE_EPOCHS} epochs")
    return parser


def sweep_config_from_args(args: argparse.Namespace, name: str, storage: str) -> SweepConfig:
    """The validated sweep the flags describe; raises ConfigError or DataError."""
    evaluation = EvalConfig(methods=tuple(args.eval_methods), num_images=args.eval_images)
    train = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, num_workers=args.workers_per_trial,
                        use_gpu=args.use_gpu, seed=args.seed)
    num_samples = args.num_samples
    if args.smoke_test:
        train = replace(train, epochs=min(train.epochs, SMOKE_EPOCHS))
        evaluation = replace(evaluation, **{k: min(v, getattr(evaluation, k)) for k, v in SMOKE_EVAL.items()})
        num_samples = min(num_samples, SMOKE_SAMPLES)
    base = TrialConfig(model=ModelConfig(arch=args.arch),
                       data=DataConfig(dataset=args.dataset, data_dir=args.data_dir, download=args.download),
                       train=train, eval=evaluation)
    space = SearchSpace(sigma_range=tuple(args.sigma_range), lr_range=tuple(args.lr_range),
                        clip_range=tuple(args.clip_range))
    cfg = SweepConfig(name=name, storage=storage, base=base, space=space, num_samples=num_samples,
                      max_concurrent=args.max_concurrent, tracking_uri=args.tracking_uri, seed=args.seed)
    check_data(cfg.base.data)
    return cfg


def resolve_storage(storage: str) -> str:
    """An absolute local path, or the URI unchanged."""
    return storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"{parser.prog}: error: {message}\n(see --help)\n")


def _credentials_env() -> dict[str, str]:
    """MLflow and S3 credentials from this process's environment, passed on to every Ray worker."""
    prefixes = ("MLFLOW_", "AWS_", "AZURE_STORAGE_", "GOOGLE_APPLICATION_CREDENTIALS")
    return {key: value for key, value in os.environ.items() if key.startswith(prefixes)}


def main(argv: list[str] | None = None) -> int:
    from nsde_ray import sweep as sweeps
    from nsde_ray.tracking import FRONT_FILTER, SweepTracker, TrackingError, front_table, is_local_store, \
        resolve_tracking_uri, ui_command

    parser = build_parser()
    args = parser.parse_args(argv)
    storage = resolve_storage(args.storage)
    name = args.name or time.strftime("accuracy_vs_robustness_%Y%m%d_%H%M%S")
    try:
        if args.resume:
            if not args.name:
                raise sweeps.SweepError("--resume needs the --name of the sweep to continue")
            cfg, tracker = sweeps.load_sweep_state(storage, name)
            print(f"[nsde-ray] resuming sweep {name!r} with its stored settings ({cfg.num_samples} trials, "
                  f"{cfg.base.train.epochs} epochs each); search flags given now are not applied", flush=True)
        else:
            cfg = sweep_config_from_args(args, name, storage)
            if sweeps.sweep_exists(storage, name):
                raise sweeps.SweepError(f"a sweep named {name!r} already exists in {storage}: pass --resume to "
                                        "continue it, or choose another --name")
            tracker = None
        tracking_uri = resolve_tracking_uri(args.tracking_uri or cfg.tracking_uri)
        if args.address and is_local_store(tracking_uri):
            print(f"[nsde-ray] warning: MLflow store {tracking_uri} is local to this machine; on a multi-node "
                  "cluster pass --tracking-uri http://<mlflow server>:5000", file=sys.stderr, flush=True)
        if tracker is None:
            tracking = SweepTracker.start(tracking_uri, cfg.experiment_name, name, cfg.base.to_params())
            tracker = tracking.describe()
            cfg = replace(cfg, tracking_uri=tracking_uri)
            sweeps.save_sweep_state(cfg, tracker)
        else:
            tracker = dict(tracker, tracking_uri=tracking_uri)
            tracking = SweepTracker(**tracker)
            tracking.reopen_parent()
    except (ConfigError, DataError, sweeps.SweepError, TrackingError) as err:
        _fail(parser, str(err))

    import ray

    started = time.perf_counter()
    ray.init(address=args.address, runtime_env={"env_vars": _credentials_env()} if _credentials_env() else None)
    print(f"[nsde-ray] sweep {name!r}: {cfg.num_samples} trials of {cfg.base.model.arch} on {cfg.base.data.dataset}, "
          f"{cfg.base.train.epochs} epochs, {cfg.base.train.num_workers} DDP worker(s) each; Tune state in "
          f"{sweeps.experiment_path(cfg)}; MLflow {tracking_uri}, experiment {cfg.experiment_name!r}", flush=True)
    tuner = sweeps.build_tuner(cfg, tracker, resume=args.resume)
    results = tuner.fit()
    rows = tracking.update_front()
    tracking.finish_sweep()
    errors = sum(result.error is not None for result in results)
    print(f"\n[nsde-ray] sweep {name!r} done in {time.perf_counter() - started:.0f} s: {len(results)} trials, "
          f"{len(rows)} evaluated, {errors} failed")
    print("[nsde-ray] Pareto front (* = on the front; val_accuracy max, sensitivity min, sic max):")
    print(front_table(rows))
    print(f"[nsde-ray] browse it: {ui_command(tracking_uri)}")
    print(f"[nsde-ray]   experiment {cfg.experiment_name!r}, filter: {FRONT_FILTER}")
    print(f"[nsde-ray] resume or extend it: python -m sweeps.accuracy_vs_robustness --name {name} "
          f"--storage {storage} --resume")
    return 0 if rows else 1
