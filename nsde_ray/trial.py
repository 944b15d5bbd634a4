"""One trial: a configuration trained and evaluated with each of its seeds, logged to MLflow.

:func:`trial_trainable` is Tune's trainable for both commands. Per seed, :func:`run_seed` trains
(:func:`train_seed`) and evaluates the final checkpoint (:func:`evaluate_checkpoint`), then logs
everything to the seed's MLflow run; per-epoch metrics go to MLflow as they come
(:class:`EpochLogger`). :func:`run_trial` aggregates the seeds and reports to Tune
(:func:`reported_metrics`).

Two paths, by :attr:`TrainConfig.in_trial_process`:

- one worker (the default): training and evaluation run in the trial's own process, which holds
  the worker's resources. No Ray Train controller or worker process and no evaluation task start,
  which saves most of a seed's overhead; Tune retries a failed trial from the latest checkpoint.
- several DDP workers (or ``single_process`` off): a ``TorchTrainer`` trains (its controller
  calls the :class:`EpochLogger`; Ray Train retries worker failures), and a Ray task holding
  one worker's resources evaluates.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from nsde_ray.aggregate import aggregate_seeds
from nsde_ray.config import DataConfig, TrainConfig, TrialConfig
from nsde_ray.lifecycle import RunSettings, SweepError, train_storage
from nsde_ray.logs import configure, ray_log_level
from nsde_ray.mlflow_uri import tracking_warning
from nsde_ray.registry import ACCURACY, injects_noise, objective_names
from nsde_ray.tracking import MODEL_DIR, SEARCHED_TAG, SweepTracker

if TYPE_CHECKING:
    from nsde_ray.train import TrainOutcome

TRIAL_DRIVER_MEMORY = 256 * 1024**2  # bytes

log = logging.getLogger(__name__)

PENDING_EPOCHS = 32  # epochs an EpochLogger holds while MLflow fails; beyond that the oldest are dropped


class EpochLogger(ray.train.UserCallback):
    """Runs on the Train controller: each epoch's rank-0 metrics to the trial's MLflow run, and a progress line.

    Ray does not retry the Train controller, so nothing here raises: an MLflow error (a tracking
    server down for longer than the client's retries) is printed as a warning, once per run, and
    the epoch's metrics wait in a buffer of at most :data:`PENDING_EPOCHS` epochs that the next
    call logs first. What still waits when training ends is logged by the trial's driver from the
    run's kept reports (:meth:`SweepTracker.log_missing_epochs`, before the run is finished).
    A run in the trial's own process calls :meth:`log` directly.
    """

    def __init__(
        self, tracker_ids: dict[str, str], run_id: str, label: str, epochs: int, log_level: int = logging.INFO
    ) -> None:
        self.tracker, self.run_id, self.label, self.epochs = tracker_ids, run_id, label, epochs
        self.log_level = log_level
        self._client: SweepTracker | None = None
        self._pending: collections.deque = collections.deque(maxlen=PENDING_EPOCHS)
        self._warned = False

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.log(metrics[0])

    def log(self, metrics: dict[str, Any]) -> None:
        """One epoch's (rank 0's) report: to MLflow, or to the buffer while MLflow fails; never raises."""
        try:
            epoch_metrics = dict(metrics)
            epoch = int(epoch_metrics["epoch"])
            self._pending.append([epoch, epoch_metrics, False])  # [epoch, metrics, metrics logged]
            self.flush()
            configure(self.log_level).info(
                f"{self.label} epoch {epoch}/{self.epochs}: train_loss={epoch_metrics['train_loss']:.4f} "
                f"val_accuracy={epoch_metrics['val_accuracy']:.4f}"
            )
        except Exception as err:  # a malformed report: never fail the Train run over logging
            self._warn(err)

    def flush(self) -> bool:
        """Log the waiting epochs, oldest first; False (after a warning, the first time) if MLflow fails."""
        try:
            if self._client is None:
                self._client = SweepTracker(**self.tracker)
            while self._pending:
                entry = self._pending[0]
                epoch, epoch_metrics, logged = entry
                if not logged:
                    self._client.log_epoch(self.run_id, epoch_metrics, epoch)
                    entry[2] = True
                self._client.add_train_node(self.run_id, epoch_metrics.get("node_id", ""))
                self._pending.popleft()
            return True
        except Exception as err:  # MLflow raises many kinds (connection, HTTP, database)
            self._warn(err)
            return False

    @property
    def pending(self) -> list[int]:
        """The epochs that wait to be logged."""
        return [entry[0] for entry in self._pending]

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            configure(self.log_level).warning(
                tracking_warning(
                    f"{self.label}: cannot log epoch metrics to MLflow (keeping up to {PENDING_EPOCHS} epochs to log "
                    "when it answers again)",
                    err,
                    self.tracker.get("tracking_uri"),
                )
            )


def evaluate_checkpoint(
    checkpoint: ray.train.Checkpoint, cfg: TrialConfig, use_gpu: bool, repeats: int = 1
) -> tuple[dict, dict[str, bytes]]:
    """Evaluate a trial's final checkpoint; returns (metrics, {artifact path: bytes}) including the model file.

    ``repeats`` > 1 repeats the evaluation on new seeded image sets (:func:`evaluate_repeated`).
    Runs where one worker's resources are held (the trial itself for a one-worker run, else a Ray task that
    takes them), so evaluation is accounted like training.
    """
    from nsde_ray.data import build_datasets
    from nsde_ray.evaluate import evaluate_repeated
    from nsde_ray.explain import export_model
    from nsde_ray.train import load_trained_model

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    with checkpoint.as_directory() as checkpoint_dir, tempfile.TemporaryDirectory() as out_dir:
        model, _ = load_trained_model(checkpoint_dir)
        splits = build_datasets(cfg.data)
        result = evaluate_repeated(model, splits, cfg.eval, repeats, out_dir=out_dir, device=device, progress=False)
        export_model(checkpoint_dir, splits, os.path.join(out_dir, MODEL_DIR), seed=cfg.eval.seed)
        files = {}
        for folder, _, names in os.walk(out_dir):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, out_dir)] = handle.read()
    metrics = dict(result.metrics, eval_time_s=time.perf_counter() - started)
    return metrics, files


def run_trial(
    config: dict,
    base: dict,
    storage_path: str,
    tracker_ids: dict,
    repeats: int = 1,
    seeds_per_config: int = 1,
    log_level: int = logging.INFO,
) -> None:
    """Tune's trainable: one configuration, trained and evaluated with each of its seeds, reported to Tune.

    ``config`` holds the trial's params, applied to ``base`` (:meth:`TrialConfig.to_dict`);
    ``storage_path`` is where its Train runs keep checkpoints; ``repeats`` as
    :func:`evaluate_checkpoint`. With ``seeds_per_config`` K > 1 the configuration is trained with
    training seeds ``seed``, ..., ``seed + K - 1`` one after another, each a full run of its own
    (:func:`run_seed`, a nested MLflow run); the trial's run holds their means, stds and standard
    errors (:func:`nsde_ray.tracking.aggregate_seeds`), and Tune sees the means. With K = 1 the
    trial's run is the seed's run. A run already finished (a seed finished after the sweep state
    was last saved, then the driver died, or a retried trial) reports its stored metrics instead
    of running again, so a resumed sweep trains only its unfinished seeds. ``log_level``: this
    process's (and its Train runs') :mod:`nsde_ray.logs` level. Every run's params are the config's
    (:meth:`TrialConfig.to_params`) and :func:`resolved_params`.
    """
    configure(log_level)
    started = time.perf_counter()
    cfg = trial_config(TrialConfig.from_dict(base), config)
    trial_id = tune.get_context().get_trial_id()
    tracker = SweepTracker(**tracker_ids)
    resolved = resolved_params(cfg.data)
    run_id, status = tracker.open_trial(trial_id, dict(cfg.to_params(), seeds_per_config=seeds_per_config, **resolved))
    if status in ("finished", "diverged"):
        tune.report(reported_metrics(tracker.finished_metrics(run_id), diverged=status == "diverged"))
        return
    tracker.client.set_tag(run_id, SEARCHED_TAG, json.dumps(config, sort_keys=True))
    label = f"trial {trial_id} ({_describe(config)})"
    if seeds_per_config == 1:
        status, final = run_seed(cfg, tracker, run_id, f"trial_{trial_id}", label, storage_path, repeats, log_level)
        tune.report(reported_metrics(final, diverged=status == "diverged"))
        return
    outcomes = [
        train_seed_run(
            cfg,
            tracker,
            run_id,
            trial_id,
            index,
            f"{label} seed {index + 1}/{seeds_per_config}",
            storage_path,
            repeats,
            log_level,
        )
        for index in range(seeds_per_config)
    ]
    final = finish_configuration(tracker, run_id, outcomes, label)
    final["trial_wall_s"] = time.perf_counter() - started
    tracker.client.log_metric(run_id, "trial_wall_s", final["trial_wall_s"])
    tune.report(reported_metrics(final, diverged=final["diverged"] > 0))


def train_seed_run(
    cfg: TrialConfig,
    tracker: SweepTracker,
    run_id: str,
    trial_id: str,
    index: int,
    label: str,
    storage_path: str,
    repeats: int,
    log_level: int,
) -> tuple[str, dict[str, float]]:
    """Seed ``index`` of the configuration ``cfg`` (training seed ``cfg.train.seed + index``), a run nested under
    its run ``run_id``: trained and evaluated unless it has finished already. (status, its final metrics)."""
    seed_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + index))
    params = dict(seed_cfg.to_params(), **resolved_params(cfg.data))
    seed_run, status = tracker.open_seed(run_id, trial_id, index, params)
    if status not in ("finished", "diverged"):
        status, _ = run_seed(
            seed_cfg, tracker, seed_run, f"trial_{trial_id}_seed{index}", label, storage_path, repeats, log_level
        )
    return status, tracker.finished_metrics(seed_run)


def finish_configuration(
    tracker: SweepTracker, run_id: str, outcomes: list[tuple[str, dict[str, float]]], label: str
) -> dict[str, float]:
    """The configuration's run from its seeds' ``outcomes`` ((status, metrics) each): the means, spreads and
    ``seeds`` (:func:`nsde_ray.aggregate.aggregate_seeds`), ``diverged`` (1 if a seed diverged), its status.
    Called again as seeds are added: the aggregates are logged anew."""
    diverged = any(status == "diverged" for status, _ in outcomes)
    final = dict(aggregate_seeds([metrics for _, metrics in outcomes]), diverged=float(diverged))
    tracker.finish_trial(
        run_id,
        "diverged" if diverged else "finished",
        final,
        error="a seed's training loss became non-finite" if diverged else None,
    )
    if not diverged:
        log.info(
            f"{label} finished over {len(outcomes)} seeds: "
            + ", ".join(
                f"{name}={final[name]:.4g} ± {final.get(f'{name}_se', math.nan):.2g}"
                for name in objective_names()
                if name in final
            )
        )
    return final


def resolved_params(data: DataConfig) -> dict[str, Any]:
    """The data values a trial trains with where its config may say ``None`` or ``auto``, as MLflow params.

    ``resolved_image_size`` (px), ``resolved_recipe`` (evaluation view and normalisation: ``cifar``,
    ``imagenet``, or ``none`` for in-memory tensors), ``resolved_augmentation`` (``cifar``, ``imagenet`` or
    ``none``), ``resolved_mean`` and ``resolved_std`` (the normalisation, per channel, comma-separated), as
    :func:`nsde_ray.data.resolve_data` finds them without decoding the data set. Logged when a trial's or
    seed's run is created only: MLflow params cannot change, and a resumed trial reopens its runs.
    """
    from nsde_ray.data import resolve_data

    resolved = resolve_data(data)
    return {
        "resolved_image_size": resolved.image_size,
        "resolved_recipe": resolved.recipe,
        "resolved_augmentation": resolved.augmentation,
        "resolved_mean": _channels(resolved.mean),
        "resolved_std": _channels(resolved.std),
    }


def _channels(values: tuple[float, ...]) -> str:
    return ",".join(f"{value:.6g}" for value in values)


def run_seed(
    cfg: TrialConfig,
    tracker: SweepTracker,
    run_id: str,
    train_name: str,
    label: str,
    storage_path: str,
    repeats: int,
    log_level: int = logging.INFO,
) -> tuple[str, dict[str, float]]:
    """Train and evaluate one seed of a configuration, logged to ``run_id``: (status, final metrics).

    ``train_name`` names its training run, stable across restarts, so a retried seed continues from
    its latest checkpoint. Status is ``finished`` or ``diverged``; a failure marks the run failed
    and raises :class:`SweepError`.
    """
    started = time.perf_counter()
    logger = EpochLogger(tracker.describe(), run_id, label, cfg.train.epochs, log_level)
    try:
        outcome, fit_s = train_seed(cfg, train_name, storage_path, logger, log_level)
    except Exception as err:  # Ray Train's TrainingFailedError, or the loop's own error in this process
        tracker.finish_trial(run_id, "failed", {}, error=f"{type(err).__name__}: {err}")
        raise SweepError(f"{label} failed in training: {err}") from err
    tracker.log_missing_epochs(run_id, [m for m in outcome.reports if "epoch" in m])  # what EpochLogger could not
    train_metrics = outcome.metrics
    if train_metrics.get("diverged"):
        tracker.finish_trial(run_id, "diverged", {}, error="non-finite training loss")
        log.info(f"{label} diverged (non-finite loss) at epoch {train_metrics.get('epoch')}")
        return "diverged", train_metrics
    eval_started = time.perf_counter()
    try:
        if cfg.train.in_trial_process:  # the trial holds one worker's resources already
            eval_metrics, files = evaluate_checkpoint(outcome.checkpoint, cfg, cfg.train.use_gpu, repeats)
        else:  # outside the trial's placement group (which holds no CPU): the task takes one worker's resources
            resources = dict(
                num_cpus=cfg.train.cpus_per_worker,
                num_gpus=cfg.train.gpu_request,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
            )
            eval_metrics, files = ray.get(
                ray.remote(evaluate_checkpoint)
                .options(**resources)
                .remote(outcome.checkpoint, cfg, cfg.train.use_gpu, repeats)
            )
    except Exception as err:  # the evaluation's error (re-raised by ray.get for the task)
        tracker.finish_trial(run_id, "failed", {}, error=f"evaluation: {err}")
        raise SweepError(f"{label} failed in evaluation: {err}") from err
    final = {key: value for key, value in train_metrics.items() if isinstance(value, (int, float))}
    final.update(eval_metrics)
    # Where the overhead goes: starting the training (with Ray Train: controller, workers, process group)
    # and its per-epoch checkpoints, starting the evaluation (a task's process, imports; data), MLflow logging.
    final["train_startup_s"] = fit_s - final.get("train_time_s", 0.0)
    final["eval_startup_s"] = time.perf_counter() - eval_started - final["eval_time_s"]
    final["trial_wall_s"] = time.perf_counter() - started
    final["overhead_s"] = final["trial_wall_s"] - final.get("train_time_s", 0.0) - final["eval_time_s"]
    logging_started = time.perf_counter()
    with tempfile.TemporaryDirectory() as artifact_dir:
        for relative, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(artifact_dir, relative)), exist_ok=True)
            with open(os.path.join(artifact_dir, relative), "wb") as handle:
                handle.write(data)
        # the per-epoch metrics (train_loss, val_accuracy, ...) are in the run already, from EpochLogger
        tracker.finish_trial(
            run_id, "finished", {k: v for k, v in final.items() if k not in train_metrics}, artifact_dir
        )
    final["logging_s"] = time.perf_counter() - logging_started
    tracker.client.log_metric(run_id, "logging_s", final["logging_s"])
    log.info(
        f"{label} finished: "
        + " ".join(f"{name}={final.get(name, math.nan):.4g}" for name in objective_names())
        + f" ({final['trial_wall_s']:.0f} s: train {final.get('train_time_s', 0.0):.0f}, "
        f"eval {final['eval_time_s']:.0f}, overhead {final['overhead_s']:.0f}: Train start-up "
        f"{final['train_startup_s']:.0f}, eval start-up {final['eval_startup_s']:.0f}, "
        f"logging {final['logging_s']:.0f})"
    )
    return "finished", final


def train_seed(
    cfg: TrialConfig, train_name: str, storage_path: str, logger: EpochLogger, log_level: int
) -> tuple[TrainOutcome, float]:
    """Train one seed of a configuration: (outcome, seconds). In this process for a one-worker run
    (:attr:`TrainConfig.in_trial_process`), else with a ``TorchTrainer``; either way from the latest
    checkpoint of ``(storage_path, train_name)`` if it has one. Raises what the training raised."""
    from nsde_ray.train import TrainOutcome, build_trainer, fit_single_worker

    started = time.perf_counter()
    if cfg.train.in_trial_process:
        outcome = fit_single_worker(cfg, name=train_name, storage_path=storage_path, on_report=logger.log)
        return outcome, time.perf_counter() - started
    trainer = build_trainer(
        cfg, name=train_name, storage_path=storage_path, callbacks=[logger], train_log_level=ray_log_level(log_level)
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return TrainOutcome.from_result(result), time.perf_counter() - started


def reported_metrics(metrics: dict[str, float], diverged: bool) -> dict[str, float]:
    """What Tune and Optuna see: the objectives (first, so that Tune's progress table shows them), their
    standard errors, ``seeds`` and ``diverged``; every other metric is in MLflow only, which keeps
    Tune's console short. A diverged trial's robustness objectives (all but accuracy) are NaN.

    An objective that is missing (a non-finite value is not logged to MLflow, so a stored run lacks it)
    is reported as NaN, which Optuna records as a failed point.
    """

    def number(name: str) -> float:
        value = metrics.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    reported = {name: number(name) for name in objective_names()}
    if diverged:
        reported.update({name: math.nan for name in objective_names() if name != ACCURACY})
    reported.update({f"{name}_se": number(f"{name}_se") for name in objective_names() if f"{name}_se" in metrics})
    reported.update(seeds=number("seeds") if "seeds" in metrics else 1.0, diverged=float(diverged))
    return reported


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in sorted(params.items())
    )


def trial_config(base: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    """The base config with a trial's searched params; the modes without noise (the plain ResNet, the robust-training
    baselines) get sigma 0 so that their params say so."""
    params = dict(params)
    if not injects_noise(params.get("noise_mode", base.noise.mode)):
        params["noise_sigma"] = 0.0
    return base.with_params(params)


def trial_trainable(
    cfg: RunSettings,
    tracker_ids: dict[str, str],
    repeats: int = 1,
    seeds_per_config: int = 1,
    log_level: int = logging.INFO,
):
    """:func:`run_trial` over ``cfg.base`` as Tune's trainable.

    A trial that trains in its own process (:attr:`TrainConfig.in_trial_process`) asks Tune for one
    worker's resources (CPUs, and a GPU with ``use_gpu``) and evaluates there too. Otherwise it asks
    for no CPU of its own (only a nominal memory reservation, as Tune refuses an empty request): its
    ``TorchTrainer`` workers and the evaluation task hold the resources, so N trials fit on the N
    workers' CPUs without a deadlock.
    """
    return sweep_trainable(run_trial, cfg, tracker_ids, log_level, repeats=repeats, seeds_per_config=seeds_per_config)


def sweep_trainable(function, cfg: RunSettings, tracker_ids: dict[str, str], log_level: int, **params):
    """``function`` (a Tune trainable of this module's kind) with the base trial, its Train runs' storage, the
    tracker's ids, ``log_level`` and ``params`` bound, asking for a trial's resources (:func:`with_trial_resources`)."""
    trainable = tune.with_parameters(
        function,
        base=cfg.base.to_dict(),
        storage_path=train_storage(cfg),
        tracker_ids=tracker_ids,
        log_level=log_level,
        **params,
    )
    return with_trial_resources(trainable, cfg.base.train)


def with_trial_resources(trainable, train: TrainConfig):
    """``trainable`` with the resources a trial of ``train`` asks Tune for (see :func:`trial_trainable`)."""
    if train.in_trial_process:
        return tune.with_resources(
            trainable, {"CPU": train.cpus_per_worker, "GPU": train.gpu_request, "memory": TRIAL_DRIVER_MEMORY}
        )
    return tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
