"""``python -m sweeps.accuracy_vs_robustness``: flags -> validated :class:`SweepConfig` -> Ray Tune -> the front.

Every flag becomes part of a typed :class:`SweepConfig`, checked (data directory layout, initial
weights, whether a sweep to resume exists, the MLflow store) before Ray starts, so a value that
cannot work fails in seconds with a message that says what to do. The flags shared with
``python -m sweeps.paper_tables`` are in :mod:`nsde_ray.flags`, the run's set-up in
:mod:`nsde_ray.lifecycle`, the Tuner in :mod:`nsde_ray.sweep`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from dataclasses import replace

from nsde_ray import overrides
from nsde_ray.config import AUTO, AUTO_START_SEEDS, SPACE, ModelConfig, SearchSpace, SweepConfig, TrainConfig
from nsde_ray.flags import (
    ARCH_HELP,
    DATA_SHORTCUTS,
    TRAINING_SHORTCUTS,
    HelpFormatter,
    add_config_flags,
    add_data_flags,
    add_run_flags,
    add_training_flags,
    capped,
    check_trial,
    parse_args,  # noqa: F401 (re-exported: the tests parse as the command does, cli.parse_args)
    shortcut_layers,
    trial_config_from_args,
)
from nsde_ray.lifecycle import (
    experiment_path,
    init_ray,
    open_run,  # noqa: F401 (re-exported: the tests open a run as the command does, cli.open_run)
    open_run_from_argv,
    resolve_storage,
)
from nsde_ray.logs import result
from nsde_ray.overrides import Override

COMMAND = "accuracy_vs_robustness"
SWEEP_EVAL_IMAGES, SWEEP_EVAL_METHODS = 64, ("ig", "saliency")
# What --smoke-test shrinks: the same path, in about two minutes on 2 cores.
SMOKE_SAMPLES, SMOKE_EPOCHS = 3, 2
SMOKE_EVAL = dict(num_images=32, n_steps=16, n_perturbations=4, saturation_images=4, grid_images=4)

log = logging.getLogger(__name__)


SWEEP_SHORTCUTS = {**DATA_SHORTCUTS, **TRAINING_SHORTCUTS, "arch": "model.arch", "seed": "train.seed"}
SPACE_SHORTCUTS = {"sigma_range": "space.sigma_range", "lr_range": "space.lr_range", "clip_range": "space.clip_range"}
# --resume: flag dest -> where the stored settings (SweepConfig.to_dict()) hold its value.
SWEEP_RESUME_FIELDS = {
    **{dest: f"base.{path}" for dest, path in SWEEP_SHORTCUTS.items()},
    **SPACE_SHORTCUTS,
    "num_samples": "num_samples",
    "seeds_per_config": "seeds_per_config",
    "max_seeds": "max_seeds",
    "seed_budget": "seed_budget",
    "undecided_band": "undecided_band",
    "max_concurrent": "max_concurrent",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.accuracy_vs_robustness",
        description="Search noise settings of stochastic ResNets (discretised neural SDEs) for the Pareto front of "
        "accuracy against attribution robustness: Ray Tune + Optuna over Ray Train trials, tracked in "
        "MLflow. With no flags: scikit-learn digits, a small CIFAR-style ResNet, local Ray, MLflow's "
        "default local store.",
        formatter_class=HelpFormatter,
    )
    data = add_data_flags(parser)
    data.add_argument("--arch", default=ModelConfig.arch, help=ARCH_HELP)
    search = parser.add_argument_group("search")
    search.add_argument(
        "--num-samples",
        type=int,
        default=SweepConfig.num_samples,
        help="trials in all, the two reference points (plain ResNet; gaussian sigma 0.5) included",
    )
    add_range = functools.partial(search.add_argument, type=float, nargs=2, metavar=("LOW", "HIGH"))
    add_range("--sigma-range", default=SearchSpace.sigma_range, help="noise_sigma search range")
    add_range(
        "--lr-range",
        default=SearchSpace.lr_range,
        help="learning-rate search range (log scale); under --recipe, one decade either side of the "
        "base lr unless given",
    )
    add_range("--clip-range", default=SearchSpace.clip_range, help="outlier-clipping percentile range of shaped trials")
    search.add_argument("--seed", type=int, default=TrainConfig.seed, help="search and training seed")
    search.add_argument(
        "--seeds-per-config",
        type=seeds_count,
        default=SweepConfig.seeds_per_config,
        help=f"training seeds per configuration (--seed onwards), each a full run; the search and the "
        f"Pareto front use their means, with standard errors. {AUTO}: {AUTO_START_SEEDS} each, then one more at a "
        "time for configurations whose membership of the front is undecided",
    )
    search.add_argument(
        "--max-seeds", type=int, default=SweepConfig.max_seeds, help=f"under {AUTO}: seeds per configuration at most"
    )
    search.add_argument(
        "--seed-budget",
        type=int,
        default=SweepConfig.seed_budget,
        help=f"under {AUTO}: seed runs in all, the first {AUTO_START_SEEDS} of each configuration included "
        "(default: 2.5 per configuration)",
    )
    add_range(
        "--undecided-band",
        default=SweepConfig.undecided_band,
        help=f"under {AUTO}: membership probabilities (bounds included) that earn a configuration another seed",
    )
    add_training_flags(
        parser,
        lr_help="learning rate of the reference points",
        eval_images=SWEEP_EVAL_IMAGES,
        eval_methods=SWEEP_EVAL_METHODS,
    )
    add_run_flags(
        parser,
        command=COMMAND,
        smoke_help=f"a tiny version of the same sweep, for CI: {SMOKE_SAMPLES} trials of {SMOKE_EPOCHS} epochs",
    )
    add_config_flags(
        parser,
        recipe_note="; without --lr-range the lr search range is then one decade either side "
        "of the base lr (paper: 1e-05 to 0.001), as the default 0.02 to 0.3 "
        "suits SGD",
        extra_sections=f" and of the search space (section {SPACE}: SearchSpace)",
    )
    return parser


def seeds_count(text: str) -> int | str:
    """``--seeds-per-config``: a count, or ``auto`` (adaptive replication)."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or {AUTO!r}, got {text!r}") from None


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
    space = SearchSpace(
        **overrides.merged(defaults, recipe, given, [item for item in sets if item.section == SPACE]).get(SPACE, {})
    )
    cfg = SweepConfig(
        name=name,
        storage=storage,
        base=base,
        space=space,
        num_samples=num_samples,
        max_concurrent=args.max_concurrent,
        tracking_uri=args.tracking_uri,
        seed=args.seed,
        seeds_per_config=args.seeds_per_config,
        max_seeds=args.max_seeds,
        seed_budget=args.seed_budget,
        undecided_band=tuple(args.undecided_band),
    )
    check_trial(cfg.base, (cfg.base.model.arch,))
    return cfg


def seeds_described(cfg: SweepConfig) -> str:
    """``2 seed(s)``, or what ``auto`` does."""
    if cfg.adaptive:
        return f"{cfg.initial_seeds} to {cfg.max_seeds} seeds (auto, {cfg.total_seed_budget} seed runs at most)"
    return f"{cfg.seeds_per_config} seed(s)"


def main(argv: list[str] | None = None) -> int:
    from nsde_ray.front_table import front_table
    from nsde_ray.mlflow_uri import ui_address, ui_command
    from nsde_ray.replication import replicate
    from nsde_ray.sweep import build_tuner
    from nsde_ray.tracking import FRONT_FILTER, front_url

    args, cfg, tracker = open_run_from_argv(
        build_parser(),
        argv,
        resuming=lambda cfg: (
            f"sweep {cfg.name!r} with its stored settings ({cfg.num_samples} trials, "
            f"{cfg.base.train.epochs} epochs each)"
        ),
        command=COMMAND,
        kind="sweep",
        from_args=sweep_config_from_args,
        from_dict=SweepConfig.from_dict,
        resume_fields=SWEEP_RESUME_FIELDS,
        sections={**overrides.trial_sections(), SPACE: SearchSpace},
        parent_params=SweepConfig.parent_params,
    )
    name, storage = cfg.name, resolve_storage(args.storage)

    started = time.perf_counter()
    init_ray(args.address, args.log_level)
    log.info(
        f"sweep {name!r}: {cfg.num_samples} configurations x {seeds_described(cfg)} of "
        f"{cfg.base.model.arch} on {cfg.base.data.dataset}, {cfg.base.train.epochs} epochs, "
        f"{cfg.base.train.num_workers} DDP worker(s) each; Tune state in {experiment_path(cfg)}; "
        f"MLflow {cfg.tracking_uri}, experiment {cfg.experiment_name!r}"
    )
    tuner = build_tuner(
        cfg, tracker.describe(), resume=args.resume, retry_errored=not args.no_retry_errored, log_level=args.log_level
    )
    results = tuner.fit()
    report = tracker.update_front(replicate(cfg, tracker, args.log_level) if cfg.adaptive else ())
    rows = report.rows
    tracker.finish_sweep()
    errors = sum(trial.error is not None for trial in results)
    result(
        f"sweep {name!r} done in {time.perf_counter() - started:.0f} s: {len(results)} trials, "
        f"{len(rows)} evaluated, {errors} failed"
    )
    objectives = ", ".join(f"{name} {mode}" for name, mode in report.objectives)
    result(
        f"Pareto front over {objectives} (* = on the front on the means; pareto_probability = on the "
        f"front when each mean is redrawn within its standard error; {seeds_described(cfg)} per "
        "configuration, objectives as mean ± SE):"
    )
    result(front_table(rows), block=True)
    for note in report.notes:
        result(f"note: {note}")
    floors = ", ".join(
        f"{name} {floor:.3g} of range {spread:.3g}" for name, (floor, spread, _) in report.floors.items()
    )
    result(f"noise floors (median SE of range): {floors}; flagged: {', '.join(report.flagged) or 'none'}")
    result("noise modes compared by their own fronts (does a mode buy robustness at matched accuracy?):")
    result(report.modes.to_text() + "\n", block=True)
    result(f"browse it: {ui_command(tracker.tracking_uri)}")
    result(
        f"  experiment {cfg.experiment_name!r}, filter: {FRONT_FILTER}; the front's runs, listed flat: "
        f"{front_url(tracker.experiment_id, ui_address(tracker.tracking_uri))}"
    )
    result(
        f"resume it (after a crash or a stop): python -m sweeps.{COMMAND} --name {name} --storage {storage} --resume"
    )
    return 0 if rows else 1
