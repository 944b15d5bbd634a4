"""The accuracy-vs-robustness sweep: Ray Tune + OptunaSearch over Ray Train trials, tracked in MLflow.

Data flow: :class:`SweepConfig` -> ``Tuner`` with a multi-objective ``OptunaSearch`` (maximise
``val_accuracy``, minimise ``sensitivity``, maximise ``sic``) behind a ``ConcurrencyLimiter`` ->
per trial :func:`run_trial`, which trains with a ``TorchTrainer`` (per-epoch metrics to MLflow by
:class:`EpochLogger` on the Train controller), evaluates the final checkpoint in a Ray task that
holds one worker's resources, and logs everything to the trial's nested MLflow run -> as trials
finish, :class:`FrontCallback` on the driver recomputes the Pareto front, its tags and its files.

Sampler: Optuna's TPE in its multi-objective form (MOTPE). NSGA-II needs a population (50 by
default) before selection does anything, more trials than a sweep of tens affords; TPE models
the non-dominated trials from the first ten or so. ``constant_liar`` keeps concurrent trials from
being suggested the same point; ``multivariate`` + ``group`` model the conditional space (the
shaping parameters exist for ``attribution`` trials only).

No early stopping: OptunaSearch takes no intermediate results for several objectives, and a
stopped trial would enter the front with half-trained metrics.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Protocol

import ray
import torch
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from nsde_ray.config import NOISE_MODES, REFERENCE_SIGMA, SearchSpace, SweepConfig, TrialConfig
from nsde_ray.pareto import OBJECTIVES
from nsde_ray.tracking import MODEL_DIR, SweepTracker, aggregate_seeds

SWEEP_FILE = "nsde_sweep.json"
TRAIN_DIR = "train"
TRIAL_DRIVER_MEMORY = 256 * 1024 ** 2  # bytes


class SweepError(RuntimeError):
    """A sweep that cannot start or resume as asked; the message says what to do."""


class DefineSpace:
    """Optuna define-by-run search space (see :class:`SearchSpace`); picklable, for the searcher's checkpoints."""

    def __init__(self, space: SearchSpace, epochs: int) -> None:
        self.space, self.epochs = space, epochs

    def __call__(self, trial) -> None:
        space = self.space
        mode = trial.suggest_categorical("noise_mode", list(NOISE_MODES))
        if mode != "none":
            trial.suggest_float("noise_sigma", *space.sigma_range)
        if mode == "attribution":
            warmup_max = self.epochs - 1 if space.warmup_epochs_max is None else space.warmup_epochs_max
            refresh_max = self.epochs if space.refresh_every_max is None else space.refresh_every_max
            trial.suggest_int("shaping_warmup_epochs", 0, max(0, min(warmup_max, self.epochs - 1)))
            trial.suggest_int("shaping_refresh_every", 1, max(1, refresh_max))
            trial.suggest_float("shaping_clip_percentile", *space.clip_range)
            trial.suggest_categorical("shaping_method", list(space.shaping_methods))
            trial.suggest_categorical("shaping_energy", list(space.shaping_energies))
        trial.suggest_float("lr", *space.lr_range, log=True)


def reference_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The plain ResNet and the papers' setting (gaussian, sigma 0.5), at the base learning rate."""
    points = [{"noise_mode": "none", "lr": cfg.base.train.lr},
              {"noise_mode": "gaussian", "noise_sigma": REFERENCE_SIGMA, "lr": cfg.base.train.lr}]
    return points[:cfg.num_samples]


def trial_config(base: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    """The base config with a trial's searched params; the plain ResNet gets sigma 0 so its params say so."""
    params = dict(params)
    if params.get("noise_mode") == "none":
        params["noise_sigma"] = 0.0
    return base.with_params(params)


def build_searcher(cfg: SweepConfig, max_concurrent: int):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, group=True, constant_liar=True,
                                         n_startup_trials=max(2, min(10, cfg.num_samples // 3)))
    searcher = OptunaSearch(space=DefineSpace(cfg.space, cfg.base.train.epochs),
                            metric=[name for name, _ in OBJECTIVES], mode=[mode for _, mode in OBJECTIVES],
                            points_to_evaluate=reference_points(cfg), sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


# --- one trial ------------------------------------------------------------------------------------

PENDING_EPOCHS = 32  # epochs an EpochLogger holds while MLflow fails; beyond that the oldest are dropped


class EpochLogger(ray.train.UserCallback):
    """Runs on the Train controller: each epoch's rank-0 metrics to the trial's MLflow run, and a progress line.

    Ray does not retry the Train controller, so nothing here raises: an MLflow error (a tracking
    server down for longer than the client's retries) is printed as a warning, once per run, and
    the epoch's metrics wait in a buffer of at most :data:`PENDING_EPOCHS` epochs that the next
    call logs first. What still waits when training ends is logged by the trial's driver from the
    Train result's kept reports (:func:`log_kept_epochs`, before the run is finished).
    """

    def __init__(self, tracker: dict[str, str], run_id: str, label: str, epochs: int) -> None:
        self.tracker, self.run_id, self.label, self.epochs = tracker, run_id, label, epochs
        self._client: SweepTracker | None = None
        self._pending: collections.deque = collections.deque(maxlen=PENDING_EPOCHS)
        self._warned = False

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        try:
            epoch_metrics = dict(metrics[0])
            epoch = int(epoch_metrics["epoch"])
            self._pending.append([epoch, epoch_metrics, False])  # [epoch, metrics, metrics logged]
            self.flush()
            print(f"[nsde-ray] {self.label} epoch {epoch}/{self.epochs}: train_loss={epoch_metrics['train_loss']:.4f} "
                  f"val_accuracy={epoch_metrics['val_accuracy']:.4f}", flush=True)
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
            _warn(f"{self.label}: cannot log epoch metrics to MLflow (keeping up to {PENDING_EPOCHS} epochs to log "
                  "when it answers again)", err, self.tracker.get("tracking_uri"))


def _warn(what: str, err: Exception, uri: str | None = None) -> None:
    """A warning on stderr that does not stop anything; ``uri``'s password is kept out of it."""
    from nsde_ray.tracking import redact

    print(f"[nsde-ray] warning: {what}: {redact(f'{type(err).__name__}: {err}', uri)}", file=sys.stderr, flush=True)


def log_kept_epochs(tracking: SweepTracker, run_id: str, result) -> None:
    """Log the epochs of a finished Train ``result`` (its last report and kept checkpoints) that the run lacks.

    The catch-up for :class:`EpochLogger`'s buffer: epochs it could not log before training ended.
    """
    reports = [metrics for _, metrics in (getattr(result, "best_checkpoints", None) or [])] + [result.metrics or {}]
    tracking.log_missing_epochs(run_id, [metrics for metrics in reports if "epoch" in metrics])


def evaluate_checkpoint(checkpoint: ray.train.Checkpoint, config: dict, use_gpu: bool,
                        repeats: int = 1) -> tuple[dict, dict[str, bytes]]:
    """Evaluate a trial's final checkpoint; returns (metrics, {artifact path: bytes}) including the model file.

    ``repeats`` > 1 repeats the evaluation on new seeded image sets (:func:`evaluate_repeated`).
    Runs as a Ray task holding one DDP worker's resources, so evaluation is accounted like training.
    """
    from nsde_ray.data import build_datasets
    from nsde_ray.evaluate import evaluate_repeated
    from nsde_ray.explain import export_model
    from nsde_ray.train import load_trained_model

    cfg = TrialConfig.from_dict(config)
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


def run_trial(config: dict, base: dict, storage_path: str, tracker: dict, repeats: int = 1,
              seeds_per_config: int = 1) -> None:
    """Tune's trainable: one configuration, trained and evaluated with each of its seeds, reported to Tune.

    ``config`` holds the trial's params, applied to ``base`` (:meth:`TrialConfig.to_dict`);
    ``storage_path`` is where its Train runs keep checkpoints; ``repeats`` as
    :func:`evaluate_checkpoint`. With ``seeds_per_config`` K > 1 the configuration is trained with
    training seeds ``seed``, ..., ``seed + K - 1`` one after another, each a full run of its own
    (:func:`run_seed`, a nested MLflow run); the trial's run holds their means, stds and standard
    errors (:func:`nsde_ray.tracking.aggregate_seeds`), and Tune sees the means. With K = 1 the
    trial's run is the seed's run. A run already finished (a seed finished after the sweep state
    was last saved, then the driver died, or a retried trial) reports its stored metrics instead
    of running again, so a resumed sweep trains only its unfinished seeds.
    """
    started = time.perf_counter()
    cfg = trial_config(TrialConfig.from_dict(base), config)
    trial_id = tune.get_context().get_trial_id()
    tracking = SweepTracker(**tracker)
    run_id, status = tracking.open_trial(trial_id, dict(cfg.to_params(), seeds_per_config=seeds_per_config))
    if status in ("finished", "diverged"):
        tune.report(_objectives(tracking.finished_metrics(run_id), diverged=status == "diverged"))
        return
    label = f"trial {trial_id} ({_describe(config)})"
    if seeds_per_config == 1:
        status, final = run_seed(cfg, tracking, run_id, f"trial_{trial_id}", label, storage_path, repeats)
        tune.report(_objectives(final, diverged=status == "diverged"))
        return
    outcomes = []
    for index in range(seeds_per_config):
        seed_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + index))
        seed_run, seed_status = tracking.open_seed(run_id, trial_id, index, seed_cfg.to_params())
        if seed_status not in ("finished", "diverged"):
            seed_status, _ = run_seed(seed_cfg, tracking, seed_run, f"trial_{trial_id}_seed{index}",
                                      f"{label} seed {index + 1}/{seeds_per_config}", storage_path, repeats)
        outcomes.append((seed_status, tracking.finished_metrics(seed_run)))
    diverged = any(seed_status == "diverged" for seed_status, _ in outcomes)
    final = aggregate_seeds([metrics for _, metrics in outcomes])
    final["trial_wall_s"] = time.perf_counter() - started
    tracking.finish_trial(run_id, "diverged" if diverged else "finished", final,
                          error="a seed's training loss became non-finite" if diverged else None)
    if not diverged:
        print(f"[nsde-ray] {label} finished over {seeds_per_config} seeds: "
              + ", ".join(f"{name}={final[name]:.4g} ± {final.get(f'{name}_se', math.nan):.2g}"
                          for name, _ in OBJECTIVES if name in final), flush=True)
    tune.report(_objectives(final, diverged=diverged))


def run_seed(cfg: TrialConfig, tracking: SweepTracker, run_id: str, train_name: str, label: str, storage_path: str,
             repeats: int) -> tuple[str, dict[str, float]]:
    """Train (Ray Train) and evaluate one seed of a configuration, logged to ``run_id``: (status, final metrics).

    ``train_name`` names its Train run, stable across restarts, so a retried seed continues from
    its latest checkpoint. Status is ``finished`` or ``diverged``; a failure marks the run failed
    and raises :class:`SweepError`.
    """
    from nsde_ray.train import build_trainer

    started = time.perf_counter()
    trainer = build_trainer(cfg, name=train_name, storage_path=storage_path,
                            callbacks=[EpochLogger(tracking.describe(), run_id, label, cfg.train.epochs)])
    fit_started = time.perf_counter()
    try:
        result = trainer.fit()
        error = result.error
    except ray.train.TrainingFailedError as err:
        result, error = None, err
    if error is not None:
        tracking.finish_trial(run_id, "failed", {}, error=f"{type(error).__name__}: {error}")
        raise SweepError(f"{label} failed in training: {error}")
    fit_s = time.perf_counter() - fit_started
    log_kept_epochs(tracking, run_id, result)  # what EpochLogger could not log while MLflow failed
    train_metrics = dict(result.metrics or {})
    if train_metrics.get("diverged"):
        tracking.finish_trial(run_id, "diverged", {}, error="non-finite training loss")
        print(f"[nsde-ray] {label} diverged (non-finite loss) at epoch {train_metrics.get('epoch')}", flush=True)
        return "diverged", train_metrics
    # Outside the trial's placement group (which holds no CPU): the task takes one worker's resources.
    resources = dict(num_cpus=cfg.train.cpus_per_worker, num_gpus=1 if cfg.train.use_gpu else 0,
                     scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    eval_started = time.perf_counter()
    try:
        eval_metrics, files = ray.get(ray.remote(evaluate_checkpoint).options(**resources).remote(
            result.checkpoint, cfg.to_dict(), cfg.train.use_gpu, repeats))
    except Exception as err:  # the evaluation task's error, re-raised by ray.get
        tracking.finish_trial(run_id, "failed", {}, error=f"evaluation: {err}")
        raise SweepError(f"{label} failed in evaluation: {err}") from err
    final = {key: value for key, value in train_metrics.items() if isinstance(value, (int, float))}
    final.update(eval_metrics)
    # Where the overhead goes: starting the Train run (controller, workers, process group; plus the
    # per-epoch checkpoints), starting the evaluation task (process, imports, data), MLflow logging.
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
        tracking.finish_trial(run_id, "finished", {k: v for k, v in final.items() if k not in train_metrics},
                              artifact_dir)
    final["logging_s"] = time.perf_counter() - logging_started
    tracking.client.log_metric(run_id, "logging_s", final["logging_s"])
    print(f"[nsde-ray] {label} finished: val_accuracy={final['val_accuracy']:.4f} "
          f"sensitivity={final['sensitivity']:.4f} sic={final['sic']:.4g} "
          f"({final['trial_wall_s']:.0f} s: train {final.get('train_time_s', 0.0):.0f}, "
          f"eval {final['eval_time_s']:.0f}, overhead {final['overhead_s']:.0f}: Train start-up "
          f"{final['train_startup_s']:.0f}, eval start-up {final['eval_startup_s']:.0f}, "
          f"logging {final['logging_s']:.0f})", flush=True)
    return "finished", final


def _objectives(metrics: dict[str, float], diverged: bool) -> dict[str, float]:
    """What Tune and Optuna see: every numeric metric, with NaN robustness objectives for a diverged trial.

    An objective that is missing (a non-finite value is not logged to MLflow, so a stored run lacks it)
    is reported as NaN, which Optuna records as a failed point.
    """
    reported = {key: float(value) for key, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}
    for name, _ in OBJECTIVES:
        reported.setdefault(name, float("nan"))
    if diverged:
        reported.update(sensitivity=float("nan"), sic=float("nan"))
    reported["diverged"] = float(diverged)
    return reported


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in sorted(params.items()))


# --- the driver -----------------------------------------------------------------------------------

class ProgressCallback(tune.Callback):
    """On the driver: a progress line as trials finish; a trial that errors has its MLflow run marked failed.

    Runs inside Tune's own event handling, so it never raises: an MLflow error is printed as a
    warning and the sweep goes on (the run's status and the front catch up with the next trial).
    """

    def __init__(self, tracker: dict[str, str], num_samples: int) -> None:
        self.tracker, self.num_samples = tracker, num_samples

    def summary(self) -> str:
        """What the progress line adds after "N/M trials done"."""
        return ""

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        try:
            summary = self.summary()
        except Exception as err:  # MLflow raises many kinds; Tune must not see them
            _warn(f"trial {trial.trial_id}: cannot update MLflow", err, self.tracker.get("tracking_uri"))
            summary = "; Pareto front not updated (MLflow error)"
        done = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id})
        print(f"[nsde-ray] {done}/{self.num_samples} trials done{summary}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        try:
            tracking = SweepTracker(**self.tracker)
            for run in tracking.trial_runs():
                if run.data.tags.get("nsde.trial_id") == trial.trial_id and run.data.tags.get("nsde.status") == "running":
                    tracking.finish_trial(run.info.run_id, "failed", {}, error=str(trial.error_file or "trial error"))
        except Exception as err:  # as in on_trial_complete
            _warn(f"trial {trial.trial_id} errored; cannot mark its MLflow run failed", err,
                  self.tracker.get("tracking_uri"))
        self.on_trial_complete(iteration, trials, trial)


class FrontCallback(ProgressCallback):
    """On the driver: keep the Pareto front current in MLflow as trials finish or fail."""

    def summary(self) -> str:
        rows = SweepTracker(**self.tracker).update_front().rows
        return f"; Pareto front: {sum(r['pareto_front'] for r in rows)} of {len(rows)} evaluated configurations"


class RunSettings(Protocol):
    """What the helpers below need of a run's settings: :class:`SweepConfig`, or the paper-tables grid's."""

    name: str
    storage: str
    base: TrialConfig

    def to_dict(self) -> dict[str, Any]: ...


def experiment_path(cfg: RunSettings) -> str:
    return f"{cfg.storage.rstrip('/')}/{cfg.name}"


def train_storage(cfg: RunSettings) -> str:
    """Where the trials' Ray Train runs (checkpoints) live: inside the sweep's directory."""
    return f"{experiment_path(cfg)}/{TRAIN_DIR}"


def _filesystem(path: str):
    import pyarrow.fs

    if "://" not in path:
        return pyarrow.fs.LocalFileSystem(), path
    return pyarrow.fs.FileSystem.from_uri(path)


def save_sweep_state(cfg: RunSettings, tracker: dict[str, str], kind: str = "sweep") -> None:
    """The run's settings (under ``kind``, the command that made it) and MLflow ids, next to Tune's state.

    Tracking URIs are stored masked (:func:`nsde_ray.tracking.mask_uri`): no password reaches the
    file. The write is atomic where the storage allows: on a local or NFS path the state goes to a
    temporary file in the same directory, is flushed to disk, then renamed over the old one, so a
    crash or a full disk leaves the previous state whole. On other pyarrow file systems (``s3://``
    ...) it is written to a temporary name and moved (S3 publishes an object whole); a file system
    that cannot move files is written directly, where an interrupted write can truncate the file.
    """
    import pyarrow.fs

    from nsde_ray.tracking import mask_uri

    settings, tracker = cfg.to_dict(), dict(tracker)
    for values in (settings, tracker):
        if values.get("tracking_uri"):
            values["tracking_uri"] = mask_uri(values["tracking_uri"])
    payload = json.dumps({kind: settings, "tracker": tracker}, indent=2).encode()
    filesystem, root = _filesystem(experiment_path(cfg))
    target = f"{root}/{SWEEP_FILE}"
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        os.makedirs(root, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=root, prefix=f".{SWEEP_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        return
    filesystem.create_dir(root, recursive=True)
    temporary = f"{root}/.{SWEEP_FILE}.{os.getpid()}.{time.time_ns()}.tmp"
    with filesystem.open_output_stream(temporary) as handle:
        handle.write(payload)
    try:
        filesystem.move(temporary, target)
    except NotImplementedError:  # pyarrow's ArrowNotImplementedError too: write in place
        with filesystem.open_output_stream(target) as handle:
            handle.write(payload)
        filesystem.delete_file(temporary)


def load_state(storage: str, name: str, kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings as saved, MLflow ids) that :func:`save_sweep_state` wrote for ``name`` with ``kind``.

    SweepError if ``storage`` holds no run ``name``, or one that another command (kind) made.
    """
    import pyarrow.fs

    filesystem, root = _filesystem(f"{storage.rstrip('/')}/{name}")
    if filesystem.get_file_info(f"{root}/{SWEEP_FILE}").type == pyarrow.fs.FileType.NotFound:
        raise SweepError(f"no sweep named {name!r} in {storage} to resume; check --name and --storage"
                         f" (sweeps there: {', '.join(list_sweeps(storage)) or 'none'})")
    with filesystem.open_input_stream(f"{root}/{SWEEP_FILE}") as handle:
        text = handle.read().decode()
    try:
        state = json.loads(text)
    except ValueError as err:
        raise SweepError(f"the state of {name!r} in {storage} ({SWEEP_FILE}) is unreadable: {err}") from err
    if kind not in state:
        other = next((key for key in state if key != "tracker"), "unknown")
        raise SweepError(f"{name!r} in {storage} is a {other!r} run, not a {kind!r} one: resume it with the command "
                         "that started it, or choose another --name")
    return state[kind], state["tracker"]


def load_sweep_state(storage: str, name: str) -> tuple[SweepConfig, dict[str, str]]:
    """What :func:`save_sweep_state` wrote for sweep ``name`` in ``storage``; SweepError if there is none."""
    settings, tracker = load_state(storage, name, "sweep")
    return SweepConfig.from_dict(settings), tracker


def list_sweeps(storage: str) -> list[str]:
    """The names of the runs saved in ``storage``; none if it does not exist yet.

    SweepError if the storage cannot be listed (permissions, a file where a directory should be,
    unreachable object storage): that is never read as "no sweeps".
    """
    import pyarrow.fs

    try:
        filesystem, root = _filesystem(storage)
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
        return sorted(os.path.basename(e.path) for e in entries
                      if filesystem.get_file_info(f"{e.path}/{SWEEP_FILE}").type == pyarrow.fs.FileType.File)
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses; ArrowInvalid for a bad URI
        raise SweepError(f"cannot list the sweeps in --storage {storage}: {err}; check the path (or bucket), "
                         "that it is a directory, and its permissions") from err


def sweep_exists(storage: str, name: str) -> bool:
    return name in list_sweeps(storage)


def default_max_concurrent(cfg: RunSettings) -> int:
    """Trials that fit at once in the connected cluster: each needs its DDP workers' CPUs (and GPUs)."""
    resources = ray.cluster_resources()
    train = cfg.base.train
    fits = int(resources.get("CPU", 1) // (train.num_workers * train.cpus_per_worker))
    if train.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // train.num_workers))
    return max(1, fits)


def trial_trainable(cfg: RunSettings, tracker: dict[str, str], repeats: int = 1, seeds_per_config: int = 1):
    """:func:`run_trial` over ``cfg.base`` as Tune's trainable.

    It asks Tune for no CPU of its own (only a nominal memory reservation, as Tune refuses an
    empty request): its ``TorchTrainer`` workers and the evaluation task hold the resources, so N
    one-worker trials fit on N CPUs without a deadlock.
    """
    trainable = tune.with_parameters(run_trial, base=cfg.base.to_dict(), storage_path=train_storage(cfg),
                                     tracker=tracker, repeats=repeats, seeds_per_config=seeds_per_config)
    return tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})


def restore_tuner(cfg: RunSettings, trainable, retry_errored: bool = True) -> tune.Tuner:
    """The ``Tuner`` of ``cfg`` from its experiment directory: finished trials kept, unfinished ones resumed.

    ``retry_errored`` (``--resume``'s default; ``--no-retry-errored`` turns it off): trials that
    errored run again, from their Train runs' latest checkpoints, in their reopened MLflow runs
    (a failed run is not finished, so :meth:`SweepTracker.open_trial` reopens it); otherwise they
    stay errored.
    """
    return tune.Tuner.restore(experiment_path(cfg), trainable=trainable, resume_unfinished=True,
                              resume_errored=retry_errored, restart_errored=False)


def run_config(cfg: RunSettings, callback: ProgressCallback) -> tune.RunConfig:
    """Where Tune keeps ``cfg``'s state (``storage``/``name``), its progress callback, one retry per trial."""
    return tune.RunConfig(name=cfg.name, storage_path=cfg.storage, verbose=1, callbacks=[callback],
                          failure_config=tune.FailureConfig(max_failures=1))


def build_tuner(cfg: SweepConfig, tracker: dict[str, str], resume: bool, retry_errored: bool = True) -> tune.Tuner:
    """A new ``Tuner`` for ``cfg``, or (``resume``) the one restored from its experiment directory
    (``retry_errored``: as :func:`restore_tuner`)."""
    trainable = trial_trainable(cfg, tracker, seeds_per_config=cfg.seeds_per_config)
    if resume:
        return restore_tuner(cfg, trainable, retry_errored)
    max_concurrent = cfg.max_concurrent or default_max_concurrent(cfg)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=build_searcher(cfg, max_concurrent), num_samples=cfg.num_samples,
                                    reuse_actors=False),
        run_config=run_config(cfg, FrontCallback(tracker, cfg.num_samples)))
