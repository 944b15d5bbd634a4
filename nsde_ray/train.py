"""One trial's training: :func:`train_loop` on N DDP workers under Ray Train's ``TorchTrainer``, or on one
in the calling process.

:func:`build_trainer` runs it as ``train_fn_per_worker`` under a ``TorchTrainer``.
:func:`fit_single_worker` runs the same loop for a one-worker run in this process, with its
checkpoints in the run's storage (:class:`nsde_ray.storage.CheckpointStore`): that saves Ray
Train's start-up (its controller and worker processes) and a trial's retry continues from the
latest checkpoint the same way (a ``TorchTrainer``'s too, :func:`find_checkpoint`).

Each epoch every worker trains on its own fixed shard (``ShardSampler``, seeded by the config), the
validation set is split across workers and the counts all-reduced, and rank 0 reports a
checkpoint. After a worker failure Ray Train restarts the group (``FailureConfig.max_failures``)
and ``train_fn_per_worker`` continues from the latest checkpoint. A non-finite training loss (too
much noise) ends the run cleanly with ``diverged = True``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from nsde_ray.attribution import autocast_options, ig_baseline
from nsde_ray.config import NoiseConfig, TrainConfig, TrialConfig
from nsde_ray.data import IndexedDataset, ShardSampler, build_datasets, loader_processes
from nsde_ray.models import build_model, set_noise_shape_maps
from nsde_ray.names import CHECKPOINT_FILE
from nsde_ray.registry import NOISE_MODES
from nsde_ray.resident import ResidentLoader, resident_loader
from nsde_ray.shaping import NoiseShaper, noise_energy
from nsde_ray.storage import CheckpointStore
from nsde_ray.weights import load_init_weights, load_tensors, model_from_state


@dataclass
class EpochStats:
    """One epoch's training and validation results, averaged over all workers; shaping_time_s is rank-local.

    noise_energy: :func:`nsde_ray.shaping.noise_energy` in force at each training step, averaged over
    the epoch's steps and over the workers (all-reduced; the shards have equal sizes).
    """

    train_loss: float
    val_loss: float
    val_accuracy: float
    shaping_time_s: float
    noise_energy: float


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, images, labels) -> scalar


def plain_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: NoiseConfig | None = None,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    autocast: dict | None = None,
) -> torch.Tensor:
    """Mean cross-entropy (scalar) of ``model`` on ``images`` (B, C, H, W) and ``labels`` (B,), under
    ``torch.autocast(**autocast)`` if given: the training loss of every mode without one of its own. Its signature
    is that of :attr:`nsde_ray.registry.NoiseMode.training_loss`."""
    with torch.autocast(**autocast) if autocast else contextlib.nullcontext():
        return nn.functional.cross_entropy(model(images), labels)


def training_loss(noise: NoiseConfig, mean: tuple[float, ...], std: tuple[float, ...], autocast: dict | None) -> Loss:
    """The training loss of ``noise``'s mode (its record's ``training_loss``, or :func:`plain_loss`), with the data
    set's per-channel ``mean`` and ``std`` and the autocast options bound."""
    entry = NOISE_MODES[noise.mode].training_loss
    loss = plain_loss
    if entry:
        module, name = entry.split(":")
        loss = getattr(importlib.import_module(module), name)
    return functools.partial(_bound_loss, loss, noise, mean, std, autocast)


def _bound_loss(loss, noise, mean, std, autocast, model, images, labels) -> torch.Tensor:
    return loss(model, images, labels, noise, mean, std, autocast)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss: Loss = plain_loss,
) -> torch.Tensor:
    """One optimiser step of ``loss`` (:data:`Loss`) on a batch: the training step of the loop, the in-process
    fit and the benchmarks. Returns the loss, detached."""
    value = loss(model, images, labels)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.detach()


def fit_in_process(model: nn.Module, dataset, cfg: TrainConfig) -> nn.Module:
    """``model`` trained in this process, without Ray, DDP, schedule or checkpoints: ``cfg.epochs`` epochs of
    ``cfg``'s optimizer over ``dataset`` ((image, label) pairs) in batches of ``cfg.batch_size`` shuffled by
    torch's global generator (seed it first for a repeatable run). For small models in notebooks, tests and
    benchmarks; returns the model in eval mode."""
    optimizer = build_optimizer(model, cfg)
    model.train()
    for _ in range(cfg.epochs):
        for images, labels in DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True):
            train_step(model, optimizer, images, labels)
    return model.eval()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Stepped once per epoch; ``plateau`` (the shaping paper's ReduceLROnPlateau) watches val loss."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=2)
    return None


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by :func:`train_fn_per_worker`, loaded without unpickling code.

    Keys: ``model``, ``optimizer``, ``scheduler`` (state dicts), ``shaping`` (what rebuilds the
    shaping maps), ``num_classes``, ``in_channels``, ``image_size`` (the side in pixels the model was
    trained at), ``epoch`` (epochs done), ``train_time_s``,
    ``noise_energy_sum`` (the sum of the epochs' ``noise_energy_epoch``),
    ``config`` (:meth:`TrialConfig.to_dict`). A run that diverged ends with a
    checkpoint holding ``diverged: True`` and no weights; the one before it has the last good model.
    """
    return load_tensors(os.path.join(path, CHECKPOINT_FILE))


def load_trained_model(checkpoint_dir: str) -> tuple[nn.Module, TrialConfig]:
    """The model (eval mode, on CPU) and config of a checkpoint written by :func:`train_fn_per_worker`."""
    state = load_checkpoint(checkpoint_dir)
    if state.get("diverged"):
        raise ValueError(f"the checkpoint in {checkpoint_dir} marks a diverged run: it holds no weights")
    return model_from_state(state)


RAY_LOG_LEVEL = "ray_log_level"  # the key of train_fn_per_worker's config that is not the trial's


class RayTrainSession:
    """:func:`train_loop`'s view of a Ray Train worker: rank, world size, device, the checkpoint to
    resume from, and reports (every rank reports; rank 0 alone writes and attaches the checkpoint)."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def latest_checkpoint(self) -> ray.train.Checkpoint | None:
        return ray.train.get_checkpoint()

    def prepare(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model, move_to_device=False)

    def report(self, metrics: dict, state: dict) -> None:
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            torch.save(state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))


class SingleProcessSession:
    """:func:`train_loop`'s view of a one-worker run in this process, without Ray Train: rank 0 of 1, the
    trial's GPU if it holds one, checkpoints in a :class:`nsde_ray.storage.CheckpointStore`, and each
    report passed to ``on_report(metrics)``; the reports and the last checkpoint are kept."""

    def __init__(self, storage_path: str, name: str, use_gpu: bool, on_report: Callable[[dict], None] | None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cuda", 0) if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.storage_path, self.name = storage_path, name
        self.store, self.on_report = CheckpointStore(storage_path, name), on_report
        self.reports: list[dict] = []
        self.checkpoint: ray.train.Checkpoint | None = None

    def latest_checkpoint(self) -> ray.train.Checkpoint | None:
        return find_checkpoint(self.storage_path, self.name)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def report(self, metrics: dict, state: dict) -> None:
        self.checkpoint = self.store.save(state, metrics)
        self.reports.append(metrics)
        if self.on_report is not None:
            self.on_report(metrics)


@dataclass
class TrainOutcome:
    """A finished training run: ``metrics`` (its last report), ``checkpoint`` (its last, a
    ``ray.train.Checkpoint``) and ``reports`` (the reports it still knows, oldest first; with
    Ray Train those of its kept checkpoints and the last)."""

    metrics: dict
    checkpoint: ray.train.Checkpoint | None
    reports: list[dict]

    @classmethod
    def from_result(cls, result: ray.train.Result) -> TrainOutcome:
        kept = [metrics for _, metrics in (getattr(result, "best_checkpoints", None) or [])]
        return cls(dict(result.metrics or {}), result.checkpoint, kept + [dict(result.metrics or {})])


def train_fn_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` is :meth:`TrialConfig.to_dict`, optionally with :data:`RAY_LOG_LEVEL`:
    the level of the worker's root logger, where Ray Train logs each report at INFO."""
    config = dict(config)
    logging.getLogger().setLevel(config.pop(RAY_LOG_LEVEL, "INFO"))
    train_loop(TrialConfig.from_dict(config), RayTrainSession())


def fit_single_worker(
    cfg: TrialConfig, *, name: str, storage_path: str, on_report: Callable[[dict], None] | None = None
) -> TrainOutcome:
    """The one-worker training of :func:`build_trainer`'s ``TorchTrainer``, run in this process.

    Same loop, seeds and checkpoint contents; the checkpoints go to ``{storage_path}/{name}``
    (:class:`nsde_ray.storage.CheckpointStore`), so a call with the same ``(storage_path, name)``
    after a crash continues from the latest one, as a restored Train run does. No retry here: the
    caller's (Tune's trial retries) restarts it. ``on_report(metrics)`` is called after each epoch's
    checkpoint is written.
    """
    if cfg.train.num_workers != 1:
        raise ValueError(f"fit_single_worker trains with one worker; this config asks for {cfg.train.num_workers}")
    session = SingleProcessSession(storage_path, name, cfg.train.use_gpu, on_report)
    train_loop(cfg, session)
    if session.reports:
        return TrainOutcome(session.reports[-1], session.checkpoint, session.reports)
    # nothing left to train (an earlier attempt finished it): its last checkpoint and report
    checkpoint, metrics = session.latest_checkpoint(), session.store.latest_metrics()
    if not metrics and checkpoint is not None:  # a TorchTrainer finished it
        metrics = dict(ray.train.Result.from_path(f"{storage_path.rstrip('/')}/{name}").metrics or {})
    return TrainOutcome(metrics, checkpoint, [metrics] if metrics else [])


def find_checkpoint(storage_path: str, name: str) -> ray.train.Checkpoint | None:
    """The last checkpoint of the training run ``(storage_path, name)``: one written in process
    (:func:`fit_single_worker`), else a ``TorchTrainer``'s (so a run begun under a ``TorchTrainer``
    continues in process); None if it has none."""
    checkpoint = CheckpointStore(storage_path, name).latest()
    if checkpoint is not None:
        return checkpoint
    try:
        return ray.train.Result.from_path(f"{storage_path.rstrip('/')}/{name}").checkpoint
    except RuntimeError:  # Ray's "Experiment folder ... doesn't exist", or no run state in it
        return None


def last_checkpoint(storage_path: str, name: str) -> ray.train.Checkpoint:
    """:func:`find_checkpoint`, FileNotFoundError if the run has none."""
    checkpoint = find_checkpoint(storage_path, name)
    if checkpoint is None:
        raise FileNotFoundError(f"the training run {name!r} in {storage_path} has no checkpoint")
    return checkpoint


def train_loop(cfg: TrialConfig, session: RayTrainSession | SingleProcessSession) -> None:
    """Train ``cfg`` as ``session``'s rank, from its latest checkpoint if any, reporting each epoch's metrics and
    checkpoint to it.

    Mode ``fgsm`` runs :class:`nsde_ray.robust_training.OverfitGuard` after every epoch on a fixed minibatch
    of the worker's shard; when its PGD accuracy collapses (catastrophic overfitting), training stops
    with the previous epoch's weights: a last report (``fgsm_collapsed_epoch``) and a checkpoint marked
    ``stopped`` that a restore ends at, as it ends at a diverged run's."""
    config = cfg.to_dict()
    rank, world_size, device = session.rank, session.world_size, session.device
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu and cfg.train.channels_last else torch.contiguous_format

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    splits = build_datasets(cfg.data)
    model = build_model(cfg.model.arch, splits.num_classes, splits.in_channels, cfg.noise)
    checkpoint = session.latest_checkpoint()
    if checkpoint is None and cfg.train.init_from:  # a resumed run continues from its own checkpoint instead
        load_init_weights(cfg.train.init_from, model)
    model = model.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)

    sampler = ShardSampler(len(splits.train), rank, world_size, seed=cfg.train.seed)
    processes = loader_processes(cfg.data.dataset, cfg.train.cpus_per_worker)
    loading = dict(pin_memory=on_gpu, num_workers=processes, persistent_workers=processes > 0)
    resident = dict(mean=splits.mean, std=splits.std, device=device, mode=cfg.train.resident_data, processes=processes)
    train_loader = resident_loader(
        splits.train_unaugmented,
        splits.augmentation,
        sampler.indices.unique(),
        sampler,
        cfg.train.batch_size,
        **resident,
    )
    if train_loader is None:
        train_loader = DataLoader(
            IndexedDataset(splits.train), batch_size=cfg.train.batch_size, sampler=sampler, **loading
        )
    val_indices = torch.arange(rank, len(splits.val), world_size)
    val_loader = resident_loader(
        splits.val, "none", val_indices, val_indices.tolist(), 2 * cfg.train.batch_size, **resident
    )
    if val_loader is None:
        val_loader = DataLoader(
            Subset(splits.val, val_indices.tolist()), batch_size=2 * cfg.train.batch_size, **loading
        )
    shaper = None
    if cfg.noise.mode == "attribution" and cfg.noise.active:
        shaper = NoiseShaper(
            cfg.shaping,
            splits.train_unaugmented,
            sampler.indices,
            len(train_loader),
            device,
            memory_format,
            amp=cfg.train.amp,
            loader_processes=processes,
            baseline=ig_baseline(splits.mean, splits.std, "black"),
            resident=train_loader if isinstance(train_loader, ResidentLoader) else None,
        )

    start_epoch, train_time_s, shaping_time_s, noise_energy_sum = 0, 0.0, 0.0, 0.0
    if checkpoint is not None:
        with checkpoint.as_directory() as checkpoint_dir:
            state = load_checkpoint(checkpoint_dir)
        if state.get("diverged") or state.get("stopped"):
            return
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if shaper is not None:
            scratch = build_model(cfg.model.arch, splits.num_classes, splits.in_channels, cfg.noise)
            shaper.load_state_dict(state["shaping"], scratch.to(memory_format=memory_format))
        start_epoch, train_time_s, shaping_time_s = state["epoch"], state["train_time_s"], state["shaping_time_s"]
        noise_energy_sum = state["noise_energy_sum"]
    ddp_model = compile_for_training(session.prepare(model), cfg.train)
    autocast = autocast_options(device, cfg.train.amp)
    step_loss = training_loss(cfg.noise, splits.mean, splits.std, autocast)
    guard, guard_batch = _overfit_guard(cfg, splits, sampler, device, memory_format)
    if guard is not None and checkpoint is not None:
        guard.best = state.get("overfit_guard_best")
    last_good: tuple[dict, dict] | None = None  # the guarded run's last (metrics, checkpoint state) that passed

    for epoch in range(start_epoch, cfg.train.epochs):
        sampler.set_epoch(epoch)
        # Noise draws depend only on (seed, rank, epoch), so a resumed epoch is the epoch it replaces.
        torch.manual_seed(cfg.train.seed + 1_000_003 * (rank + 1) + epoch)
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        stats = _run_epoch(
            ddp_model,
            model,
            optimizer,
            train_loader,
            val_loader,
            device,
            memory_format,
            autocast,
            cfg.noise,
            shaper,
            first_step=epoch * len(train_loader),
            step_loss=step_loss,
        )
        epoch_time_s = time.perf_counter() - started
        train_time_s += epoch_time_s
        shaping_time_s += stats.shaping_time_s
        noise_energy_sum += stats.noise_energy
        metrics = {
            "epoch": epoch + 1,
            "train_loss": stats.train_loss,
            "val_loss": stats.val_loss,
            "val_accuracy": stats.val_accuracy,
            "lr": lr,
            "resumed_from_epoch": start_epoch,
            "epoch_time_s": epoch_time_s,
            "train_time_s": train_time_s,
            "shaping_time_s": shaping_time_s,
            "noise_energy_epoch": stats.noise_energy,
            "noise_energy": noise_energy_sum / (epoch + 1),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
            "diverged": not math.isfinite(stats.train_loss),
        }
        if metrics["diverged"]:
            # A marker checkpoint without weights: the run's result shows the divergence, and a
            # restore (worker failure, --resume) ends at once instead of training a diverged model.
            session.report(
                metrics, {"epoch": epoch + 1, "diverged": True, "train_time_s": train_time_s, "config": config}
            )
            return
        if guard is not None and guard.check(model, *guard_batch, autocast):
            _report_collapse(session, epoch, last_good, metrics)
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(stats.val_loss)
        elif scheduler is not None:
            scheduler.step()
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "shaping": shaper.state_dict() if shaper is not None else {},
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "image_size": splits.image_size,
            "epoch": epoch + 1,
            "train_time_s": train_time_s,
            "shaping_time_s": shaping_time_s,
            "noise_energy_sum": noise_energy_sum,
            "config": config,
        }
        if guard is not None:
            state["overfit_guard_best"] = guard.best
            last_good = (metrics, {k: copy.deepcopy(v) for k, v in state.items()})
        session.report(metrics, state)


GUARD_IMAGES = 256  # the fixed minibatch of the worker's shard on which FGSM's overfitting guard attacks


def _overfit_guard(
    cfg: TrialConfig, splits, sampler: ShardSampler, device: torch.device, memory_format: torch.memory_format
):
    """FGSM's :class:`~nsde_ray.robust_training.OverfitGuard` and its fixed minibatch (images, labels on ``device``),
    or (None, None) for the other modes."""
    if cfg.noise.mode != "fgsm" or cfg.noise.fgsm_epsilon == 0:
        return None, None
    from nsde_ray.robust_training import OverfitGuard

    samples = [splits.train_unaugmented[int(i)] for i in sampler.indices[:GUARD_IMAGES]]
    batch = (
        torch.stack([image for image, _ in samples]).to(device, memory_format=memory_format),
        torch.tensor([int(label) for _, label in samples], device=device),
    )
    return OverfitGuard(cfg.noise.fgsm_epsilon, splits.mean, splits.std, seed=cfg.train.seed), batch


def _report_collapse(session, epoch: int, last_good: tuple[dict, dict] | None, metrics: dict) -> None:
    """FGSM's catastrophic overfitting at ``epoch`` (0-based): the last report, with the weights and metrics of
    the last epoch that passed (this epoch's own if none did), marked ``stopped``."""
    good_metrics, state = last_good if last_good is not None else (metrics, None)
    if state is None:
        raise RuntimeError(
            f"FGSM training collapsed in its first epoch ({epoch + 1}): its PGD accuracy on the "
            "guard's minibatch was already lower than it can fall; lower fgsm_epsilon or the lr"
        )
    final = dict(
        good_metrics,
        epoch=epoch + 1,
        fgsm_collapsed_epoch=epoch + 1,
        train_time_s=metrics["train_time_s"],
        epoch_time_s=metrics["epoch_time_s"],
    )
    session.report(final, dict(state, epoch=epoch + 1, stopped=True, train_time_s=metrics["train_time_s"]))


def compile_for_training(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``torch.compile(model)`` with ``cfg.compile_mode`` if ``cfg.compile``, else ``model`` itself.

    The compiled module shares its parameters with ``model``; the training loop calls it, while
    validation, shaping refreshes and checkpoints use the uncompiled module (so state-dict keys
    do not change). On CPU Inductor fuses each block's noise with its residual sum and ReLU; on a GPU
    the fused Triton tail (:mod:`nsde_ray.models.fused_noise`) stays one opaque op in the graph.
    """
    if not cfg.compile:
        return model
    return torch.compile(model, mode=cfg.compile_mode)


def _run_epoch(
    ddp_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device: torch.device,
    memory_format: torch.memory_format,
    autocast: dict,
    noise: NoiseConfig,
    shaper: NoiseShaper | None,
    first_step: int,
    step_loss: Loss = plain_loss,
) -> EpochStats:
    """Train one epoch, then validate (noise off); sums are all-reduced so every rank agrees.

    With a shaper, maps are refreshed when due (before global step ``first_step + i``), or taken from
    the step's input gradient (``training_gradient``), and each batch's noise is scaled by its
    samples' maps, cropped and flipped as the batch's images were.
    """
    # train loss, train n, val loss, val correct, val n, noise energy summed over steps, steps
    totals = torch.zeros(7, dtype=torch.float64, device=device)
    shaping_time_s, energy_sum, steps = 0.0, 0.0, 0
    energy = noise_energy(noise, shaper.maps if shaper is not None else None)
    ddp_model.train()
    for step, (images, labels, indices, params) in enumerate(train_loader, start=first_step):
        if shaper is not None:
            if shaper.due(step):
                started = time.perf_counter()
                shaper.refresh(model, step)
                shaping_time_s += time.perf_counter() - started
                energy = noise_energy(noise, shaper.maps)
            set_noise_shape_maps(model, shaper.scale_for(indices, params))
        energy_sum, steps = energy_sum + energy, steps + 1
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        input_gradient = shaper is not None and shaper.wants_gradient(step)
        images.requires_grad_(input_gradient)
        loss = train_step(ddp_model, optimizer, images, labels, step_loss)
        if input_gradient:
            started = time.perf_counter()
            shaper.update_from_gradient(indices, params, images.grad)
            shaping_time_s += time.perf_counter() - started
        totals[0] += loss.double() * len(labels)
        totals[1] += len(labels)
    model.eval()
    with torch.no_grad(), torch.autocast(**autocast):
        for images, labels, *_ in val_loader:  # a ResidentLoader also yields indices and params
            images = images.to(device, memory_format=memory_format, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = model(images)
            totals[2] += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").double()
            totals[3] += (logits.argmax(dim=1) == labels).sum()
            totals[4] += len(labels)
    totals[5], totals[6] = energy_sum, steps
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    train_loss, n_train, val_loss, correct, n_val, energy_sum, steps = totals.tolist()
    return EpochStats(
        train_loss / max(n_train, 1.0),
        val_loss / max(n_val, 1.0),
        correct / max(n_val, 1.0),
        shaping_time_s,
        energy_sum / max(steps, 1.0),
    )


def build_trainer(
    cfg: TrialConfig, *, name: str, storage_path: str, callbacks: list | None = None, train_log_level: str = "ERROR"
) -> ray.train.torch.TorchTrainer:
    """A ``TorchTrainer`` for one trial.

    ``name`` must be stable across restarts (no timestamps): Ray Train restores a run from its
    latest checkpoint only when ``(storage_path, name)`` is the same. ``storage_path`` is a local
    directory on one machine, or shared storage (NFS, ``s3://``) across nodes. ``train_log_level``:
    what Ray Train prints of its own (each checkpoint and report at INFO); its log files keep all.
    """
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={**cfg.to_dict(), RAY_LOG_LEVEL: train_log_level},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={
                "CPU": cfg.train.cpus_per_worker,
                **({"GPU": cfg.train.gpus_per_worker} if cfg.train.use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level=train_log_level),
        ),
    )
