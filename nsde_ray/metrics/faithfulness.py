"""Infidelity (Yeh et al. 2019) through ``captum.metrics.infidelity``.

INFD = E_I [(I^T A(x) - (f(x) - f(x - I)))^2] with Gaussian perturbations I of std ``noise_std``
(model input units); Captum's ``normalize=True`` rescales the attributions by the least-squares
factor first, so the value measures the shape of the map, not its scale. Lower is better.
"""

from __future__ import annotations

import torch
from captum.metrics import infidelity as captum_infidelity
from torch import nn

from nsde_ray.attribution import eval_mode


def infidelity(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    *,
    noise_std: float = 0.1,
    n_perturbations: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Per-image infidelity (B,); inputs and attributions (B, C, H, W), target (B,)."""
    generator = torch.Generator(device=inputs.device).manual_seed(seed)

    def perturb(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = noise_std * torch.randn(batch.shape, generator=generator, device=batch.device)
        return noise, batch - noise

    with torch.no_grad(), eval_mode(model):
        return captum_infidelity(
            model, perturb, inputs, attributions, target=target, n_perturb_samples=n_perturbations, normalize=True
        ).detach()
