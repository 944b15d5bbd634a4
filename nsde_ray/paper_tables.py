"""``python -m sweeps.paper_tables``: the papers' tables as a resumable Ray Tune grid, tracked in MLflow.

The grid is every (architecture, noise mode, training seed) of :class:`PaperTablesConfig`. Each
grid point is one trial of the main sweep's kind (:func:`nsde_ray.sweep.run_trial`: a Ray Train
run, then an evaluation task, a nested MLflow run), with the papers' evaluation protocol: every
attribution method on ``eval.num_images`` (100) correctly classified test images, repeated
``repeats`` (5) times. Repeat r uses evaluation seed ``eval.seed + r`` for every model, so it draws a
new image set, new sensitivity perturbations, DeepSHAP baselines and SmoothGrad noise, and the
models of a grid are compared on the same draws. When the grid is done (or resumed, which
re-renders from what finished) :mod:`nsde_ray.tables` builds the tables from the MLflow child
runs; they go to the terminal, to ``--out-dir`` as Markdown and CSV, and to the parent run's
artifacts under ``paper_tables/``. ``--paired`` trains the noisy models by fine-tuning the plain
model of their seed instead (:mod:`nsde_ray.paired`) and adds the paired-differences table.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nsde_ray import tables
from nsde_ray.cli import (ARCH_HELP, DATA_SHORTCUTS, TRAINING_SHORTCUTS, HelpFormatter, add_config_flags,
                          add_data_flags, add_run_flags, add_training_flags, capped, check_trial, fail, init_ray,
                          open_run, parse_args, resolve_storage, trial_config_from_args, usage_errors)
from nsde_ray.config import (NOISE_MODES, REFERENCE_SIGMA, ConfigError, EvalConfig, ModelConfig, NoiseConfig,
                             ShapingConfig, TrialConfig, check_name)

COMMAND = KIND = "paper_tables"
TABLES_DIR = "paper_tables"  # the parent run's artifact folder
REPORT_FILE = "paper_tables.md"
KIND_TAG = "nsde.kind"
PAPER_METHODS = tables.TABLE1_METHODS  # every method, AAAI 2022 Table 1's order
PAPER_IMAGES, PAPER_REPEATS, DEFAULT_SEEDS = 100, 5, (0, 1, 2)
# --smoke-test: the same path in about a minute of compute; shaping by saliency from the first step,
# so that one epoch exercises it.
SMOKE_EPOCHS, SMOKE_REPEATS = 1, 2
SMOKE_EVAL = dict(num_images=8, n_steps=4, nt_samples=2, n_perturbations=2, deepshap_baselines=2,
                  saturation_images=2, grid_images=2)
SMOKE_SHAPING = ShapingConfig(warmup_epochs=0, refresh_every=1, method="saliency")
# Shortcut flags (dests) -> the config field each sets; --arch and --seeds are the grid's axes instead.
SHORTCUTS = {**DATA_SHORTCUTS, **TRAINING_SHORTCUTS, "sigma": "noise.sigma", "ig_steps": "eval.n_steps",
             "nt_samples": "eval.nt_samples", "perturbations": "eval.n_perturbations",
             "shap_baselines": "eval.deepshap_baselines"}
# --resume: flag dest -> where the stored settings (PaperTablesConfig.to_dict()) hold its value.
RESUME_FIELDS = {**{dest: f"base.{path}" for dest, path in SHORTCUTS.items()}, "arch": "archs",
                 "noise_modes": "noise_modes", "seeds": "seeds", "repeats": "repeats", "paired": "paired",
                 "finetune_epochs": "finetune_epochs", "max_concurrent": "max_concurrent"}


@dataclass(frozen=True)
class PaperTablesConfig:
    """The grid: every (arch, noise mode, seed), trained once from ``base`` and evaluated ``repeats`` times.

    base: every trial's config before the grid's params; its noise sigma (normalised, unitless;
    the papers' 0.5) is that of the noisy modes, its ``eval`` the evaluation of one repeat.
    seeds: training seeds (initial weights, shards, noise draws); the evaluation seeds are the
    same for every model. name, storage, max_concurrent, tracking_uri, experiment: as in
    :class:`nsde_ray.config.SweepConfig`. paired: train the plain models (``none``) for
    ``base.train.epochs``, then fine-tune every other mode from the plain model of its (arch, seed)
    for ``finetune_epochs`` (:mod:`nsde_ray.paired`); ``storage`` must then be a file system path.
    """

    name: str
    storage: str
    base: TrialConfig = field(default_factory=TrialConfig)
    archs: tuple[str, ...] = (ModelConfig.arch,)
    noise_modes: tuple[str, ...] = NOISE_MODES
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    repeats: int = PAPER_REPEATS
    max_concurrent: int | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    paired: bool = False
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        for name in ("archs", "noise_modes", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"{name} must be distinct and not empty, got {list(values)}")
        check_name(self.name)
        for arch in self.archs:
            ModelConfig(arch=arch)
        for mode in self.noise_modes:
            NoiseConfig(mode=mode)
        if any(not isinstance(seed, int) or isinstance(seed, bool) or seed < 0 for seed in self.seeds):
            raise ConfigError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"repeats (--repeats) must be an integer >= 1, got {self.repeats!r}")
        if self.max_concurrent is not None and (not isinstance(self.max_concurrent, int) or self.max_concurrent < 1):
            raise ConfigError(f"max_concurrent (--max-concurrent) must be an integer >= 1, got {self.max_concurrent!r}")
        if set(self.noise_modes) - {"none"} and self.base.noise.sigma <= 0:
            raise ConfigError(f"sigma (--sigma) must be > 0 for the noisy modes {sorted(set(self.noise_modes) - {'none'})}: "
                              "with sigma 0 they are the plain ResNet (the papers use 0.5)")
        if self.paired:
            if "none" not in self.noise_modes or len(self.noise_modes) < 2:
                raise ConfigError("--paired fine-tunes the noisy models from the plain one: --noise-modes must include "
                                  f"none and another mode, got {list(self.noise_modes)}")
            if not isinstance(self.finetune_epochs, int) or isinstance(self.finetune_epochs, bool) \
                    or self.finetune_epochs < 1:
                raise ConfigError("--paired needs --finetune-epochs N (an integer >= 1): the epochs of each noisy "
                                  f"model's fine-tune from the plain model, got {self.finetune_epochs!r}")
            if "://" in self.storage:
                raise ConfigError(f"--paired reads the plain models' checkpoints as files: --storage must be a local "
                                  f"or NFS path that every node sees, not {self.storage!r}")
        elif self.finetune_epochs is not None:
            raise ConfigError("--finetune-epochs applies to --paired grids only: add --paired or drop it")

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @property
    def grid_size(self) -> int:
        return len(self.archs) * len(self.noise_modes) * len(self.seeds)

    def param_space(self) -> dict[str, Any]:
        """Tune's grid, in the flat param names of :meth:`TrialConfig.with_params`."""
        from ray import tune

        return {"seed": tune.grid_search(list(self.seeds)), "arch": tune.grid_search(list(self.archs)),
                "noise_mode": tune.grid_search(list(self.noise_modes))}

    def parent_params(self) -> dict[str, Any]:
        """The parent run's params: the base trial's, with the grid's axes (comma-separated) and repeats."""
        paired = {"paired": "true", "finetune_epochs": self.finetune_epochs} if self.paired else {"paired": "false"}
        return dict(self.base.to_params(), arch=",".join(self.archs), noise_mode=",".join(self.noise_modes),
                    seed=",".join(map(str, self.seeds)), repeats=self.repeats, **paired)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaperTablesConfig:
        return cls(**dict(data, base=TrialConfig.from_dict(data["base"])))


def build_grid_tuner(cfg: PaperTablesConfig, tracker: dict[str, str], resume: bool,
                     param_space: dict[str, Any] | None = None, trials: int | None = None,
                     retry_errored: bool = True):
    """A new ``Tuner`` over the grid (or over ``param_space``, ``trials`` trials), or (``resume``) the one
    restored from its experiment directory, errored trials run again unless not ``retry_errored``."""
    from ray import tune

    from nsde_ray import sweep as sweeps

    trainable = sweeps.trial_trainable(cfg, tracker, repeats=cfg.repeats)
    if resume:
        return sweeps.restore_tuner(cfg, trainable, retry_errored)
    return tune.Tuner(
        trainable, param_space=param_space or cfg.param_space(),
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False,
                                    max_concurrent_trials=cfg.max_concurrent or sweeps.default_max_concurrent(cfg)),
        run_config=sweeps.run_config(cfg, sweeps.ProgressCallback(tracker, trials or cfg.grid_size)))


def model_results(tracking) -> list[tables.ModelResult]:
    """The grid's finished models, from the parent's MLflow child runs (a resumed grid included)."""
    from nsde_ray.tracking import STATUS

    return [tables.ModelResult(run.data.params["arch"], run.data.params["noise_mode"], int(run.data.params["seed"]),
                               run_metrics(run))
            for run in tracking.trial_runs() if run.data.tags.get(STATUS) == "finished"]


def run_metrics(run) -> dict[str, float]:
    """An MLflow run's metrics, with ``effective_sigma`` (:func:`tables.effective_sigma`) where it logged noise_energy."""
    metrics = dict(run.data.metrics)
    if "noise_energy" in metrics:
        metrics["effective_sigma"] = tables.effective_sigma(float(run.data.params["noise_sigma"]),
                                                            metrics["noise_energy"])
    return metrics


def write_tables(report: list[tables.Table], header: str, out_dir: str) -> str:
    """Each table as ``<name>.md`` and ``<name>.csv``, all of them in :data:`REPORT_FILE`; returns the report's text."""
    os.makedirs(out_dir, exist_ok=True)
    text = header + "\n" + "\n".join(table.markdown() for table in report)
    for table in report:
        for suffix, content in ((".md", table.markdown()), (".csv", table.csv())):
            with open(os.path.join(out_dir, table.name + suffix), "w", newline="") as handle:
                handle.write(content)
    with open(os.path.join(out_dir, REPORT_FILE), "w") as handle:
        handle.write(text)
    return text


def protocol(cfg: PaperTablesConfig, finished: int) -> str:
    """What the tables measured, in a sentence: the header of the report."""
    base = cfg.base
    return (f"{finished} of {cfg.grid_size} models finished: {', '.join(cfg.archs)} on {base.data.dataset}, "
            f"noise modes {', '.join(cfg.noise_modes)} (sigma {base.noise.sigma}), seeds "
            f"{', '.join(map(str, cfg.seeds))}, {base.train.epochs} epochs"
            + (f" for the plain models, each noisy model fine-tuned from the plain model of its seed for "
               f"{cfg.finetune_epochs} epochs (paired)" if cfg.paired else "")
            + f". Each model evaluated {cfg.repeats} times "
            f"on {base.eval.num_images} correctly classified test images (evaluation seeds {base.eval.seed} to "
            f"{base.eval.seed + cfg.repeats - 1}): IG {base.eval.n_steps} steps, IG + NT {base.eval.nt_samples} "
            f"samples, DeepSHAP {base.eval.deepshap_baselines} baselines, sensitivity radius "
            f"{base.eval.sensitivity_radius} with {base.eval.n_perturbations} perturbations. A cell is the mean over "
            "seeds of each model's mean over repeats; ± is the std across seeds.\n")


# --- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m sweeps.{COMMAND}",
        description="Reproduce the papers' tables (IJCAI 2021 Tables 1-3, AAAI 2022 Tables 1 and 2) on your data "
                    "and architectures: a Ray Tune grid over architecture, noise mode and seed, each model evaluated "
                    "with every attribution method on 100 correctly classified images, 5 times; tables to the "
                    "terminal, as Markdown and CSV, and to MLflow. Resumable with --resume.",
        formatter_class=HelpFormatter)
    data = add_data_flags(parser)
    data.add_argument("--arch", nargs="+", default=[ModelConfig.arch],
                      help=f"architectures, each {ARCH_HELP} (default: the base config's model.arch)")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--noise-modes", nargs="+", default=list(NOISE_MODES), help="noise modes (table columns)")
    grid.add_argument("--sigma", type=float, default=REFERENCE_SIGMA,
                      help="normalised noise magnitude of the gaussian and attribution models (the papers' 0.5)")
    grid.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                      help="training seeds; each (arch, noise mode) is trained once per seed")
    grid.add_argument("--repeats", type=int, default=PAPER_REPEATS,
                      help="evaluations of each model, each on a new seeded set of --eval-images images")
    grid.add_argument("--paired", action="store_true",
                      help="train the plain model (none) of each arch and seed first, then fine-tune every other "
                           "noise mode from its final weights for --finetune-epochs; adds the paired-differences "
                           "table (noisy minus plain per seed, paired t-test)")
    grid.add_argument("--finetune-epochs", type=int, default=None, help="epochs of each noisy fine-tune (--paired)")
    train = add_training_flags(parser, lr_help="learning rate", eval_images=PAPER_IMAGES, eval_methods=PAPER_METHODS)
    train.add_argument("--ig-steps", type=int, default=EvalConfig.n_steps, help="IG (and IG + NT) integration points")
    train.add_argument("--nt-samples", type=int, default=EvalConfig.nt_samples, help="IG + NT (SmoothGrad) samples")
    train.add_argument("--perturbations", type=int, default=EvalConfig.n_perturbations,
                       help="perturbations per image of max-sensitivity")
    train.add_argument("--shap-baselines", type=int, default=EvalConfig.deepshap_baselines,
                       help="training images in DeepSHAP's baseline distribution")
    run = add_run_flags(parser, command=COMMAND,
                        smoke_help=f"a tiny grid for CI: the first arch and seed, {SMOKE_EPOCHS} epoch, "
                                   f"{SMOKE_REPEATS} repeats of {SMOKE_EVAL['num_images']} images")
    run.add_argument("--out-dir", default=None, help="where the tables are written (default: tables/NAME here)")
    add_config_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace, name: str, storage: str) -> PaperTablesConfig:
    """The validated grid the flags describe; raises ConfigError, DataError or WeightsError."""
    base = trial_config_from_args(args, SHORTCUTS)
    archs = args.arch if "arch" in args.given else [base.model.arch]
    seeds, repeats = args.seeds, args.repeats
    if args.smoke_test:
        base = replace(base, train=capped(base.train, {"epochs": SMOKE_EPOCHS}), eval=capped(base.eval, SMOKE_EVAL),
                       shaping=SMOKE_SHAPING)
        archs, seeds, repeats = archs[:1], seeds[:1], min(repeats, SMOKE_REPEATS)
    base = replace(base, model=replace(base.model, arch=archs[0]), train=replace(base.train, seed=seeds[0]))
    finetune_epochs = args.finetune_epochs
    if args.smoke_test and finetune_epochs is not None:
        finetune_epochs = min(finetune_epochs, SMOKE_EPOCHS)
    cfg = PaperTablesConfig(name=name, storage=storage, base=base, archs=tuple(archs),
                            noise_modes=tuple(args.noise_modes), seeds=tuple(seeds), repeats=repeats,
                            max_concurrent=args.max_concurrent, tracking_uri=args.tracking_uri, paired=args.paired,
                            finetune_epochs=finetune_epochs)
    check_trial(cfg.base, cfg.archs)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from nsde_ray import sweep as sweeps
    from nsde_ray.tracking import ui_command

    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        cfg, tracking = open_run(args, command=COMMAND, kind=KIND, from_args=config_from_args,
                                 from_dict=PaperTablesConfig.from_dict, parent_params=PaperTablesConfig.parent_params,
                                 resume_fields=RESUME_FIELDS)
    except usage_errors() as err:
        fail(parser, str(err))
    if args.resume:
        print(f"[nsde-ray] resuming paper tables {cfg.name!r} with its stored settings; errored trials "
              + ("stay as they are" if args.no_retry_errored else "run again from their latest checkpoints"),
              flush=True)
    else:
        tracking.client.set_tag(tracking.parent_run_id, KIND_TAG, KIND)

    started = time.perf_counter()
    init_ray(args.address)
    print(f"[nsde-ray] paper tables {cfg.name!r}: {cfg.grid_size} models ({', '.join(cfg.archs)} x "
          f"{', '.join(cfg.noise_modes)} x seeds {', '.join(map(str, cfg.seeds))}) on {cfg.base.data.dataset}, "
          f"{cfg.base.train.epochs} epochs each, then {', '.join(cfg.base.eval.methods)} on "
          f"{cfg.base.eval.num_images} images x {cfg.repeats} repeats; Tune state in {sweeps.experiment_path(cfg)}; "
          f"MLflow {cfg.tracking_uri}, experiment {cfg.experiment_name!r}", flush=True)
    if cfg.paired:
        from nsde_ray import paired

        grid = paired.run(cfg, tracking, retry_errored=not args.no_retry_errored)
    else:
        grid = build_grid_tuner(cfg, tracking.describe(), resume=args.resume,
                                retry_errored=not args.no_retry_errored).fit()
    results = model_results(tracking)
    report = tables.paper_tables(results, list(cfg.archs), list(cfg.base.eval.methods))
    if cfg.paired:
        report.append(tables.paired_table(results, list(cfg.archs), list(cfg.base.eval.methods)))
    out_dir = os.path.abspath(args.out_dir or os.path.join("tables", cfg.name))
    text = write_tables(report, protocol(cfg, len(results)), out_dir)
    tracking.client.log_artifacts(tracking.parent_run_id, out_dir, TABLES_DIR)
    tracking.finish_sweep()
    errors = sum(result.error is not None for result in grid)
    print(f"\n[nsde-ray] paper tables {cfg.name!r} done in {time.perf_counter() - started:.0f} s: {len(grid)} trials, "
          f"{len(results)} evaluated, {errors} failed\n")
    print(text)
    print(f"[nsde-ray] tables written to {out_dir} (Markdown and CSV) and logged to the parent run "
          f"{tracking.parent_run_id} under {TABLES_DIR}/; browse: {ui_command(tracking.tracking_uri)}")
    print(f"[nsde-ray] resume or re-render: python -m sweeps.{COMMAND} --name {cfg.name} "
          f"--storage {resolve_storage(args.storage)} --resume")
    return 0 if results else 1
