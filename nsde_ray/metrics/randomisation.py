"""The model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation of a trained model should change when the model's weights are replaced by random
ones. We compare |maps| of the trained model with |maps| of the same architecture re-initialised
(every layer at once, the paper's "cascading" test run to the end), per image, by Spearman rank
correlation (:func:`rank_correlation`, :func:`randomisation_check`). A map that barely depends on the model (an edge
detector, a constant, the input itself) keeps its ranking and scores near 1.

The rank correlation alone cannot see an explainer that ignores both model and input and returns
fresh noise: its maps disagree with the randomised model's, but also with its own second draw.
The check therefore also measures repeatability: the rank correlation of two calls of the same
explainer on the trained model, under different random states. It is measured only for methods that
draw random numbers (SmoothGrad): a deterministic method's repeat is its first call, so its
repeatability would be 1 by construction and is not reported.

A method passes (:func:`passes`) when its similarity is below :data:`MAX_SIMILARITY` (0.9) and its
repeatability (where measured) at least :data:`MIN_REPEATABILITY` (0.5); NaN (a constant or broken map)
fails. The
similarity threshold is deliberately lenient: IG and DeepLIFT multiply gradients by (input -
baseline), so part of their rank order comes from the image itself for any model (Adebayo et al.
report the same for IG and gradient x input); on digits they score about 0.8 and Saliency about
0.05. A map that a randomised model reproduces to 0.9 or more says next to nothing about what the
model learned (a constant, the input itself, a fixed pattern), and that is what the check is for:
keeping explanations that do not depend on the model off the Pareto front.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from nsde_ray.attribution import Explainer, attribution_map

MAX_SIMILARITY, MIN_REPEATABILITY = 0.9, 0.5


def randomised_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with every parameter re-initialised by its layer's default (seeded), eval mode.

    Batch-norm layers get their initial state too (weight 1, bias 0, running mean 0, variance 1).
    """
    randomised = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in randomised.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return randomised.eval()


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    """Per-image Spearman correlation (B,) of |first| and |second|, maps (B, ...) flattened per image.

    Ties get average ranks; an image whose |map| is constant in either argument (or not finite)
    has no rank order and gives NaN.
    """
    a = np.abs(first.detach().flatten(1).double().cpu().numpy())
    b = np.abs(second.detach().flatten(1).double().cpu().numpy())
    result = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            continue
        rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
        norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
        if norm > 0:
            result[i] = float(rx @ ry) / norm
    return result


def randomisation_check(
    explain: Explainer,
    explain_randomised: Explainer,
    inputs: torch.Tensor,
    target: torch.Tensor,
    explanations: torch.Tensor | None = None,
    seed: int = 0,
    repeat: bool = True,
) -> tuple[float, float | None]:
    """(similarity, repeatability) of an explainer: mean :func:`rank_correlation` over the images.

    ``explain`` explains the trained model, ``explain_randomised`` the same method on
    :func:`randomised_copy`; inputs (B, C, H, W), target (B,). ``explanations`` reuses the trained
    model's attributions already computed; the repeat runs under the global torch seed ``seed + 1``.
    ``repeat=False`` is for a deterministic explainer, whose repeat would return the same maps:
    ``explain`` is not called again and the repeatability is ``None`` (not measured). Means leave out
    NaN images; all NaN gives NaN.
    """
    trained = attribution_map(explain(inputs, target) if explanations is None else explanations)
    similarity = _nanmean(rank_correlation(trained, attribution_map(explain_randomised(inputs, target))))
    if not repeat:
        return similarity, None
    return similarity, _nanmean(rank_correlation(trained, attribution_map(_repeat(explain, inputs, target, seed))))


def _repeat(explain: Explainer, inputs: torch.Tensor, target: torch.Tensor, seed: int) -> torch.Tensor:
    """``explain(inputs, target)`` under the global torch seed ``seed + 1``, the caller's RNG state kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return explain(inputs, target)


def passes(similarity: float, repeatability: float | None) -> bool:
    """Whether a method passes the check, from :func:`randomisation_check`'s values (repeatability ``None``: not
    measured, a deterministic method); NaN fails."""
    if not math.isfinite(similarity) or (repeatability is not None and not math.isfinite(repeatability)):
        return False
    return similarity < MAX_SIMILARITY and (repeatability is None or repeatability >= MIN_REPEATABILITY)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan
