"""Saturation diagnostics of Integrated Gradients (shaping paper, figures 3 and 4; Miglani et al. 2020).

Along the straight path x(alpha) = b + alpha (x - b) from baseline b to input x we record the
target logit F(x(alpha)) and the input gradient g(alpha) = dF/dx at ``n_alphas`` evenly spaced
alphas. The logit saturates at alpha_95, the first alpha where F(x(alpha)) - F(b) reaches 95% of
F(x) - F(b). After it, IG behaves well if the gradients are small (grad_norm_after) or randomly
directed (alignment_after: mean cosine similarity of consecutive gradients, ~0 when random, ~1
when they keep pointing the same way and so dominate the integral, as over ResNets in figure 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nsde_ray.attribution import eval_mode


@dataclass
class Saturation:
    """Curves (B, n_alphas) and per-image summaries (B,); alphas (n_alphas,) in [0, 1]."""

    alphas: torch.Tensor
    logits: torch.Tensor
    grad_norm: torch.Tensor
    alignment: torch.Tensor  # cosine(g(alpha_k), g(alpha_k+1)), last column NaN
    alpha_95: torch.Tensor
    grad_norm_after: torch.Tensor
    alignment_after: torch.Tensor


def ig_saturation(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor | None = None,
    *,
    n_alphas: int = 64,
    level: float = 0.95,
    chunk_size: int = 512,
) -> Saturation:
    """Diagnostics for inputs (B, C, H, W), target (B,), baseline (1, C, H, W) or None for zeros."""
    baseline = torch.zeros_like(inputs[:1]) if baseline is None else baseline.to(inputs.device)
    alphas = torch.linspace(0.0, 1.0, n_alphas, device=inputs.device)
    path = baseline.unsqueeze(1) + alphas.view(1, -1, 1, 1, 1) * (inputs - baseline).unsqueeze(1)  # (B, K, C, H, W)
    path = path.flatten(0, 1)
    path_target = target.repeat_interleave(n_alphas)
    logits, grads = [], []
    with eval_mode(model):
        for start in range(0, len(path), chunk_size):
            points = path[start : start + chunk_size].detach().requires_grad_(True)
            selected = model(points).gather(1, path_target[start : start + chunk_size, None]).squeeze(1)
            (grad,) = torch.autograd.grad(selected.sum(), points)
            logits.append(selected.detach())
            grads.append(grad.flatten(1))
    batch = inputs.shape[0]
    logits = torch.cat(logits).view(batch, n_alphas)
    grads = torch.cat(grads).view(batch, n_alphas, -1)
    grad_norm = grads.norm(dim=2)
    alignment = torch.cat(
        [
            nn.functional.cosine_similarity(grads[:, :-1], grads[:, 1:], dim=2),
            torch.full((batch, 1), float("nan"), device=grads.device),
        ],
        dim=1,
    )
    gain = logits - logits[:, :1]
    total = gain[:, -1:]
    reached = gain * total.sign() >= level * total.abs()
    first = reached.float().argmax(dim=1)  # the last alpha always qualifies
    after = torch.arange(n_alphas, device=inputs.device).unsqueeze(0) >= first.unsqueeze(1)
    grad_norm_after = (grad_norm * after).sum(dim=1) / after.sum(dim=1)
    aligned_after = after[:, :-1]
    alignment_after = (alignment[:, :-1] * aligned_after).sum(dim=1) / aligned_after.sum(dim=1).clamp_min(1)
    alignment_after = torch.where(
        aligned_after.any(dim=1), alignment_after, torch.full_like(alignment_after, float("nan"))
    )
    return Saturation(
        alphas.cpu(),
        logits.cpu(),
        grad_norm.cpu(),
        alignment.cpu(),
        alphas[first].cpu(),
        grad_norm_after.cpu(),
        alignment_after.cpu(),
    )
