"""Command line of ``python -m sweeps.accuracy_vs_robustness``: flags -> validated SweepConfig -> Ray Tune.

Every flag becomes part of a typed :class:`SweepConfig`, checked (data directory layout, initial
weights, whether a sweep to resume exists, the MLflow store) before Ray starts, so a value that
cannot work fails in seconds with a message that says what to do. The base trial comes from layers
of :mod:`nsde_ray.overrides` (:func:`trial_config_from_args`): defaults < ``--config`` < shortcut
flags given on the command line < ``--recipe`` < ``--set``. The flag groups and the run set-up
(:func:`open_run`: new or resumed, MLflow parent run, saved state) are shared with
``python -m sweeps.paper_tables``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nsde_ray import overrides
from nsde_ray.overrides import Override
from nsde_ray.config import (DATASETS, ConfigError, ModelConfig, SearchSpace, SweepConfig, TrainConfig, TrialConfig,
                             check_name)
from nsde_ray.data import DataError, check_data
from nsde_ray.models import available_archs
from nsde_ray.weights import WeightsError, check_init_weights

DEFAULT_STORAGE = os.path.join("~", "ray_results")
ARCH_HELP = f"one of: {', '.join(available_archs())}"
COMMAND = "accuracy_vs_robustness"
SWEEP_EVAL_IMAGES, SWEEP_EVAL_METHODS = 64, ("ig", "saliency")
# What --smoke-test shrinks: the same path, in about two minutes on 2 cores.
SMOKE_SAMPLES, SMOKE_EPOCHS = 3, 2
SMOKE_EVAL = dict(num_images=16, n_steps=16, n_perturbations=4, saturation_images=4, grid_images=4)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where the help text already says what no value means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# --- flags shared by the commands (this one and python -m sweeps.paper_tables) ---------------------

def add_data_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--dataset, --data-dir, --download, --image-size; the caller adds its --arch (one, or a list) to the group."""
    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS)}")
    data.add_argument("--data-dir", default=None, help="where cifar10/cifar100/imagenet/imagefolder live")
    data.add_argument("--download", action="store_true", help="download CIFAR into --data-dir")
    data.add_argument("--image-size", type=int, default=None, metavar="N",
                      help="side in pixels the images are resized to (default: the data set's own; 32 for digits, "
                           "CIFAR and synthetic data)")
    return data


def add_training_flags(parser: argparse.ArgumentParser, *, lr_help: str, eval_images: int,
                       eval_methods: tuple[str, ...]) -> argparse._ArgumentGroup:
    """Training (--epochs, --lr, --batch-size, --workers-per-trial, --use-gpu, --cpus-per-worker, --compile,
    --init-from) and --eval-images, --eval-methods."""
    train = parser.add_argument_group("training and evaluation")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="training epochs per trial")
    train.add_argument("--lr", type=float, default=TrainConfig.lr, help=lr_help)
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="per DDP worker")
    train.add_argument("--workers-per-trial", type=int, default=TrainConfig.num_workers, help="DDP workers per trial")
    train.add_argument("--use-gpu", action="store_true", help="each DDP worker takes one GPU")
    train.add_argument("--cpus-per-worker", type=int, default=TrainConfig.cpus_per_worker,
                       help="CPU cores reserved per DDP worker; CIFAR and ImageNet folders decode images in all but "
                            "one of them (e.g. 10 on an 8-GPU, 96-core node)")
    train.add_argument("--compile", action="store_true",
                       help="train through torch.compile (about 1.3x faster on an H100 for ResNet-50 after a "
                            "compile of about a minute per worker; pays off on long runs)")
    train.add_argument("--init-from", default=None, metavar="PATH",
                       help="initial weights of every trial: a state dict saved with torch.save (torchvision's load "
                            "unchanged) or a trial's checkpoint (checkpoint.pt or its directory); read as plain "
                            "tensors, checked against each model before Ray starts; a resumed trial continues "
                            "from its own checkpoint. On a cluster, a path every node sees")
    train.add_argument("--eval-images", type=int, default=eval_images, help="held-out images per attribution evaluation")
    train.add_argument("--eval-methods", nargs="+", default=list(eval_methods),
                       help="attribution methods evaluated (ig is required: sensitivity and sic are IG's)")
    return train


def add_run_flags(parser: argparse.ArgumentParser, *, command: str, smoke_help: str) -> argparse._ArgumentGroup:
    """Where and how the run goes: --max-concurrent, --address, --storage, --name, --resume, --no-retry-errored,
    --tracking-uri, --smoke-test."""
    run = parser.add_argument_group("run")
    run.add_argument("--max-concurrent", type=int, default=None,
                     help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    run.add_argument("--address", default=None, help="Ray cluster to join, e.g. auto or ray://head:10001 "
                                                     "(default: start a local one)")
    run.add_argument("--storage", default=DEFAULT_STORAGE,
                     help="where Ray Tune keeps the sweep state and checkpoints: a local dir, NFS or s3://")
    run.add_argument("--name", default=None,
                     help=f"sweep name, also the MLflow experiment (default: {command}_<timestamp>); "
                          "reuse it with --resume")
    run.add_argument("--resume", action="store_true",
                     help="continue the sweep --name in --storage with its stored settings (other flags that differ "
                          "from them are named in a warning and not applied)")
    run.add_argument("--no-retry-errored", action="store_true",
                     help="with --resume: leave the trials that errored as they are (by default they run again, each "
                          "from its latest checkpoint, in its own MLflow run)")
    run.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's own, sqlite:///mlflow.db "
                          "here); use an mlflow server URI on a multi-node cluster. A password in it (user:password@) "
                          "is shown and stored masked, so --resume then needs it again (or MLFLOW_TRACKING_URI, or "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)")
    run.add_argument("--smoke-test", action="store_true", help=smoke_help)
    return run


def add_config_flags(parser: argparse.ArgumentParser, *, recipe_note: str = "",
                     extra_sections: str = "") -> argparse._ArgumentGroup:
    """--config, --set, --recipe: any field of the base trial (and of the command's ``extra_sections``, named
    in the help), over the shortcut flags."""
    group = parser.add_argument_group(
        "any config field", f"Every field of the trial config (sections {', '.join(overrides.field_types())}; "
                            f"see nsde_ray.config){extra_sections} can be set. Later sources win: defaults < --config "
                            "< the flags above given on the command line < --recipe < --set.")
    group.add_argument("--config", default=None, metavar="FILE",
                       help="a whole or partial trial config, JSON or YAML (.json, .yaml, .yml), in the form of "
                            "TrialConfig.to_dict(): {section: {field: value}}")
    group.add_argument("--set", action="append", default=None, metavar="SECTION.FIELD=VALUE",
                       help="set one field, VALUE parsed as the field's type: numbers, true/false (1/0, yes/no), "
                            "none, comma-separated lists; repeatable (e.g. --set train.optimizer=adam "
                            "--set eval.methods=ig,saliency)")
    group.add_argument("--recipe", choices=list(overrides.RECIPES), default=None,
                       help="a named preset of --set values; paper: the papers' optimiser, "
                            + " ".join(overrides.RECIPES["paper"]) + recipe_note)
    return group


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed flags; ``args.given`` is the set of those given on the command line (not left at their defaults)."""
    args = parser.parse_args(argv)
    probe = copy.deepcopy(parser)  # parsed again with no defaults at all: what is left was given
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    args.given = frozenset(vars(probe.parse_args(argv)))
    return args


# Shortcut flags (their dests) -> the config field each sets; the commands add their own.
DATA_SHORTCUTS = {"dataset": "data.dataset", "data_dir": "data.data_dir", "download": "data.download",
                  "image_size": "data.image_size"}
TRAINING_SHORTCUTS = {"epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size",
                      "workers_per_trial": "train.num_workers", "use_gpu": "train.use_gpu",
                      "cpus_per_worker": "train.cpus_per_worker", "compile": "train.compile",
                      "init_from": "train.init_from", "eval_images": "eval.num_images", "eval_methods": "eval.methods"}


def shortcut_layers(args: argparse.Namespace, shortcuts: dict[str, str],
                    sections: dict[str, type] | None = None) -> tuple[list[Override], list[Override]]:
    """The shortcut flags as overrides: (those left at their defaults, those given on the command line)."""
    flags = {dest: overrides.override(name, getattr(args, dest), sections) for dest, name in shortcuts.items()}
    return ([value for dest, value in flags.items() if dest not in args.given],
            [value for dest, value in flags.items() if dest in args.given])


def trial_config_from_args(args: argparse.Namespace, shortcuts: dict[str, str],
                           sets: list[Override] | None = None) -> TrialConfig:
    """The base trial the flags describe: defaults (the config's, then the shortcut flags') < --config < the
    shortcut flags given < --recipe < --set (``sets``, default ``args.set`` parsed); ``init_from`` made
    absolute. Raises ConfigError."""
    defaults, given = shortcut_layers(args, shortcuts)
    cfg = overrides.build_trial(
        defaults, overrides.load_config_file(args.config) if args.config else [], given,
        overrides.recipe(args.recipe) if args.recipe else [],
        [overrides.parse_set(assignment) for assignment in args.set or ()] if sets is None else sets)
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


# --- this command ---------------------------------------------------------------------------------

SWEEP_SHORTCUTS = {**DATA_SHORTCUTS, **TRAINING_SHORTCUTS, "arch": "model.arch", "seed": "train.seed"}
SPACE = "space"  # the --set section of the search space, beside the trial's
SPACE_SHORTCUTS = {"sigma_range": "space.sigma_range", "lr_range": "space.lr_range", "clip_range": "space.clip_range"}
# --resume: flag dest -> where the stored settings (SweepConfig.to_dict()) hold its value.
SWEEP_RESUME_FIELDS = {**{dest: f"base.{path}" for dest, path in SWEEP_SHORTCUTS.items()}, **SPACE_SHORTCUTS,
                       "num_samples": "num_samples", "seeds_per_config": "seeds_per_config",
                       "max_concurrent": "max_concurrent"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.accuracy_vs_robustness",
        description="Search noise settings of stochastic ResNets (discretised neural SDEs) for the Pareto front of "
                    "accuracy against attribution robustness: Ray Tune + Optuna over Ray Train trials, tracked in "
                    "MLflow. With no flags: scikit-learn digits, a small CIFAR-style ResNet, local Ray, MLflow's "
                    "default local store.",
        formatter_class=HelpFormatter)
    data = add_data_flags(parser)
    data.add_argument("--arch", default=ModelConfig.arch, help=ARCH_HELP)
    search = parser.add_argument_group("search")
    search.add_argument("--num-samples", type=int, default=SweepConfig.num_samples,
                        help="trials in all, the two reference points (plain ResNet; gaussian sigma 0.5) included")
    search.add_argument("--sigma-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SearchSpace.sigma_range, help="noise_sigma search range")
    search.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=SearchSpace.lr_range,
                        help="learning-rate search range (log scale); under --recipe, one decade either side of the "
                             "base lr unless given")
    search.add_argument("--clip-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SearchSpace.clip_range, help="outlier-clipping percentile range of shaped trials")
    search.add_argument("--seed", type=int, default=TrainConfig.seed, help="search and training seed")
    search.add_argument("--seeds-per-config", type=int, default=SweepConfig.seeds_per_config,
                        help="training seeds per configuration (--seed onwards), each a full run; the search and the "
                             "Pareto front use their means, with standard errors")
    add_training_flags(parser, lr_help="learning rate of the reference points", eval_images=SWEEP_EVAL_IMAGES,
                       eval_methods=SWEEP_EVAL_METHODS)
    add_run_flags(parser, command=COMMAND, smoke_help=f"a tiny version of the same sweep, for CI: {SMOKE_SAMPLES} "
                                                      f"trials of {SMOKE_EPOCHS} epochs")
    add_config_flags(parser, recipe_note="; without --lr-range the lr search range is then one decade either side "
                                         "of the base lr (paper: 1e-05 to 0.001), as the default 0.02 to 0.3 "
                                         "suits SGD",
                     extra_sections=f" and of the search space (section {SPACE}: SearchSpace)")
    return parser


def sweep_config_from_args(args: argparse.Namespace, name: str, storage: str) -> SweepConfig:
    """The validated sweep the flags describe; raises ConfigError, DataError or WeightsError.

    The search space has the trial's precedence, a recipe's lr range (one decade either side of the
    base lr) between the range flags left at their defaults and those given."""
    sections = {**overrides.trial_sections(), SPACE: SearchSpace}
    sets = [overrides.parse_set(assignment, sections) for assignment in args.set or ()]
    base = trial_config_from_args(args, SWEEP_SHORTCUTS, [item for item in sets if item.section != SPACE])
    num_samples = args.num_samples
    if args.smoke_test:
        base = replace(base, train=capped(base.train, {"epochs": SMOKE_EPOCHS}), eval=capped(base.eval, SMOKE_EVAL))
        num_samples = min(num_samples, SMOKE_SAMPLES)
    defaults, given = shortcut_layers(args, SPACE_SHORTCUTS, sections)
    recipe = [Override(SPACE, "lr_range", (base.train.lr / 10, base.train.lr * 10))] if args.recipe else []
    space = SearchSpace(**overrides.merged(defaults, recipe, given, [item for item in sets if item.section == SPACE])
                        .get(SPACE, {}))
    cfg = SweepConfig(name=name, storage=storage, base=base, space=space, num_samples=num_samples,
                      max_concurrent=args.max_concurrent, tracking_uri=args.tracking_uri, seed=args.seed,
                      seeds_per_config=args.seeds_per_config)
    check_trial(cfg.base, (cfg.base.model.arch,))
    return cfg


def resolve_storage(storage: str) -> str:
    """An absolute local path, or the URI unchanged."""
    return storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))


def fail(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit with status 2 and ``message``, as argparse does for a bad flag."""
    parser.exit(2, f"{parser.prog}: error: {message}\n(see --help)\n")


def usage_errors() -> tuple[type[Exception], ...]:
    """What :func:`open_run` raises for flags that cannot work (each message says what to do)."""
    from nsde_ray.sweep import SweepError
    from nsde_ray.tracking import TrackingError

    return ConfigError, DataError, SweepError, TrackingError, WeightsError


def open_run(args: argparse.Namespace, *, command: str, kind: str, from_args: Callable, from_dict: Callable,
             parent_params: Callable | None = None, resume_fields: dict[str, str] | None = None,
             sections: dict[str, type] | None = None):
    """The run the flags name, ready for Ray: (settings, :class:`SweepTracker`).

    A new run's settings come from ``from_args(args, name, storage)`` (a name already in the
    storage fails); it gets its MLflow parent run (params: ``parent_params(settings)``, default
    the base trial's) and its saved state (:func:`save_sweep_state` under ``kind``). ``--resume``
    rebuilds the saved settings with ``from_dict`` and reopens the parent run; flags given with it
    that differ from the stored settings (``resume_fields``: flag dest -> dotted path in the
    settings; ``sections``: those ``--set`` may name) are named in a warning and not applied
    (:func:`resume_differences`). The returned settings hold the tracking URI masked
    (:func:`nsde_ray.tracking.mask_uri`); only the tracker connects with the real one. Raises
    :func:`usage_errors`; nothing here starts Ray.
    """
    from nsde_ray import sweep as sweeps
    from nsde_ray.tracking import (SweepTracker, TrackingError, check_reachable, check_tracking_uri, is_local_store,
                                   mask_uri, redact, resolve_resume_uri, resolve_tracking_uri)

    storage = resolve_storage(args.storage)
    name = args.name or time.strftime(f"{command}_%Y%m%d_%H%M%S")
    check_name(name)  # before anything reads or writes under storage/name
    if args.resume:
        if not args.name:
            raise sweeps.SweepError("--resume needs the --name of the sweep to continue")
        settings, tracker = sweeps.load_state(storage, name, kind)
        cfg = from_dict(settings)
        differences = resume_differences(args, settings, resume_fields or {}, sections)
        if differences:
            print(f"[nsde-ray] warning: --resume continues {name!r} with its stored settings; these flags differ "
                  "from them and are not applied: " + "; ".join(differences), file=sys.stderr, flush=True)
        tracking_uri = resolve_resume_uri(args.tracking_uri, cfg.tracking_uri)
    else:
        cfg = from_args(args, name, storage)
        if sweeps.sweep_exists(storage, name):
            raise sweeps.SweepError(f"a sweep named {name!r} already exists in {storage}: pass --resume to "
                                    "continue it, or choose another --name")
        tracker = None
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    check_reachable(tracking_uri)
    if args.address and is_local_store(tracking_uri):
        print(f"[nsde-ray] warning: MLflow store {mask_uri(tracking_uri)} is local to this machine; on a multi-node "
              "cluster pass --tracking-uri http://<mlflow server>:5000", file=sys.stderr, flush=True)
    cfg = replace(cfg, tracking_uri=mask_uri(tracking_uri))
    if tracker is not None:
        tracking = SweepTracker(**dict(tracker, tracking_uri=tracking_uri))
        try:
            tracking.reopen_parent()
        except Exception as err:  # MLflow raises many kinds: a wrong store, a deleted run
            raise TrackingError(f"cannot reopen the parent run {tracker.get('parent_run_id')} of {name!r} in the "
                                f"MLflow store {mask_uri(tracking_uri)!r}: {redact(str(err), tracking_uri)}; "
                                "check --tracking-uri") from err
        return cfg, tracking
    params = parent_params(cfg) if parent_params is not None else cfg.base.to_params()
    tracking = SweepTracker.start(tracking_uri, cfg.experiment_name, name, params)
    sweeps.save_sweep_state(cfg, tracking.describe(), kind)
    return cfg, tracking


# Flags that say where and how to run, applied on --resume too: never compared with the stored settings.
RUN_FLAGS = frozenset({"name", "storage", "resume", "tracking_uri", "address", "no_retry_errored", "out_dir"})


def resume_differences(args: argparse.Namespace, settings: dict[str, Any], fields: dict[str, str],
                       sections: dict[str, type] | None = None) -> list[str]:
    """The flags given with ``--resume`` whose values differ from the stored ``settings``, each as
    ``--flag (stored X, given Y)``; ``fields``: flag dest -> dotted path in ``settings`` (``base.train.epochs``);
    ``--set``, ``--recipe`` and ``--config`` are compared field by field (``sections``: those they may name,
    ``space`` stored beside ``base``); other flags, which the settings do not record, as ``--flag (not applied)``."""
    differences = []
    for dest in sorted(args.given - RUN_FLAGS):
        flag = "--" + dest.replace("_", "-")
        value = getattr(args, dest)
        if dest in fields:
            given = os.path.abspath(os.path.expanduser(value)) if dest == "init_from" and value else value
            stored = _stored(settings, fields[dest])
            if not _same(stored, given):
                note = ": a resumed run cannot be extended" if dest == "num_samples" else ""
                differences.append(f"{flag} (stored {_show(stored)}, given {_show(given)}{note})")
            continue
        try:
            if dest == "set":
                layers = [(f"--set {text}", [overrides.parse_set(text, sections)]) for text in value]
            elif dest == "recipe":
                layers = [(f"--recipe {value}", overrides.recipe(value))]
            elif dest == "config":
                layers = [(f"--config {value}", overrides.load_config_file(value))]
            else:
                differences.append(f"{flag} (not applied)")
                continue
        except ConfigError:
            differences.append(f"{flag} (not applied)")
            continue
        for label, items in layers:
            changed = []
            for item in items:
                stored = _stored(settings, _settings_path(item.section, item.field))
                if not _same(stored, item.value):
                    changed.append(f"{item.section}.{item.field}: stored {_show(stored)}, given {_show(item.value)}")
            if changed:
                differences.append(f"{label} ({'; '.join(changed)})")
    return differences


def _settings_path(section: str, field: str) -> str:
    return f"{section}.{field}" if section == SPACE else f"base.{section}.{field}"


def _stored(settings: dict[str, Any], path: str) -> Any:
    value: Any = settings
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _same(stored: Any, given: Any) -> bool:
    if isinstance(stored, (list, tuple)) and isinstance(given, (list, tuple)):
        return len(stored) == len(given) and all(_same(a, b) for a, b in zip(stored, given))
    numbers = (int, float)
    if isinstance(stored, numbers) and isinstance(given, numbers) and not isinstance(stored, bool) \
            and not isinstance(given, bool):
        return math.isclose(float(stored), float(given), rel_tol=1e-9, abs_tol=0.0) or stored == given
    return stored == given


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def init_ray(address: str | None) -> None:
    """Join ``address`` (or start a local Ray).

    No credentials travel with the job: a ``runtime_env`` is shown in plain text on Ray's dashboard
    and state API. A local Ray started here inherits this process's environment (MLFLOW_TRACKING_*,
    AWS_* ...); on a cluster the Ray workers get theirs from their nodes (the environment where
    ``ray start`` runs, files, instance roles), see README "Running on a cluster". A process that
    started Ray itself (a notebook, a test) keeps its instance.
    """
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address)


def main(argv: list[str] | None = None) -> int:
    from nsde_ray import sweep as sweeps
    from nsde_ray.tracking import FRONT_FILTER, front_table, ui_command

    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        cfg, tracking = open_run(args, command=COMMAND, kind="sweep", from_args=sweep_config_from_args,
                                 from_dict=SweepConfig.from_dict, resume_fields=SWEEP_RESUME_FIELDS,
                                 sections={**overrides.trial_sections(), SPACE: SearchSpace})
    except usage_errors() as err:
        fail(parser, str(err))
    name, storage = cfg.name, resolve_storage(args.storage)
    if args.resume:
        print(f"[nsde-ray] resuming sweep {name!r} with its stored settings ({cfg.num_samples} trials, "
              f"{cfg.base.train.epochs} epochs each); errored trials "
              + ("stay as they are" if args.no_retry_errored else "run again from their latest checkpoints"),
              flush=True)

    started = time.perf_counter()
    init_ray(args.address)
    print(f"[nsde-ray] sweep {name!r}: {cfg.num_samples} trials of {cfg.base.model.arch} on {cfg.base.data.dataset}, "
          f"{cfg.base.train.epochs} epochs, {cfg.base.train.num_workers} DDP worker(s) each; Tune state in "
          f"{sweeps.experiment_path(cfg)}; MLflow {cfg.tracking_uri}, experiment {cfg.experiment_name!r}",
          flush=True)
    tuner = sweeps.build_tuner(cfg, tracking.describe(), resume=args.resume, retry_errored=not args.no_retry_errored)
    results = tuner.fit()
    report = tracking.update_front()
    rows = report.rows
    tracking.finish_sweep()
    errors = sum(result.error is not None for result in results)
    print(f"\n[nsde-ray] sweep {name!r} done in {time.perf_counter() - started:.0f} s: {len(results)} trials, "
          f"{len(rows)} evaluated, {errors} failed")
    objectives = ", ".join(f"{name} {mode}" for name, mode in report.objectives)
    print(f"[nsde-ray] Pareto front over {objectives} (* = on the front on the means; pareto_probability = on the "
          f"front when each mean is redrawn within its standard error; {cfg.seeds_per_config} seed(s) per "
          "configuration, objectives as mean ± SE):")
    print(front_table(rows))
    for note in report.notes:
        print(f"[nsde-ray] note: {note}")
    floors = ", ".join(f"{name} {floor:.3g} of range {spread:.3g}" for name, (floor, spread, _) in report.floors.items())
    print(f"[nsde-ray] noise floors (median SE of range): {floors}; flagged: {', '.join(report.flagged) or 'none'}")
    print(f"[nsde-ray] browse it: {ui_command(tracking.tracking_uri)}")
    print(f"[nsde-ray]   experiment {cfg.experiment_name!r}, filter: {FRONT_FILTER}")
    print(f"[nsde-ray] resume it (after a crash or a stop): python -m sweeps.{COMMAND} --name {name} --storage {storage} --resume")
    return 0 if rows else 1
