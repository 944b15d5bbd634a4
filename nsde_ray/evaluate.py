"""Attribution evaluation of a trained model: every metric for every method, plus figures.

As in the papers, the model is evaluated without noise (eval mode) on correctly classified held-out
images: the candidates are the first ``num_images`` test-split images in the order the evaluation seed
draws, the same for every model, and a model is scored on the candidates it classifies correctly
(``eval_images`` of them), so the image sets of compared models are subsets of one common set; its
per-image values (:attr:`EvalResult.per_image`, the artifact :data:`ARTIFACT_PER_IMAGE`) let
comparisons take the images every compared model scored (:mod:`nsde_ray.common_images`). Metric
names, per method m:
``sensitivity_m`` (mean max-sensitivity, lower is better), ``sensitivity_valid_fraction_m``
(share of images with at least one prediction-preserving perturbation), ``sic_m`` and ``aic_m``
(AUC of the median PIC curves, higher is better; ``sic_valid_fraction_m`` is the share of images
PAIR's rules keep), ``infidelity_m`` (lower is better),
``localisation_auc_m`` (where the data set has foreground masks), and the model-parameter
randomisation check (:mod:`nsde_ray.metrics.randomisation`): ``randomisation_similarity_m``,
``randomisation_repeatability_m`` and ``randomisation_passed_m`` (1 or 0). ``sensitivity`` and ``sic`` are
IG's (the sweep's objectives). IG saturation: ``ig_alpha_95``, ``ig_grad_norm_after_saturation``,
``ig_grad_alignment_after_saturation``; IG completeness: ``ig_completeness_error``.
:func:`evaluate_repeated` repeats all of it on new seeded image sets (the papers' protocol) and adds
``<name>_std``, the std over repeats.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from nsde_ray import common_images, plots
from nsde_ray.aggregate import mean_and_spread
from nsde_ray.attribution import Explainer, attribution_map, check_applicable, eval_mode, ig_baseline, make_explainer
from nsde_ray.common_images import ARTIFACT_PER_IMAGE
from nsde_ray.config import EvalConfig
from nsde_ray.data import DataSplits, foreground_masks
from nsde_ray.metric_registry import METHOD_METRICS, EvalInputs, MethodContext
from nsde_ray.metrics.randomisation import randomised_copy
from nsde_ray.metrics.sensitivity import uniform_perturbations
from nsde_ray.registry import OBJECTIVES

ARTIFACT_GRID = "attributions.png"
ARTIFACT_SIC = "sic_curve.png"
ARTIFACT_SATURATION = "ig_saturation.png"
GALLERY_DIR = "gallery"  # the first grid images as PNG files, <index>_<class>.png, for the dashboards


class EvaluationError(ValueError):
    """An evaluation that cannot run on this model and data; the message says why."""


@dataclass
class EvalResult:
    """Scalar metrics by name, the evaluated images' labels, the artifact files written, and the per-image record:
    one row per candidate image (and repeat) with the per-image metric values (:mod:`nsde_ray.common_images`)."""

    metrics: dict[str, float]
    labels: torch.Tensor
    artifacts: list[str] = field(default_factory=list)
    per_image: list[common_images.Row] = field(default_factory=list)


@dataclass
class EvalImages:
    """One evaluation seed's candidates and the ones the model scored.

    candidates: (M,) test-split indices; candidate_labels: (M,); scored: (M,) bool, classified correctly;
    images (N, C, H, W) and labels (N,): the scored candidates, on the evaluation device (N = scored.sum()).
    """

    candidates: list[int]
    candidate_labels: torch.Tensor
    scored: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


def candidate_indices(size: int, num_images: int, seed: int) -> list[int]:
    """The evaluation's candidates: the first ``num_images`` of a test split's ``size`` indices in the order ``seed``
    draws; the same for every model."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:num_images].tolist()


def select_eval_images(
    model: nn.Module, dataset: Dataset, num_images: int, seed: int, device: torch.device, batch_size: int = 256
) -> EvalImages:
    """The :func:`candidate_indices` of ``dataset`` and the ones ``model`` classifies correctly, in the seeded order."""
    candidates = candidate_indices(len(dataset), num_images, seed)
    images, labels = default_collate([dataset[i] for i in candidates])
    with torch.no_grad(), eval_mode(model):
        predicted = torch.cat([_predict(model, chunk.to(device)) for chunk in images.split(batch_size)])
    scored = predicted.cpu() == labels
    if not scored.any():
        raise EvaluationError(
            f"the model classifies none of the {len(candidates)} candidate images correctly (the first "
            f"{len(candidates)} held-out images in the order of evaluation seed {seed}); attributions are evaluated "
            "on correctly classified images only: train it longer or check that model and data match"
        )
    return EvalImages(candidates, labels, scored, images[scored].to(device), labels[scored].to(device))


def _predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model``'s classes (B,) of ``images`` (B, C, H, W); a clear error where it cannot take them."""
    try:
        return model(images).argmax(dim=1)
    except RuntimeError as err:  # e.g. a channel or size mismatch deep inside a conv
        raise EvaluationError(
            f"the model cannot take the evaluation images of shape {tuple(images.shape[1:])} (C, H, W): {err}"
        ) from err


def per_image_rows(seed: int, selection: EvalImages, values: dict[str, list]) -> list[common_images.Row]:
    """One row per candidate of ``selection``: seed, test index, label, scored (1 or 0), then each column of
    ``values`` (per scored image, N each), NaN where the candidate was not scored."""
    position = torch.cumsum(selection.scored, 0).sub(1).tolist()
    return [
        {
            "seed": seed,
            "index": index,
            "label": label,
            "scored": int(scored),
            **{name: column[position[k]] if scored else math.nan for name, column in values.items()},
        }
        for k, (index, label, scored) in enumerate(
            zip(selection.candidates, selection.candidate_labels.tolist(), selection.scored.tolist())
        )
    ]


def evaluate(
    model: nn.Module,
    splits: DataSplits,
    cfg: EvalConfig,
    out_dir: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Evaluate every method in ``cfg.methods``; figures and the per-image record (:data:`ARTIFACT_PER_IMAGE`) go to
    ``out_dir`` when given."""
    device = torch.device(device)
    return _evaluate(model.to(device), splits, cfg, out_dir, device, progress)


def _evaluate(
    model: nn.Module, splits: DataSplits, cfg: EvalConfig, out_dir: str | None, device: torch.device, progress: bool
) -> EvalResult:
    selection = select_eval_images(model, splits.test, cfg.num_images, cfg.seed, device, cfg.batch_size)
    inputs = _inputs(model, selection, splits, cfg, device)
    metrics: dict[str, float] = {"eval_images": float(len(inputs.images))}
    maps: dict[str, torch.Tensor] = {}
    results: dict[str, dict] = {}
    per_image: dict[str, list] = {}
    stages = tqdm(total=len(cfg.methods) * (len(METHOD_METRICS) + 1), desc="evaluate", disable=not progress)
    for method in cfg.methods:
        ctx = _method_context(model, method, inputs, splits, cfg, stages)
        maps[method] = attribution_map(ctx.attributions)
        for metric in METHOD_METRICS.values():
            stages.set_postfix_str(f"{method}: {metric.name}")
            metrics.update(metric.compute(ctx))
            stages.update()
        results[method] = ctx.results
        per_image.update(ctx.per_image)
    stages.close()
    metrics.update({o.name: metrics[o.source] for o in OBJECTIVES.values() if o.source in metrics})
    rows = per_image_rows(cfg.seed, selection, per_image)
    artifacts = []
    if out_dir is not None:
        artifacts = _figures(out_dir, splits, cfg, inputs, maps, results, metrics)
        artifacts.append(common_images.write_csv(os.path.join(out_dir, ARTIFACT_PER_IMAGE), rows))
    return EvalResult(metrics, inputs.labels.cpu(), artifacts, rows)


def _inputs(
    model: nn.Module, selection: EvalImages, splits: DataSplits, cfg: EvalConfig, device: torch.device
) -> EvalInputs:
    """The scored images of ``selection`` and everything the methods' metrics read besides (:class:`EvalInputs`)."""
    images, labels = selection.images, selection.labels
    channel_std = torch.as_tensor(splits.std, device=device).view(1, -1, 1, 1)
    channel_mean = torch.as_tensor(splits.mean, device=device).view(1, -1, 1, 1)
    if images.shape[1] != len(splits.std):
        raise EvaluationError(f"images have {images.shape[1]} channels, the data set's normalisation {len(splits.std)}")
    baseline = ig_baseline(splits.mean, splits.std, cfg.baseline).to(device)
    options = dict(
        n_steps=cfg.n_steps,
        nt_samples=cfg.nt_samples,
        nt_stdev=cfg.nt_stdev / float(channel_std.mean()),
        internal_batch_size=cfg.batch_size,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    pixels = images * channel_std + channel_mean
    return EvalInputs(
        images=images,
        labels=labels,
        pixels=pixels,
        foreground=foreground_masks(splits, pixels),
        baseline=baseline.expand(1, *images.shape[1:]).contiguous(),
        shap_baselines=training_sample(splits.train_unaugmented, cfg.deepshap_baselines, cfg.seed).to(device),
        deltas=uniform_perturbations(images.shape, cfg.n_perturbations, cfg.sensitivity_radius, splits.std, generator),
        randomised=randomised_copy(model, cfg.seed),
        options=options,
    )


def _method_context(
    model: nn.Module, method: str, inputs: EvalInputs, splits: DataSplits, cfg: EvalConfig, stages: tqdm
) -> MethodContext:
    """``method``'s explainers and its Captum attributions of the evaluation images: what its metrics read."""
    check_applicable(model, method, inputs.images[:1])
    reference, fast, randomised = _explainers(
        model,
        inputs.randomised,
        method,
        cfg.batch_size,
        baselines=inputs.shap_baselines if method == "deepshap" else inputs.baseline,
        **inputs.options,
    )
    stages.set_postfix_str(f"{method}: attributions")
    attributions = reference(inputs.images, inputs.labels)
    stages.update()
    return MethodContext(model, method, inputs, splits, cfg, reference, fast, randomised, attributions)


def _figures(
    out_dir: str,
    splits: DataSplits,
    cfg: EvalConfig,
    inputs: EvalInputs,
    maps: dict[str, torch.Tensor],
    results: dict[str, dict],
    metrics: dict[str, float],
) -> list[str]:
    """The attribution grid, SIC curves, saturation figure and gallery images, written to ``out_dir``: their paths.

    ``results``: each method's :attr:`MethodContext.results` (its PIC, and IG's saturation)."""
    os.makedirs(out_dir, exist_ok=True)
    shown = min(cfg.grid_images, len(inputs.images))
    names = [splits.class_names[int(label)] for label in inputs.labels[:shown]]
    artifacts = [os.path.join(out_dir, ARTIFACT_GRID)]
    plots.attribution_grid(artifacts[0], inputs.pixels[:shown], {m: v[:shown] for m, v in maps.items()}, names)
    pics = {method: result["pic"] for method, result in results.items() if "pic" in result}
    if pics:
        artifacts.append(os.path.join(out_dir, ARTIFACT_SIC))
        plots.sic_curves(
            artifacts[-1],
            next(iter(pics.values())).curve_x,
            {m: pic.sic_curve for m, pic in pics.items()},
            {m: metrics[f"sic_{m}"] for m in pics},
        )
    if "saturation" in results.get("ig", {}):
        artifacts.append(os.path.join(out_dir, ARTIFACT_SATURATION))
        plots.saturation(artifacts[-1], results["ig"]["saturation"])
    os.makedirs(os.path.join(out_dir, GALLERY_DIR), exist_ok=True)
    for index, name in enumerate(names):
        artifacts.append(os.path.join(out_dir, GALLERY_DIR, f"{index:02d}_{_file_safe(name)}.png"))
        plots.save_image(artifacts[-1], inputs.pixels[index])
    return artifacts


def _explainers(
    model: nn.Module, randomised: nn.Module, method: str, batch_size: int, **options
) -> tuple[Explainer, Explainer, Explainer]:
    """(reference, fast, randomised) explainers of ``method``, ``batch_size`` model inputs (B, C, H, W) per call.

    reference and randomised: Captum's, of ``model`` and of its :func:`randomised_copy`, for the
    maps that thresholds and ranks read (SIC, localisation, the randomisation check), which
    rounding alone could move. fast: ``model``'s fast path where the method has one
    (:func:`nsde_ray.attribution.make_explainer`, fast; Captum's values to float rounding, the
    same noise for ``ig_nt``), for the perturbed inputs of max-sensitivity, a relative L2 change.
    DeepSHAP runs each input with its N baselines, 2N model inputs, so it takes batch_size // 2N
    inputs per call (at least one; the maps do not depend on the split). options: as
    :func:`make_explainer`'s.
    """
    if method == "deepshap":
        batch_size = max(1, batch_size // (2 * len(options["baselines"])))
    fast = dict(options, fast=True, memory_format=torch.channels_last, stem_gradient=False)  # fastest on CPU
    return (
        in_batches(make_explainer(model, method, **options), batch_size),
        in_batches(make_explainer(model, method, **fast), batch_size),
        in_batches(make_explainer(randomised, method, **options), batch_size),
    )


def in_batches(explain: Explainer, batch_size: int) -> Explainer:
    """``explain`` applied ``batch_size`` inputs at a time, the results concatenated."""

    def batched(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [explain(inputs[s : s + batch_size], target[s : s + batch_size]) for s in range(0, len(inputs), batch_size)]
        )

    return batched


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def training_sample(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` images (count, C, H, W) of ``dataset`` in a seeded order: DeepSHAP's baseline distribution."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 1))[:count]
    return torch.stack([dataset[int(i)][0] for i in order])


REPEATS_FILE = "eval_repeats.csv"


def evaluate_repeated(
    model: nn.Module,
    splits: DataSplits,
    cfg: EvalConfig,
    repeats: int = 1,
    out_dir: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EvalResult:
    """:func:`evaluate` ``repeats`` times, as the papers did (100 images, 5 times): mean and std of every metric.

    Repeat r runs with seed ``cfg.seed + r`` (and the global torch RNG seeded with it, for
    SmoothGrad's noise), so each repeat draws its own candidate images (the same for every model),
    its own sensitivity perturbations, DeepSHAP baselines, infidelity and SIC randomness; the model is
    the same. With ``repeats`` 1 this is :func:`evaluate`. Otherwise metrics keep their names and
    hold the mean over repeats (NaN repeats left out), ``<name>_std`` the sample std (ddof 1);
    figures come from the first repeat, the per-image record (:data:`ARTIFACT_PER_IMAGE`) holds every
    repeat's rows, and ``out_dir`` also gets :data:`REPEATS_FILE` (one row per repeat: seed, then every
    metric).
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise EvaluationError(f"repeats must be an integer >= 1, got {repeats!r}")
    results = []
    for repeat in range(repeats):
        torch.manual_seed(cfg.seed + repeat)
        results.append(
            evaluate(
                model,
                splits,
                replace(cfg, seed=cfg.seed + repeat),
                out_dir=out_dir if repeat == 0 else None,
                device=device,
                progress=progress,
            )
        )
    if repeats == 1:
        return results[0]
    names = list(results[0].metrics)
    table = np.array([[result.metrics.get(name, np.nan) for name in names] for result in results], dtype=float)
    metrics: dict[str, float] = {}
    for name, column in zip(names, table.T):
        metrics[name], metrics[f"{name}_std"] = mean_and_spread(column, skip_nan=True)
    per_image = [row for result in results for row in result.per_image]
    artifacts = list(results[0].artifacts)
    if out_dir is not None:
        common_images.write_csv(os.path.join(out_dir, ARTIFACT_PER_IMAGE), per_image)
        artifacts.append(os.path.join(out_dir, REPEATS_FILE))
        with open(artifacts[-1], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seed", *names])
            writer.writerows([cfg.seed + repeat, *row] for repeat, row in enumerate(table.tolist()))
    return EvalResult(metrics, results[0].labels, artifacts, per_image)
