"""The noise term N(i) of a discretised neural SDE, X(i+1) = X(i) + R(X(i)) + N(i).

Smoother-attributions paper, eq. (5); its continuous limit is eq. (6),
dX = G(X) dt + sigma(X, t) dB. As in EnResNet (Wang, Shi, Osher), the diffusion term is
"normalised": its standard deviation is ``sigma`` times the per-sample standard deviation of the
block's output, so one ``sigma`` means the same in every block and architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BlockNoise(nn.Module):
    """Adds ``sigma * std(x) * m * eps`` to a block output x of shape (B, C, H, W).

    eps ~ N(0, 1) is drawn fresh on every forward pass in training mode; in eval mode, with
    ``sigma == 0`` or mode ``none`` the module is the identity, so the network is exactly the
    plain ResNet. std(x) is taken per sample over (C, H, W) and detached: it sets the noise scale,
    it is not something to learn through.

    m is 1 for Gaussian noise. In ``attribution`` mode it is the per-sample spatial map set by
    :meth:`set_shape_map` (shape (B, 1, h, w), values >= 0), resized to (H, W) here; until a map
    is set the noise is plain Gaussian (the shaping paper's first iteration).
    """

    def __init__(self, mode: str = "gaussian", sigma: float = 0.0) -> None:
        super().__init__()
        self.mode = mode
        self.sigma = float(sigma)
        self.shape_map: torch.Tensor | None = None

    def set_shape_map(self, shape_map: torch.Tensor | None) -> None:
        """Set (or clear, with ``None``) the per-sample map for the next forward passes."""
        if shape_map is not None and (shape_map.ndim != 4 or shape_map.shape[1] != 1):
            raise ValueError(f"a noise shape map has shape (B, 1, H, W), got {tuple(shape_map.shape)}")
        self.shape_map = shape_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.sigma == 0.0 or self.mode == "none":
            return x
        scale = self.sigma * x.detach().std(dim=(1, 2, 3), keepdim=True)
        if self.mode == "attribution" and self.shape_map is not None:
            if self.shape_map.shape[0] != x.shape[0]:
                raise ValueError(f"noise shape map is for {self.shape_map.shape[0]} samples, batch has {x.shape[0]}")
            shape_map = self.shape_map.to(device=x.device, dtype=x.dtype)
            if shape_map.shape[-2:] != x.shape[-2:]:
                shape_map = F.interpolate(shape_map, size=x.shape[-2:], mode="bilinear", align_corners=False)
            scale = scale * shape_map
        # in place on the noise, so the sum keeps x's memory format (channels_last stays channels_last)
        return x + torch.randn_like(x).mul_(scale)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sigma={self.sigma}"


def noise_modules(model: nn.Module) -> list[BlockNoise]:
    """Every :class:`BlockNoise` of ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, BlockNoise)]


def set_noise_shape_maps(model: nn.Module, shape_map: torch.Tensor | None) -> None:
    """Give every block the same per-sample map (B, 1, H, W); each block resizes it to its own size."""
    for module in noise_modules(model):
        module.set_shape_map(shape_map)
