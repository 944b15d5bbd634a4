"""The noise term N(i) of a discretised neural SDE, X(i+1) = X(i) + R(X(i)) + N(i).

Smoother-attributions paper, eq. (5); its continuous limit is eq. (6),
dX = G(X) dt + sigma(X, t) dB. The diffusion term is "normalised" like EnResNet's (Wang, Shi,
Osher): its standard deviation is ``sigma`` times the standard deviation of the block's output, so
one ``sigma`` means the same in every block and architecture. But where EnResNet takes one std over
the whole batch, differentiates through it and keeps the noise on at test time, ours takes the std
per sample over (C, H, W), detaches it, and switches the noise off in eval mode (attributions and
accuracy are those of the noise-free network).

Speed. Drawn naively (``std``, ``randn``, ``mul``, ``add``: four passes over the block
output) the noise cost 16% of ResNet-50's training throughput on an H100. On a GPU each block's
tail, ``relu(out + identity) + sigma * std * m * eps``, is therefore two Triton kernels
(:mod:`nsde_ray.models.fused_noise`): one reads the residual sum once for the per-sample std, the
other draws the noise in-kernel and writes the noisy output, together moving about the bytes of the
plain block's own ``add`` and ``relu``. Elsewhere (CPU, no Triton, or with the fusion switched off)
the eager path draws the noise and adds it with one ``addcmul``. Both compute the same function;
only the random stream differs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from nsde_ray.models import fused_noise

FUSED_ENV = "NSDE_FUSED_NOISE"  # "0" switches the fused GPU path off where a block does not say otherwise
_FUSED_OFF = os.environ.get(FUSED_ENV) == "0"  # read once: forward passes (also traced ones) see a constant


class BlockNoise(nn.Module):
    """Adds ``sigma * std(x) * m * eps`` to a block output x of shape (B, C, H, W).

    eps ~ N(0, 1) is drawn fresh on every forward pass in training mode; in eval mode, with
    ``sigma == 0`` or mode ``none`` the module is the identity, so the network is exactly the
    plain ResNet. std(x) is taken per sample over (C, H, W) and detached: it sets the noise scale,
    it is not something to learn through.

    m is 1 for Gaussian noise. In ``attribution`` mode it is the per-sample spatial map set by
    :meth:`set_shape_map` (shape (B, 1, h, w), values >= 0), resized to (H, W) here; until a map
    is set the noise is plain Gaussian (the shaping paper's first iteration).

    ``fused``: whether :meth:`residual_out` (the block's tail) runs as the fused Triton kernels;
    ``None`` (default) means wherever they can run (CUDA tensors with Triton), unless the
    environment variable ``NSDE_FUSED_NOISE=0``; inputs they do not support (mixed dtypes, other
    layouts) take the eager path. The fused path does not call the block's ``relu_out`` module
    or this module's forward, so forward hooks on them see nothing in fused training steps
    (eval mode, where attributions are computed, always takes the module path).
    """

    def __init__(self, mode: str = "gaussian", sigma: float = 0.0, fused: bool | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.sigma = float(sigma)
        self.fused = fused
        self.shape_map: torch.Tensor | None = None

    def set_shape_map(self, shape_map: torch.Tensor | None) -> None:
        """Set (or clear, with ``None``) the per-sample map for the next forward passes."""
        if shape_map is not None and (shape_map.ndim != 4 or shape_map.shape[1] != 1):
            raise ValueError(f"a noise shape map has shape (B, 1, H, W), got {tuple(shape_map.shape)}")
        self.shape_map = shape_map

    @property
    def active(self) -> bool:
        """Whether a forward pass now adds noise (training mode, sigma > 0, mode not ``none``)."""
        return self.training and self.sigma != 0.0 and self.mode != "none"

    def _map_for(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mode != "attribution" or self.shape_map is None:
            return None
        if self.shape_map.shape[0] != x.shape[0]:
            raise ValueError(f"noise shape map is for {self.shape_map.shape[0]} samples, batch has {x.shape[0]}")
        return self.shape_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return add_noise(x, self.sigma, self._map_for(x))

    def residual_out(self, out: torch.Tensor, identity: torch.Tensor, relu: nn.Module) -> torch.Tensor:
        """The block's tail ``relu(out + identity) + N``: fused on a GPU, else ``self(relu(out + identity))``."""
        if self.active and self._use_fused(out, identity):
            shape_map = self._map_for(out)
            if shape_map is not None:
                shape_map = _resized(shape_map, out, torch.float32)
            if torch.compiler.is_compiling():  # an opaque op in the graph; failures surface when it runs
                return fused_noise.residual_noise(out, identity, self.sigma, shape_map)
            try:
                return fused_noise.residual_noise(out, identity, self.sigma, shape_map)
            except Exception as err:  # noqa: BLE001 - e.g. Triton cannot compile for this GPU: stay correct, go eager
                fused_noise.disable(err)
        return self(relu(out + identity))

    def _use_fused(self, out: torch.Tensor, identity: torch.Tensor) -> bool:
        if self.fused is False or (self.fused is None and _FUSED_OFF):
            return False
        return fused_noise.available(out) and fused_noise.supported(out, identity)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sigma={self.sigma}" + ("" if self.fused is None else f", fused={self.fused}")


def _resized(shape_map: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    shape_map = shape_map.to(device=like.device, dtype=dtype)
    if shape_map.shape[-2:] != like.shape[-2:]:
        shape_map = F.interpolate(shape_map, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return shape_map


def add_noise(x: torch.Tensor, sigma: float, shape_map: torch.Tensor | None = None) -> torch.Tensor:
    """Eager reference: ``x + sigma * std(x) * m * eps``, std per sample over (C, H, W), detached.

    The std, the draw (in x's dtype, so bf16 under autocast, and x's memory format) and, on a GPU,
    one ``addcmul`` (a pass less than multiply-then-add). On CPU the multiply and the add stay
    separate, as in earlier versions: the rounding, and so a seeded CPU run, is bitwise what it was.
    The result keeps x's memory format.
    """
    scale = sigma * x.detach().std(dim=(1, 2, 3), keepdim=True)
    if shape_map is not None:
        scale = scale * _resized(shape_map, x, x.dtype)
    if x.is_cuda:
        return torch.addcmul(x, torch.randn_like(x), scale)
    return x + torch.randn_like(x).mul_(scale)  # in place on the noise: the sum keeps x's memory format


def noise_modules(model: nn.Module) -> list[BlockNoise]:
    """Every :class:`BlockNoise` of ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, BlockNoise)]


def set_noise_shape_maps(model: nn.Module, shape_map: torch.Tensor | None) -> None:
    """Give every block the same per-sample map (B, 1, H, W); each block resizes it to its own size."""
    for module in noise_modules(model):
        module.set_shape_map(shape_map)


def set_fused_noise(model: nn.Module, fused: bool | None) -> None:
    """Allow (``True``: wherever Triton can run it) or forbid (``False``) the fused block tail in every block;
    ``None``: automatic (allowed unless ``NSDE_FUSED_NOISE=0``)."""
    for module in noise_modules(model):
        module.fused = fused
