"""Attribution-driven noise shaping (shaping paper, "Training Neural SDEs With Attribution-based Noise").

dx(t) = G(x(t), W(t)) dt + Σ_next dB_t with Σ_next = Σ Â(x): attributions computed with the
previous iteration's model, outliers dropped and normalised to [-1, 1], scale the noise of the next
iteration. The first iteration (warm-up) uses plain Gaussian noise. Since the noise is symmetric,
the sign of Â does not matter: a block's noise for a sample is scaled per location by
``blend + (1 - blend) |Â(x)|`` (``blend = 0`` is the paper's Σ Â(x)), resized to the block. Those
multipliers are mostly below 1, so shaped noise is also less noise; ``ShapingConfig.energy =
"preserve"`` rescales each map to the noise variance of Gaussian noise (:func:`preserve_energy`),
and :func:`noise_energy` measures the amount in either case.

Attributions are taken on the evaluation view of each training image (``DataSplits.train_unaugmented``)
against the black baseline of evaluation (:func:`nsde_ray.attribution.ig_baseline`). A training
batch is augmented (crop, flip): :meth:`NoiseShaper.scale_for` applies each sample's crop box and
flip to its cached map (:func:`nsde_ray.augment.apply_geometry`), so the noise multipliers cover
the pixels the model is given. Where a crop reaches beyond the evaluation view (zero padding, the
margins of a RandomResizedCrop box) no attribution is cached; there a sample gets its map's
smallest multiplier, that of its least attributed pixel (a black padding pixel's IG attribution
against the black baseline is 0).

With ``ShapingConfig.method = "training_gradient"`` there is no refresh: each training step's
backward also yields the loss gradient with respect to the batch's (augmented) images, which
:meth:`NoiseShaper.update_from_gradient` turns into the samples' maps for their next visit, mapped
back through their crops and flips (:func:`nsde_ray.augment.invert_geometry`).

Cost: maps are computed only at refresh points, in large batches, without parameter gradients,
for the worker's own shard, and cached by sample index at ``map_size`` pixels. A refresh is
compute-bound on a GPU: attributions by the fast path of :mod:`nsde_ray.attribution`
(several IG steps per model call, bf16 autocast, channels_last), the next batch gathered and
pinned on a background thread while the GPU works, and the maps kept on the device, so neither
the refresh nor the training steps that read the maps wait on a host copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from nsde_ray.attribution import attribution_map, autocast_options, make_explainer
from nsde_ray.augment import IDENTITY_PARAMS, apply_geometry, invert_geometry
from nsde_ray.config import NoiseConfig, ShapingConfig
from nsde_ray.registry import NOISE_MODES
from nsde_ray.resident import ResidentLoader


def normalise_attributions(maps: torch.Tensor, clip_percentile: float) -> torch.Tensor:
    """Signed maps (B, H, W) -> Â in [-1, 1]: clip at the per-sample ``clip_percentile`` of |A|, divide by it.

    Clipping the top (100 - p)% of |A| keeps a few extreme pixels from squashing the rest of the
    map towards zero. A map that is zero everywhere stays zero.
    """
    magnitude = maps.abs().flatten(1)
    level = torch.quantile(magnitude.float(), clip_percentile / 100.0, dim=1).view(-1, 1, 1)
    level = torch.where(level > 0, level, torch.ones_like(level))
    return torch.maximum(torch.minimum(maps, level), -level) / level


def noise_scale(normalised: torch.Tensor, blend: float) -> torch.Tensor:
    """Â (B, h, w) -> the per-location noise multiplier (B, 1, h, w), ``blend + (1 - blend) |Â|``."""
    return (blend + (1.0 - blend) * normalised.abs()).unsqueeze(1)


def preserve_energy(multipliers: torch.Tensor, max_multiplier: float) -> torch.Tensor:
    """Multipliers (B, 1, h, w) >= 0 rescaled per sample to mean square 1, then capped at ``max_multiplier``.

    Mean square 1 is the noise variance of Gaussian noise at the same sigma: the map then decides
    where the noise goes, not how much there is. After the cap the mean square can fall below 1
    (slightly for clipped attribution maps; more for a map with a few hot pixels and zeros elsewhere);
    :func:`noise_energy` reports the true value. A map that is zero everywhere becomes 1 everywhere
    (plain Gaussian noise: it says nothing about where to put the noise).
    """
    rms = multipliers.float().square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
    rescaled = torch.where(rms > 0, multipliers / torch.where(rms > 0, rms, 1.0), 1.0)
    return rescaled.clamp(max=max_multiplier).to(multipliers.dtype)


def noise_energy(noise: NoiseConfig, multipliers: torch.Tensor | None) -> float:
    """The noise variance relative to Gaussian noise at the same sigma: the mean squared multiplier m² (unitless).

    By the mode's energy rule (:attr:`nsde_ray.registry.NoiseMode.energy`): 0 without noise (rule
    ``zero``: ``none`` and the robust-training baselines, or sigma 0); 1 for rule ``unit`` (``gaussian``,
    ``input``) and for rule ``map`` without a map (``attribution`` before its first maps: warm-up is plain
    Gaussian noise); with maps ``multipliers`` (N, 1, h, w), the mean of m² over all samples and pixels,
    at the maps' resolution (each block sees the maps resized). Summed in float64, a chunk of samples at
    a time.
    """
    rule = NOISE_MODES[noise.mode].energy
    if not noise.active or rule == "zero":
        return 0.0
    if rule == "unit" or multipliers is None:
        return 1.0
    total = sum(chunk.double().square().sum() for chunk in multipliers.split(4096))
    return float(total) / max(multipliers.numel(), 1)


class NoiseShaper:
    """One worker's shaping maps: when to refresh them, computing them, and the noise scale per batch.

    shard: the indices (into ``dataset``) of the training samples this worker sees. Maps are kept
    on ``device`` as float16 (len(shard), 1, s, s) with s = min(image size, ``cfg.map_size``),
    2 KiB per sample at s = 32. On a GPU with
    ``amp`` the attributions are computed under bf16 autocast, in the model's ``memory_format``:
    the maps only set noise scales, after clipping and normalisation, so bf16 precision suffices.
    ``loader_processes``: DataLoader worker processes for data sets that are not in-memory tensors.
    ``baseline``: IG's reference input in normalised units, (1, C, 1, 1) or (1, C, H, W); training
    passes :func:`~nsde_ray.attribution.ig_baseline` (black, as evaluation). ``None``: zeros, for
    data without pixel units (random benchmark tensors). ``resident``: the training split's
    :class:`~nsde_ray.resident.ResidentLoader`, whose decoded views the refreshes then read.
    """

    def __init__(
        self,
        cfg: ShapingConfig,
        dataset: Dataset,
        shard: torch.Tensor,
        steps_per_epoch: int,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        amp: bool = False,
        loader_processes: int = 0,
        baseline: torch.Tensor | None = None,
        resident: ResidentLoader | None = None,
    ) -> None:
        self.cfg, self.dataset, self.device, self.resident = cfg, dataset, device, resident
        self.baseline = None if baseline is None else baseline.to(device)
        self.loader_processes = loader_processes
        self.memory_format = memory_format
        self.autocast = autocast_options(device, amp)
        self.shard = torch.unique(shard)
        self.position = torch.full((len(dataset),), -1, dtype=torch.long)
        self.position[self.shard] = torch.arange(len(self.shard))
        self.warmup_steps = cfg.warmup_epochs * steps_per_epoch
        self.from_training = cfg.method == "training_gradient"
        self.first_gradient_step = max(0, self.warmup_steps - steps_per_epoch)
        self.interval_steps = cfg.refresh_every * (steps_per_epoch if cfg.refresh_unit == "epochs" else 1)
        self.maps: torch.Tensor | None = None
        self.refreshed_at: int | None = None
        self.source_state: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        """Whether maps must be (re)computed by a refresh before global optimizer step ``step`` (0-based)."""
        return (
            not self.from_training
            and step >= self.warmup_steps
            and (step - self.warmup_steps) % self.interval_steps == 0
        )

    def wants_gradient(self, step: int) -> bool:
        """Whether training step ``step`` should pass its input gradient to :meth:`update_from_gradient`."""
        return self.from_training and step >= self.first_gradient_step

    def update_from_gradient(
        self, indices: torch.Tensor, params: torch.Tensor | None, input_gradient: torch.Tensor
    ) -> None:
        """New maps for the samples ``indices`` (B,) from their training step's loss gradient (B, C, H, W) with
        respect to the augmented images (crops and flips ``params`` (B, 5), or None for none), used from each
        sample's next visit on. Where its crop did not see the view (padding) a sample keeps its old map;
        before any update every sample's map is 1 (plain Gaussian noise)."""
        normalised = normalise_attributions(attribution_map(input_gradient.detach().float()), self.cfg.clip_percentile)
        scale = self._multipliers(normalised)
        if self.maps is None:
            self.maps = torch.ones((len(self.shard), *scale.shape[1:]), dtype=torch.float16, device=self.device)
        rows = _to_device(self.position[indices.cpu()], self.maps.device)
        if params is None or torch.equal(params.cpu(), IDENTITY_PARAMS.expand_as(params)):
            self.maps[rows] = scale.to(torch.float16)
            return
        moved, coverage = invert_geometry(scale, _to_device(params.cpu().float(), scale.device))
        self.maps[rows] = (moved + (1.0 - coverage) * self.maps[rows].float()).to(torch.float16)

    def _multipliers(self, normalised: torch.Tensor) -> torch.Tensor:
        """Â (B, H, W) in [-1, 1] -> noise multipliers (B, 1, s, s) at the cached map size, per ``cfg``."""
        size = min(normalised.shape[-1], self.cfg.map_size)
        if normalised.shape[-1] != size:
            normalised = F.interpolate(normalised.unsqueeze(1), size=(size, size), mode="area").squeeze(1)
        scale = noise_scale(normalised, self.cfg.blend)
        if self.cfg.energy == "preserve":
            scale = preserve_energy(scale, self.cfg.max_multiplier)
        return scale

    def refresh(self, model: nn.Module, step: int) -> None:
        """Recompute the shard's maps with ``model`` as it is now (eval mode, no noise)."""
        explain = make_explainer(
            model,
            self.cfg.method,
            baselines=self.baseline,
            n_steps=self.cfg.ig_steps,
            internal_batch_size=self.cfg.batch_size,
            fast=True,
            amp=self.autocast["enabled"],
            memory_format=self.memory_format,
        )
        chunks = []
        for images, labels in self._batches():
            images = images.to(self.device, non_blocking=True)
            attributions = explain(images, labels.to(self.device, non_blocking=True))
            normalised = normalise_attributions(attribution_map(attributions), self.cfg.clip_percentile)
            chunks.append(self._multipliers(normalised).to(torch.float16))
        self.maps = torch.cat(chunks)
        self.refreshed_at = step
        self.source_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of the shard in order, ``cfg.batch_size`` images at a time, loaded one batch ahead.

        Resident views and in-memory tensor data sets are gathered by index (no per-sample
        collation); others go through a DataLoader. On CUDA the batches are pinned so the copy to
        the device is asynchronous.
        """
        pin = self.device.type == "cuda"
        if self.resident is not None:
            source = self.resident.view_batches(self.shard, self.cfg.batch_size)
        elif isinstance(self.dataset, TensorDataset) and len(self.dataset.tensors) >= 2:
            images, labels = self.dataset.tensors[:2]
            order = self.shard.to(images.device)

            def load(start: int):
                rows = order[start : start + self.cfg.batch_size]
                if pin and not images.is_cuda:  # gather straight into page-locked memory: one copy, async upload
                    return tuple(
                        torch.index_select(
                            t, 0, rows, out=torch.empty((len(rows), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
                        )
                        for t in (images, labels)
                    )
                return images.index_select(0, rows), labels.index_select(0, rows.to(labels.device))

            source = (load(start) for start in range(0, len(order), self.cfg.batch_size))
        else:
            loader = DataLoader(
                Subset(self.dataset, self.shard.tolist()),
                batch_size=self.cfg.batch_size,
                pin_memory=pin,
                num_workers=self.loader_processes,
            )
            source = ((batch[0], batch[1]) for batch in loader)
        yield from _prefetched(source)

    def scale_for(self, indices: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor | None:
        """Noise multipliers (B, 1, s, s) for the samples ``indices`` (B,), or None before the first refresh.

        params: (B, 5) each sample's augmentation (:mod:`nsde_ray.augment`), applied to its map;
        ``None`` or identity rows: the maps as cached.
        """
        if self.maps is None:
            return None
        rows = self.position[indices.cpu()]
        if (rows < 0).any():
            raise RuntimeError(
                "a training batch holds samples outside this worker's shard; the sampler and "
                "the shaper must use the same ShardSampler indices"
            )
        maps = self.maps[_to_device(rows, self.maps.device)].float()
        if params is None or torch.equal(params.cpu(), IDENTITY_PARAMS.expand_as(params)):
            return maps
        return apply_geometry(maps, _to_device(params.cpu().float(), maps.device), fill=maps.amin(dim=(1, 2, 3)))

    def state_dict(self) -> dict:
        """What a checkpoint needs to rebuild identical maps: the refresh step and the model weights then; with
        ``training_gradient``, the maps themselves (float16, 2 KiB per sample at 32 px)."""
        if self.from_training:
            return {} if self.maps is None else {"maps": self.maps.cpu()}
        return {} if self.source_state is None else {"refreshed_at": self.refreshed_at, "model": self.source_state}

    def load_state_dict(self, state: dict, scratch_model: nn.Module) -> None:
        """Recompute the maps of the last refresh with its saved weights loaded into ``scratch_model``
        (or, with ``training_gradient``, take the saved maps)."""
        if not state:
            return
        if "maps" in state:
            self.maps = state["maps"].to(self.device)
            return
        scratch_model.load_state_dict(state["model"])
        self.refresh(scratch_model.to(self.device), state["refreshed_at"])


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``, copied without waiting for the GPU's queue (pinned first)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _prefetched(source: Iterator) -> Iterator:
    """The items of ``source``, each produced on a background thread while the caller works on the one before."""
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nsde-shaping-prefetch") as pool:
        pending = pool.submit(next, source, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, source, done)
            yield item
