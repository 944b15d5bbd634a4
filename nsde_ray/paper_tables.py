"""``python -m sweeps.paper_tables``: the papers' tables as a resumable Ray Tune grid, tracked in MLflow.

The grid is every (architecture, noise mode, training seed) of :class:`PaperTablesConfig`. Each
grid point is one trial of the main sweep's kind (:func:`nsde_ray.trial.run_trial`: a Ray Train
run, then an evaluation task, a nested MLflow run), with the papers' evaluation protocol: every
attribution method on the correctly classified ones of ``eval.num_images`` (100) candidate test
images, repeated ``repeats`` (5) times. Repeat r uses evaluation seed ``eval.seed + r`` for every
model, so it draws new candidates (the same for every model), new sensitivity perturbations, DeepSHAP
baselines and SmoothGrad noise, and the models of a grid are compared on the same draws: the tables
take each metric on the candidates that every model of an architecture and training seed classifies
correctly (:mod:`nsde_ray.common_images`). When the grid is done (or resumed, which
re-renders from what finished) :mod:`nsde_ray.tables` builds the tables from the MLflow child
runs; they go to the terminal, to ``--out-dir`` as Markdown and CSV, and to the parent run's
artifacts under ``paper_tables/``. ``--paired`` trains the noisy models by fine-tuning the plain
model of their seed instead (:mod:`nsde_ray.paired`) and adds the paired-differences table.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace

from nsde_ray import flags, tables
from nsde_ray.config import (
    DEFAULT_SEEDS,
    PAPER_REPEATS,
    REFERENCE_SIGMA,
    EvalConfig,
    ModelConfig,
    PaperTablesConfig,
    ShapingConfig,
)
from nsde_ray.lifecycle import experiment_path, init_ray, open_run_from_argv, resolve_storage
from nsde_ray.logs import result
from nsde_ray.names import METHODS
from nsde_ray.registry import noise_mode_names
from nsde_ray.report import TABLES_DIR, model_results, protocol, write_tables

COMMAND = KIND = "paper_tables"
KIND_TAG = "nsde.kind"
PAPER_IMAGES = 100
# --smoke-test: the same path in about a minute of compute; shaping by saliency from the first step,
# so that one epoch exercises it.
SMOKE_EPOCHS, SMOKE_REPEATS = 1, 2
# 32 candidate images: a model trained for one epoch classifies few of them correctly, and is scored on those.
SMOKE_EVAL = dict(
    num_images=32, n_steps=4, nt_samples=2, n_perturbations=2, deepshap_baselines=2, saturation_images=2, grid_images=2
)
SMOKE_SHAPING = ShapingConfig(warmup_epochs=0, refresh_every=1, method="saliency")
# Shortcut flags (dests) -> the config field each sets; --arch and --seeds are the grid's axes instead.
SHORTCUTS = {
    **flags.DATA_SHORTCUTS,
    **flags.TRAINING_SHORTCUTS,
    "sigma": "noise.sigma",
    "ig_steps": "eval.n_steps",
    "nt_samples": "eval.nt_samples",
    "perturbations": "eval.n_perturbations",
    "shap_baselines": "eval.deepshap_baselines",
}
# --resume: flag dest -> where the stored settings (PaperTablesConfig.to_dict()) hold its value.
RESUME_FIELDS = {
    **{dest: f"base.{path}" for dest, path in SHORTCUTS.items()},
    "arch": "archs",
    "noise_modes": "noise_modes",
    "seeds": "seeds",
    "repeats": "repeats",
    "paired": "paired",
    "finetune_epochs": "finetune_epochs",
    "max_concurrent": "max_concurrent",
}

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m sweeps.{COMMAND}",
        description="Reproduce the papers' tables (IJCAI 2021 Tables 1-3, AAAI 2022 Tables 1 and 2) on your data "
        "and architectures: a Ray Tune grid over architecture, noise mode and seed, each model evaluated "
        "with every attribution method on the correctly classified ones of 100 candidate images, 5 times, "
        "compared on the images every model classifies correctly; tables to the "
        "terminal, as Markdown and CSV, and to MLflow. Resumable with --resume.",
        formatter_class=flags.HelpFormatter,
    )
    data = flags.add_data_flags(parser)
    data.add_argument(
        "--arch",
        nargs="+",
        default=[ModelConfig.arch],
        help=f"architectures, each {flags.ARCH_HELP} (default: the base config's model.arch)",
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument("--noise-modes", nargs="+", default=list(noise_mode_names()), help="noise modes (table columns)")
    grid.add_argument(
        "--sigma",
        type=float,
        default=REFERENCE_SIGMA,
        help="normalised noise magnitude of the gaussian and attribution models (the papers' 0.5)",
    )
    grid.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="training seeds; each (arch, noise mode) is trained once per seed",
    )
    grid.add_argument(
        "--repeats",
        type=int,
        default=PAPER_REPEATS,
        help="evaluations of each model, each on a new seeded set of --eval-images images",
    )
    grid.add_argument(
        "--paired",
        action="store_true",
        help="train the plain model (none) of each arch and seed first, then fine-tune every other "
        "noise mode from its final weights for --finetune-epochs; adds the paired-differences "
        "table (noisy minus plain per seed, paired t-test)",
    )
    grid.add_argument("--finetune-epochs", type=int, default=None, help="epochs of each noisy fine-tune (--paired)")
    train = flags.add_training_flags(parser, lr_help="learning rate", eval_images=PAPER_IMAGES, eval_methods=METHODS)
    train.add_argument("--ig-steps", type=int, default=EvalConfig.n_steps, help="IG (and IG + NT) integration points")
    train.add_argument("--nt-samples", type=int, default=EvalConfig.nt_samples, help="IG + NT (SmoothGrad) samples")
    train.add_argument(
        "--perturbations",
        type=int,
        default=EvalConfig.n_perturbations,
        help="perturbations per image of max-sensitivity",
    )
    train.add_argument(
        "--shap-baselines",
        type=int,
        default=EvalConfig.deepshap_baselines,
        help="training images in DeepSHAP's baseline distribution",
    )
    run = flags.add_run_flags(
        parser,
        command=COMMAND,
        smoke_help=f"a tiny grid for CI: the first arch and seed, {SMOKE_EPOCHS} epoch, "
        f"{SMOKE_REPEATS} repeats on {SMOKE_EVAL['num_images']} candidate images",
    )
    run.add_argument("--out-dir", default=None, help="where the tables are written (default: tables/NAME here)")
    flags.add_config_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace, name: str, storage: str) -> PaperTablesConfig:
    """The validated grid the flags describe; raises ConfigError, DataError or WeightsError."""
    base = flags.trial_config_from_args(args, SHORTCUTS)
    archs = args.arch if "arch" in args.given else [base.model.arch]
    seeds, repeats = args.seeds, args.repeats
    if args.smoke_test:
        base = replace(
            base,
            train=flags.capped(base.train, {"epochs": SMOKE_EPOCHS}),
            eval=flags.capped(base.eval, SMOKE_EVAL),
            shaping=SMOKE_SHAPING,
        )
        archs, seeds, repeats = archs[:1], seeds[:1], min(repeats, SMOKE_REPEATS)
    base = replace(base, model=replace(base.model, arch=archs[0]), train=replace(base.train, seed=seeds[0]))
    finetune_epochs = args.finetune_epochs
    if args.smoke_test and finetune_epochs is not None:
        finetune_epochs = min(finetune_epochs, SMOKE_EPOCHS)
    cfg = PaperTablesConfig(
        name=name,
        storage=storage,
        base=base,
        archs=tuple(archs),
        noise_modes=tuple(args.noise_modes),
        seeds=tuple(seeds),
        repeats=repeats,
        max_concurrent=args.max_concurrent,
        tracking_uri=args.tracking_uri,
        paired=args.paired,
        finetune_epochs=finetune_epochs,
    )
    flags.check_trial(cfg.base, cfg.archs)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from nsde_ray.mlflow_uri import ui_command
    from nsde_ray.sweep import build_grid_tuner

    args, cfg, tracker = open_run_from_argv(
        build_parser(),
        argv,
        resuming=lambda cfg: f"paper tables {cfg.name!r} with its stored settings",
        command=COMMAND,
        kind=KIND,
        from_args=config_from_args,
        from_dict=PaperTablesConfig.from_dict,
        parent_params=PaperTablesConfig.parent_params,
        resume_fields=RESUME_FIELDS,
    )
    if not args.resume:
        tracker.client.set_tag(tracker.parent_run_id, KIND_TAG, KIND)

    started = time.perf_counter()
    init_ray(args.address, args.log_level)
    log.info(
        f"paper tables {cfg.name!r}: {cfg.grid_size} models ({', '.join(cfg.archs)} x "
        f"{', '.join(cfg.noise_modes)} x seeds {', '.join(map(str, cfg.seeds))}) on {cfg.base.data.dataset}, "
        f"{cfg.base.train.epochs} epochs each, then {', '.join(cfg.base.eval.methods)} on "
        f"{cfg.base.eval.num_images} images x {cfg.repeats} repeats; Tune state in {experiment_path(cfg)}; "
        f"MLflow {cfg.tracking_uri}, experiment {cfg.experiment_name!r}"
    )
    if cfg.paired:
        from nsde_ray import paired

        grid = paired.run(cfg, tracker, retry_errored=not args.no_retry_errored, log_level=args.log_level)
    else:
        grid = build_grid_tuner(
            cfg,
            tracker.describe(),
            resume=args.resume,
            retry_errored=not args.no_retry_errored,
            log_level=args.log_level,
        ).fit()
    results = model_results(tracker)
    report = tables.paper_tables(results, list(cfg.archs), list(cfg.base.eval.methods))
    if cfg.paired:
        report.append(tables.paired_table(results, list(cfg.archs), list(cfg.base.eval.methods)))
    out_dir = os.path.abspath(args.out_dir or os.path.join("tables", cfg.name))
    text = write_tables(report, protocol(cfg, len(results)), out_dir)
    tracker.client.log_artifacts(tracker.parent_run_id, out_dir, TABLES_DIR)
    tracker.finish_sweep()
    errors = sum(trial.error is not None for trial in grid)
    result(
        f"paper tables {cfg.name!r} done in {time.perf_counter() - started:.0f} s: {len(grid)} trials, "
        f"{len(results)} evaluated, {errors} failed"
    )
    result(text, block=True)
    result(
        f"tables written to {out_dir} (Markdown and CSV) and logged to the parent run "
        f"{tracker.parent_run_id} under {TABLES_DIR}/; browse: {ui_command(tracker.tracking_uri)}"
    )
    result(
        f"resume or re-render: python -m sweeps.{COMMAND} --name {cfg.name} "
        f"--storage {resolve_storage(args.storage)} --resume"
    )
    return 0 if results else 1
