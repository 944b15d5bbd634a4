"""The attribution metrics, one record each: what the evaluation computes for every method, and what is replicated.

A metric is a :class:`MethodMetric`: a function from one method's :class:`MethodContext` (the model,
the evaluation inputs, the method's attributions and explainers) to ``{name: value}``, and the
prefixes of its names whose spread across training seeds is logged (``<name>_std``, ``<name>_se``,
:func:`nsde_ray.aggregate.replicated`). :func:`nsde_ray.evaluate.evaluate` runs every registered
metric for every method, in registration order; adding a metric is adding one record::

    METHOD_METRICS["map_norm"] = MethodMetric("map_norm", lambda ctx: {f"map_norm_{ctx.method}": ...}, ("map_norm_",))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nsde_ray.attribution import STOCHASTIC_METHODS, Explainer, attribution_map, completeness_error
from nsde_ray.common_images import encode_knots
from nsde_ray.config import EvalConfig
from nsde_ray.data import DataSplits
from nsde_ray.metrics.faithfulness import infidelity
from nsde_ray.metrics.localisation import localisation_auc
from nsde_ray.metrics.pic import compute_pic
from nsde_ray.metrics.randomisation import passes as passes_randomisation
from nsde_ray.metrics.randomisation import randomisation_check
from nsde_ray.metrics.saturation import ig_saturation
from nsde_ray.metrics.sensitivity import max_sensitivity, mean_sensitivity


@dataclass
class EvalInputs:
    """What every method's evaluation reads, on the evaluation device.

    images (B, C, H, W), normalised, and labels (B,); pixels: the images in [0, 1]; foreground:
    (B, H, W) bool masks or None; baseline: IG's and DeepLIFT's (1, C, H, W); shap_baselines:
    DeepSHAP's (N, C, H, W); deltas: the sensitivity perturbations (B, n, C, H, W); randomised: the
    model's randomised copy; options: :func:`nsde_ray.attribution.make_explainer`'s.
    """

    images: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    foreground: torch.Tensor | None
    baseline: torch.Tensor
    shap_baselines: torch.Tensor
    deltas: torch.Tensor
    randomised: nn.Module
    options: dict


@dataclass
class MethodContext:
    """One method's evaluation: its attributions (B, C, H, W) of ``inputs.images`` by Captum (``reference``),
    a fast explainer of the same maps (``fast``, for the perturbed inputs of max-sensitivity) and the
    randomised model's (``randomised``). ``results`` keeps what figures need beyond scalars (PIC curves,
    saturation), by metric name; ``per_image`` the metrics' per-image values (B,) by column name
    (:mod:`nsde_ray.common_images`), numbers or, for ``sic_knots_<m>``, text."""

    model: nn.Module
    method: str
    inputs: EvalInputs
    splits: DataSplits
    cfg: EvalConfig
    reference: Explainer
    fast: Explainer
    randomised: Explainer
    attributions: torch.Tensor
    results: dict[str, Any] = field(default_factory=dict)
    per_image: dict[str, list] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodMetric:
    """One metric: ``compute(context) -> {name: value}`` (names end in ``_<method>`` unless IG-only), and the
    name prefixes replicated across seeds."""

    name: str
    compute: Callable[[MethodContext], dict[str, float]]
    replicated: tuple[str, ...] = ()


def _randomisation(ctx: MethodContext) -> dict[str, float]:
    images, labels, method = ctx.inputs.images, ctx.inputs.labels, ctx.method
    similarity, repeatability = randomisation_check(
        ctx.reference,
        ctx.randomised,
        images,
        labels,
        ctx.attributions,
        ctx.cfg.seed,
        repeat=method in STOCHASTIC_METHODS,
    )
    metrics = {
        f"randomisation_similarity_{method}": similarity,
        f"randomisation_passed_{method}": float(passes_randomisation(similarity, repeatability)),
    }
    if repeatability is not None:
        metrics[f"randomisation_repeatability_{method}"] = repeatability
    return metrics


def _infidelity(ctx: MethodContext) -> dict[str, float]:
    values = infidelity(ctx.model, ctx.inputs.images, ctx.inputs.labels, ctx.attributions, seed=ctx.cfg.seed)
    ctx.per_image[f"infidelity_{ctx.method}"] = values.tolist()
    return {f"infidelity_{ctx.method}": float(values.mean())}


def _localisation(ctx: MethodContext) -> dict[str, float]:
    if ctx.inputs.foreground is None:
        return {}
    auc = localisation_auc(attribution_map(ctx.attributions), ctx.inputs.foreground)
    ctx.per_image[f"localisation_auc_{ctx.method}"] = auc.tolist()
    return {f"localisation_auc_{ctx.method}": float(np.nanmean(auc))}


def _sensitivity(ctx: MethodContext) -> dict[str, float]:
    cfg = ctx.cfg
    sensitivity = max_sensitivity(
        ctx.fast,
        ctx.model,
        ctx.inputs.images,
        ctx.inputs.labels,
        ctx.inputs.deltas,
        keep_prediction=cfg.keep_prediction,
        chunk_size=cfg.batch_size,
        explanations=ctx.attributions,
    )
    ctx.per_image[f"sensitivity_{ctx.method}"] = sensitivity.tolist()
    mean, valid = mean_sensitivity(sensitivity)
    return {f"sensitivity_{ctx.method}": mean, f"sensitivity_valid_fraction_{ctx.method}": valid}


def _pic(ctx: MethodContext) -> dict[str, float]:
    splits = ctx.splits
    pic = compute_pic(
        ctx.model,
        ctx.inputs.images,
        attribution_map(ctx.attributions, absolute=True),
        ctx.inputs.labels,
        mean=splits.mean,
        std=splits.std,
        seed=ctx.cfg.seed,
        batch_size=ctx.cfg.batch_size,
    )
    ctx.results["pic"] = pic
    ctx.per_image.update(
        {
            f"sic_{ctx.method}": pic.sic.tolist(),
            f"aic_{ctx.method}": pic.aic.tolist(),
            f"sic_knots_{ctx.method}": [encode_knots(knots) for knots in pic.sic_knots],
        }
    )
    return {
        f"sic_{ctx.method}": float(pic.sic_auc),
        f"aic_{ctx.method}": float(pic.aic_auc),
        f"sic_valid_fraction_{ctx.method}": float(np.isfinite(pic.sic).mean()),
    }


def _ig_completeness(ctx: MethodContext) -> dict[str, float]:
    if ctx.method != "ig":
        return {}
    error = completeness_error(ctx.model, ctx.inputs.images, ctx.inputs.labels, ctx.attributions, ctx.inputs.baseline)
    return {"ig_completeness_error": float(error.mean())}


def _ig_saturation(ctx: MethodContext) -> dict[str, float]:
    if ctx.method != "ig":
        return {}
    count = min(ctx.cfg.saturation_images, len(ctx.inputs.images))
    saturation = ig_saturation(
        ctx.model,
        ctx.inputs.images[:count],
        ctx.inputs.labels[:count],
        ctx.inputs.baseline,
        chunk_size=ctx.cfg.batch_size,
    )
    ctx.results["saturation"] = saturation
    return {
        "ig_alpha_95": float(saturation.alpha_95.mean()),
        "ig_grad_norm_after_saturation": float(saturation.grad_norm_after.mean()),
        "ig_grad_alignment_after_saturation": float(np.nanmean(saturation.alignment_after.numpy())),
    }


METHOD_METRICS: dict[str, MethodMetric] = {
    "randomisation": MethodMetric(
        "randomisation", _randomisation, ("randomisation_similarity_", "randomisation_repeatability_")
    ),
    "infidelity": MethodMetric("infidelity", _infidelity, ("infidelity_",)),
    "localisation": MethodMetric("localisation", _localisation, ("localisation_auc_",)),
    "sensitivity": MethodMetric("sensitivity", _sensitivity, ("sensitivity",)),
    "pic": MethodMetric("pic", _pic, ("sic", "aic_")),
    "ig_completeness": MethodMetric("ig_completeness", _ig_completeness, ("ig_",)),
    "ig_saturation": MethodMetric("ig_saturation", _ig_saturation, ("ig_",)),
}
