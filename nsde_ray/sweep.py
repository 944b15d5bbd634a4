"""Tune's side of both commands: the search space and searcher, the driver's callbacks, the Tuners.

Data flow: :class:`SweepConfig` -> ``Tuner`` with a multi-objective ``OptunaSearch`` (maximise
``val_accuracy``, minimise ``sensitivity``, maximise ``sic``) behind a ``ConcurrencyLimiter`` ->
per trial :func:`nsde_ray.trial.run_trial` (training, evaluation, MLflow) -> as trials finish,
:class:`FrontCallback` on the driver recomputes the Pareto front, its tags and its files. The
papers' tables run the same trials over a grid (:func:`build_grid_tuner`).

Sampler: Optuna's TPE in its multi-objective form (MOTPE). NSGA-II needs a population (50 by
default) before selection does anything, more trials than a sweep of tens affords; TPE models
the non-dominated trials from the first ten or so. ``constant_liar`` keeps concurrent trials from
being suggested the same point; ``multivariate`` + ``group`` model the conditional space (the
shaping parameters exist for ``attribution`` trials only).

No early stopping: OptunaSearch takes no intermediate results for several objectives, and a
stopped trial would enter the front with half-trained metrics.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import ray
from ray import tune

from nsde_ray.config import REFERENCE_SIGMA, PaperTablesConfig, SearchSpace, SweepConfig
from nsde_ray.lifecycle import RunSettings, experiment_path
from nsde_ray.logs import configure, tune_verbosity
from nsde_ray.mlflow_uri import tracking_warning
from nsde_ray.registry import NOISE_MODES, objective_directions
from nsde_ray.tracking import SweepTracker
from nsde_ray.trial import trial_trainable

log = logging.getLogger(__name__)


class DefineSpace:
    """Optuna define-by-run search space (see :class:`SearchSpace`); picklable, for the searcher's checkpoints."""

    def __init__(self, space: SearchSpace, epochs: int) -> None:
        self.space, self.epochs = space, epochs

    def __call__(self, trial) -> None:
        space = self.space
        mode = trial.suggest_categorical("noise_mode", list(space.modes()))
        for param in NOISE_MODES[mode].params:
            bounds = space.bounds(param.bounds, self.epochs)
            if param.kind == "categorical":
                trial.suggest_categorical(param.name, list(bounds))
            elif param.kind == "int":
                trial.suggest_int(param.name, *bounds)
            else:
                trial.suggest_float(param.name, *bounds, log=param.log)
        trial.suggest_float("lr", *space.lr_range, log=True)


def reference_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The plain ResNet and the papers' setting (gaussian, sigma 0.5), at the base learning rate, where searched."""
    points = [
        {"noise_mode": "none", "lr": cfg.base.train.lr},
        {"noise_mode": "gaussian", "noise_sigma": REFERENCE_SIGMA, "lr": cfg.base.train.lr},
    ]
    return [point for point in points if point["noise_mode"] in cfg.space.modes()][: cfg.num_samples]


def build_searcher(cfg: SweepConfig, max_concurrent: int):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(
        seed=cfg.seed,
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=max(2, min(10, cfg.num_samples // 3)),
    )
    searcher = OptunaSearch(
        space=DefineSpace(cfg.space, cfg.base.train.epochs),
        metric=[name for name, _ in objective_directions()],
        mode=[mode for _, mode in objective_directions()],
        points_to_evaluate=reference_points(cfg),
        sampler=sampler,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


# --- the driver -----------------------------------------------------------------------------------


class ProgressCallback(tune.Callback):
    """On the driver: a progress line as trials finish; a trial that errors has its MLflow run marked failed.

    Runs inside Tune's own event handling, so it never raises: an MLflow error is printed as a
    warning and the sweep goes on (the run's status and the front catch up with the next trial).
    """

    def __init__(self, tracker_ids: dict[str, str], num_samples: int, log_level: int = logging.INFO) -> None:
        self.tracker, self.num_samples = tracker_ids, num_samples
        configure(log_level)

    def summary(self) -> str:
        """What the progress line adds after "N/M trials done"."""
        return ""

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        try:
            summary = self.summary()
        except Exception as err:  # MLflow raises many kinds; Tune must not see them
            log.warning(
                tracking_warning(f"trial {trial.trial_id}: cannot update MLflow", err, self.tracker.get("tracking_uri"))
            )
            summary = "; Pareto front not updated (MLflow error)"
        done = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id})
        log.info(f"{done}/{self.num_samples} trials done{summary}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        try:
            tracker = SweepTracker(**self.tracker)
            for run in tracker.trial_runs():
                if (
                    run.data.tags.get("nsde.trial_id") == trial.trial_id
                    and run.data.tags.get("nsde.status") == "running"
                ):
                    tracker.finish_trial(run.info.run_id, "failed", {}, error=str(trial.error_file or "trial error"))
        except Exception as err:  # as in on_trial_complete
            log.warning(
                tracking_warning(
                    f"trial {trial.trial_id} errored; cannot mark its MLflow run failed",
                    err,
                    self.tracker.get("tracking_uri"),
                )
            )
        self.on_trial_complete(iteration, trials, trial)


class FrontCallback(ProgressCallback):
    """On the driver: keep the Pareto front current in MLflow as trials finish or fail."""

    def summary(self) -> str:
        rows = SweepTracker(**self.tracker).update_front().rows
        return f"; Pareto front: {sum(r['pareto_front'] for r in rows)} of {len(rows)} evaluated configurations"


def default_max_concurrent(cfg: RunSettings) -> int:
    """Trials that fit at once in the connected cluster: each needs its DDP workers' CPUs (and GPUs)."""
    resources = ray.cluster_resources()
    train = cfg.base.train
    fits = int(resources.get("CPU", 1) // (train.num_workers * train.cpus_per_worker))
    if train.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // (train.num_workers * train.gpus_per_worker)))
    return max(1, fits)


def restore_tuner(cfg: RunSettings, trainable, retry_errored: bool = True) -> tune.Tuner:
    """The ``Tuner`` of ``cfg`` from its experiment directory: finished trials kept, unfinished ones resumed.

    ``retry_errored`` (``--resume``'s default; ``--no-retry-errored`` turns it off): trials that
    errored run again, from their Train runs' latest checkpoints, in their reopened MLflow runs
    (a failed run is not finished, so :meth:`SweepTracker.open_trial` reopens it); otherwise they
    stay errored.
    """
    return tune.Tuner.restore(
        experiment_path(cfg),
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=retry_errored,
        restart_errored=False,
    )


def run_config(cfg: RunSettings, callback: ProgressCallback, log_level: int = logging.INFO) -> tune.RunConfig:
    """Where Tune keeps ``cfg``'s state (``storage``/``name``), its progress callback and table
    (:func:`nsde_ray.logs.tune_verbosity`), and the retries of a failed trial: ``train.max_failures`` for
    trials that train in their own process (the only retries they get), one on top of Ray Train's for the rest."""
    train = cfg.base.train
    retries = train.max_failures if train.in_trial_process else 1
    return tune.RunConfig(
        name=cfg.name,
        storage_path=cfg.storage,
        verbose=tune_verbosity(log_level),
        callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=retries),
    )


def build_tuner(
    cfg: SweepConfig,
    tracker_ids: dict[str, str],
    resume: bool,
    retry_errored: bool = True,
    log_level: int = logging.INFO,
) -> tune.Tuner:
    """A new ``Tuner`` for the sweep ``cfg``, or (``resume``) the one restored from its experiment directory
    (``retry_errored``: as :func:`restore_tuner`)."""
    trainable = trial_trainable(cfg, tracker_ids, seeds_per_config=cfg.initial_seeds, log_level=log_level)
    if resume:
        return restore_tuner(cfg, trainable, retry_errored)
    max_concurrent = cfg.max_concurrent or default_max_concurrent(cfg)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(cfg, max_concurrent), num_samples=cfg.num_samples, reuse_actors=False
        ),
        run_config=run_config(cfg, FrontCallback(tracker_ids, cfg.num_samples, log_level), log_level),
    )


def build_grid_tuner(
    cfg: PaperTablesConfig,
    tracker_ids: dict[str, str],
    resume: bool,
    param_space: dict[str, Any] | None = None,
    trials: int | None = None,
    retry_errored: bool = True,
    log_level: int = logging.INFO,
) -> tune.Tuner:
    """A new ``Tuner`` over the grid ``cfg`` (or over ``param_space``, ``trials`` trials), or (``resume``) the
    one restored from its experiment directory, errored trials run again unless not ``retry_errored``."""
    trainable = trial_trainable(cfg, tracker_ids, repeats=cfg.repeats, log_level=log_level)
    if resume:
        return restore_tuner(cfg, trainable, retry_errored)
    grid = {"seed": list(cfg.seeds), "arch": list(cfg.archs), "noise_mode": list(cfg.noise_modes)}
    return tune.Tuner(
        trainable,
        param_space=param_space or {name: tune.grid_search(values) for name, values in grid.items()},
        tune_config=tune.TuneConfig(
            num_samples=1, reuse_actors=False, max_concurrent_trials=cfg.max_concurrent or default_max_concurrent(cfg)
        ),
        run_config=run_config(cfg, ProgressCallback(tracker_ids, trials or cfg.grid_size, log_level), log_level),
    )
