"""The flags both commands share, and how they become a trial config.

Both ``python -m sweeps.accuracy_vs_robustness`` (:mod:`nsde_ray.cli`) and ``python -m
sweeps.paper_tables`` (:mod:`nsde_ray.paper_tables`) build their parsers from these groups. The
base trial comes from layers of :mod:`nsde_ray.overrides` (:func:`trial_config_from_args`):
defaults < ``--config`` < shortcut flags given on the command line < ``--recipe`` < ``--set``.
"""

from __future__ import annotations

import argparse
import copy
import os
from dataclasses import replace

from nsde_ray import overrides
from nsde_ray.config import DATASETS, TrainConfig, TrialConfig
from nsde_ray.data import check_data
from nsde_ray.logs import LEVELS, configure
from nsde_ray.names import ARCHS
from nsde_ray.overrides import Override
from nsde_ray.weights import check_init_weights

DEFAULT_STORAGE = os.path.join("~", "ray_results")
ARCH_HELP = f"one of: {', '.join(ARCHS)}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where the help text already says what no value means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_data_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--dataset, --data-dir, --download, --image-size; the caller adds its --arch (one, or a list) to the group."""
    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS)}")
    data.add_argument("--data-dir", default=None, help="where cifar10/cifar100/imagenet/imagefolder live")
    data.add_argument("--download", action="store_true", help="download CIFAR into --data-dir")
    data.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="side in pixels the images are resized to (default: the data set's own; 32 for digits, "
        "CIFAR and synthetic data)",
    )
    return data


def add_training_flags(
    parser: argparse.ArgumentParser, *, lr_help: str, eval_images: int, eval_methods: tuple[str, ...]
) -> argparse._ArgumentGroup:
    """Training (--epochs, --lr, --batch-size, --workers-per-trial, --use-gpu, --gpus-per-worker, --cpus-per-worker,
    --compile,
    --init-from) and --eval-images, --eval-methods."""
    train = parser.add_argument_group("training and evaluation")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="training epochs per trial")
    train.add_argument("--lr", type=float, default=TrainConfig.lr, help=lr_help)
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="per DDP worker")
    train.add_argument("--workers-per-trial", type=int, default=TrainConfig.num_workers, help="DDP workers per trial")
    train.add_argument("--use-gpu", action="store_true", help="each DDP worker takes a GPU (--gpus-per-worker)")
    train.add_argument(
        "--gpus-per-worker",
        type=float,
        default=TrainConfig.gpus_per_worker,
        help="GPUs per worker with --use-gpu: a fraction (e.g. 0.25) lets that many one-worker "
        "trials share a GPU, for small models; a whole number for more",
    )
    train.add_argument(
        "--cpus-per-worker",
        type=int,
        default=TrainConfig.cpus_per_worker,
        help="CPU cores reserved per DDP worker; CIFAR and ImageNet folders decode images in all but "
        "one of them (e.g. 10 on an 8-GPU, 96-core node)",
    )
    train.add_argument(
        "--compile",
        action="store_true",
        help="train through torch.compile (about 1.3x faster on an H100 for ResNet-50 after a "
        "compile of about a minute per worker; pays off on long runs)",
    )
    train.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="initial weights of every trial: a state dict saved with torch.save (torchvision's load "
        "unchanged) or a trial's checkpoint (checkpoint.pt or its directory); read as plain "
        "tensors, checked against each model before Ray starts; a resumed trial continues "
        "from its own checkpoint. On a cluster, a path every node sees",
    )
    train.add_argument(
        "--eval-images",
        type=int,
        default=eval_images,
        help="candidate held-out images per attribution evaluation, the same for every model; each model is scored on "
        "the ones it classifies correctly",
    )
    train.add_argument(
        "--eval-methods",
        nargs="+",
        default=list(eval_methods),
        help="attribution methods evaluated (ig is required: sensitivity and sic are IG's)",
    )
    return train


def add_run_flags(parser: argparse.ArgumentParser, *, command: str, smoke_help: str) -> argparse._ArgumentGroup:
    """Where and how the run goes: --max-concurrent, --address, --storage, --name, --resume, --no-retry-errored,
    --tracking-uri, --smoke-test, --quiet or --verbose."""
    run = parser.add_argument_group("run")
    run.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)",
    )
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local one)",
    )
    run.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="where Ray Tune keeps the sweep state and checkpoints: a local dir, NFS or s3://",
    )
    run.add_argument(
        "--name",
        default=None,
        help=f"sweep name, also the MLflow experiment (default: {command}_<timestamp>); reuse it with --resume",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep --name in --storage with its stored settings (other flags that differ "
        "from them are named in a warning and not applied)",
    )
    run.add_argument(
        "--no-retry-errored",
        action="store_true",
        help="with --resume: leave the trials that errored as they are (by default they run again, each "
        "from its latest checkpoint, in its own MLflow run)",
    )
    run.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's own, sqlite:///mlflow.db "
        "here); use an mlflow server URI on a multi-node cluster. A password in it (user:password@) "
        "is shown and stored masked, so --resume then needs it again (or MLFLOW_TRACKING_URI, or "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)",
    )
    run.add_argument("--smoke-test", action="store_true", help=smoke_help)
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument(
        "--quiet",
        action="store_true",
        help="print warnings, errors and the results only (no progress lines, no Tune table)",
    )
    verbosity.add_argument(
        "--verbose",
        action="store_true",
        help="also print debug lines, Tune's per-trial results and Ray's own per-worker logs "
        "(checkpoints, reports), which are otherwise limited to errors",
    )
    return run


def add_config_flags(
    parser: argparse.ArgumentParser, *, recipe_note: str = "", extra_sections: str = ""
) -> argparse._ArgumentGroup:
    """--config, --set, --recipe: any field of the base trial (and of the command's ``extra_sections``, named
    in the help), over the shortcut flags."""
    group = parser.add_argument_group(
        "any config field",
        f"Every field of the trial config (sections {', '.join(overrides.field_types())}; "
        f"see nsde_ray.config){extra_sections} can be set. Later sources win: defaults < --config "
        "< the flags above given on the command line < --recipe < --set.",
    )
    group.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a whole or partial trial config, JSON or YAML (.json, .yaml, .yml), in the form of "
        "TrialConfig.to_dict(): {section: {field: value}}",
    )
    group.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="SECTION.FIELD=VALUE",
        help="set one field, VALUE parsed as the field's type: numbers, true/false (1/0, yes/no), "
        "none, comma-separated lists; repeatable (e.g. --set train.optimizer=adam "
        "--set eval.methods=ig,saliency)",
    )
    group.add_argument(
        "--recipe",
        choices=list(overrides.RECIPES),
        default=None,
        help="a named preset of --set values; paper: the papers' optimiser, "
        + " ".join(overrides.RECIPES["paper"])
        + recipe_note,
    )
    return group


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed flags; ``args.given`` is the set of those given on the command line (not left at their defaults),
    ``args.log_level`` the :mod:`nsde_ray.logs` level of --quiet / --verbose, set up for this process."""
    args = parser.parse_args(argv)
    probe = copy.deepcopy(parser)  # parsed again with no defaults at all: what is left was given
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    args.given = frozenset(vars(probe.parse_args(argv)))
    args.log_level = LEVELS["quiet" if args.quiet else "verbose" if args.verbose else "normal"]
    configure(args.log_level)
    return args


# Shortcut flags (their dests) -> the config field each sets; the commands add their own.
DATA_SHORTCUTS = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "download": "data.download",
    "image_size": "data.image_size",
}
TRAINING_SHORTCUTS = {
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "workers_per_trial": "train.num_workers",
    "use_gpu": "train.use_gpu",
    "gpus_per_worker": "train.gpus_per_worker",
    "cpus_per_worker": "train.cpus_per_worker",
    "compile": "train.compile",
    "init_from": "train.init_from",
    "eval_images": "eval.num_images",
    "eval_methods": "eval.methods",
}


def shortcut_layers(
    args: argparse.Namespace, shortcuts: dict[str, str], sections: dict[str, type] | None = None
) -> tuple[list[Override], list[Override]]:
    """The shortcut flags as overrides: (those left at their defaults, those given on the command line)."""
    flags = {dest: overrides.override(name, getattr(args, dest), sections) for dest, name in shortcuts.items()}
    return (
        [value for dest, value in flags.items() if dest not in args.given],
        [value for dest, value in flags.items() if dest in args.given],
    )


def trial_config_from_args(
    args: argparse.Namespace, shortcuts: dict[str, str], sets: list[Override] | None = None
) -> TrialConfig:
    """The base trial the flags describe: defaults (the config's, then the shortcut flags') < --config < the
    shortcut flags given < --recipe < --set (``sets``, default ``args.set`` parsed); ``init_from`` made
    absolute. Raises ConfigError."""
    defaults, given = shortcut_layers(args, shortcuts)
    cfg = overrides.build_trial(
        defaults,
        overrides.load_config_file(args.config) if args.config else [],
        given,
        overrides.recipe(args.recipe) if args.recipe else [],
        [overrides.parse_set(assignment) for assignment in args.set or ()] if sets is None else sets,
    )
    if cfg.train.init_from is None:
        return cfg
    return replace(cfg, train=replace(cfg.train, init_from=os.path.abspath(os.path.expanduser(cfg.train.init_from))))


def check_trial(cfg: TrialConfig, archs: tuple[str, ...]) -> None:
    """The data set's files, and the initial weights against the model of each of ``archs``; raises
    DataError or WeightsError."""
    check_data(cfg.data)
    if cfg.train.init_from is not None:
        check_init_weights(cfg, archs)


def capped(section, limits: dict[str, int]):
    """A copy of a config section with each named field at most its limit (what --smoke-test shrinks)."""
    return replace(section, **{name: min(limit, getattr(section, name)) for name, limit in limits.items()})


def fail(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit with status 2 and ``message``, as argparse does for a bad flag."""
    parser.exit(2, f"{parser.prog}: error: {message}\n(see --help)\n")
