"""Attribution evaluation of a trained model: every metric for every method, plus figures.

As in the papers, the model is evaluated without noise (eval mode) on a fixed, seeded set of
correctly classified held-out (test-split) images. Metric names, per method m:
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
import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from nsde_ray import plots
from nsde_ray.attribution import (STOCHASTIC_METHODS, Explainer, attribution_map, check_applicable,
                                  completeness_error, eval_mode, ig_baseline, make_explainer)
from nsde_ray.config import EvalConfig
from nsde_ray.data import DataSplits, foreground_masks
from nsde_ray.metrics.faithfulness import infidelity
from nsde_ray.metrics.localisation import localisation_auc
from nsde_ray.metrics.pic import PicResult, compute_pic
from nsde_ray.metrics.randomisation import passes as passes_randomisation
from nsde_ray.metrics.randomisation import randomisation_check, randomised_copy
from nsde_ray.metrics.saturation import Saturation, ig_saturation
from nsde_ray.metrics.sensitivity import max_sensitivity, mean_sensitivity, uniform_perturbations

ARTIFACT_GRID = "attributions.png"
ARTIFACT_SIC = "sic_curve.png"
ARTIFACT_SATURATION = "ig_saturation.png"
GALLERY_DIR = "gallery"  # the first grid images as PNG files, <index>_<class>.png, for the dashboards


class EvaluationError(ValueError):
    """An evaluation that cannot run on this model and data; the message says why."""


@dataclass
class EvalResult:
    """Scalar metrics by name, the evaluated images' labels, and the artifact files written."""

    metrics: dict[str, float]
    labels: torch.Tensor
    artifacts: list[str] = field(default_factory=list)


def select_eval_images(model: nn.Module, dataset: Dataset, num_images: int, seed: int, device: torch.device,
                       batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num_images`` correctly classified images (N, C, H, W) and labels (N,), in a seeded order."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    kept_images, kept_labels, count = [], [], 0
    with torch.no_grad(), eval_mode(model):
        for images, labels in DataLoader(Subset(dataset, order), batch_size=batch_size):
            images, labels = images.to(device), labels.to(device)
            try:
                logits = model(images)
            except RuntimeError as err:  # e.g. a channel or size mismatch deep inside a conv
                raise EvaluationError(f"the model cannot take the evaluation images of shape "
                                      f"{tuple(images.shape[1:])} (C, H, W): {err}") from err
            correct = logits.argmax(dim=1) == labels
            kept_images.append(images[correct])
            kept_labels.append(labels[correct])
            count += int(correct.sum())
            if count >= num_images:
                break
    if count == 0:
        raise EvaluationError(f"the model classifies none of the {len(dataset)} held-out images correctly; "
                              "attributions are evaluated on correctly classified images only: train it longer "
                              "or check that model and data match")
    return torch.cat(kept_images)[:num_images], torch.cat(kept_labels)[:num_images]


def evaluate(model: nn.Module, splits: DataSplits, cfg: EvalConfig, out_dir: str | None = None,
             device: torch.device | str = "cpu", progress: bool = True) -> EvalResult:
    """Evaluate every method in ``cfg.methods``; figures go to ``out_dir`` when given."""
    device = torch.device(device)
    return _evaluate(model.to(device), splits, cfg, out_dir, device, progress)


@dataclass
class _Inputs:
    """What every method's evaluation reads, on the evaluation device.

    images (B, C, H, W), normalised, and labels (B,); pixels: the images in [0, 1]; foreground:
    (B, H, W) bool masks or None; baseline: IG's and DeepLIFT's (1, C, H, W); shap_baselines:
    DeepSHAP's (N, C, H, W); deltas: the sensitivity perturbations (B, n, C, H, W); randomised: the
    model's :func:`randomised_copy`; options: :func:`make_explainer`'s.
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


def _evaluate(model: nn.Module, splits: DataSplits, cfg: EvalConfig, out_dir: str | None, device: torch.device,
              progress: bool) -> EvalResult:
    inputs = _inputs(model, splits, cfg, device)
    metrics: dict[str, float] = {"eval_images": float(len(inputs.images))}
    maps: dict[str, torch.Tensor] = {}
    sic_curves: dict[str, np.ndarray] = {}
    stages = tqdm(total=3 * len(cfg.methods) + 1, desc="evaluate", disable=not progress)
    for method in cfg.methods:
        method_metrics, maps[method], pic = _evaluate_method(model, method, inputs, splits, cfg, stages)
        metrics.update(method_metrics)
        sic_curves[method] = pic.sic_curve
    stages.set_postfix_str("IG saturation")
    count = min(cfg.saturation_images, len(inputs.images))
    saturation = ig_saturation(model, inputs.images[:count], inputs.labels[:count], inputs.baseline,
                               chunk_size=cfg.batch_size)
    metrics["ig_alpha_95"] = float(saturation.alpha_95.mean())
    metrics["ig_grad_norm_after_saturation"] = float(saturation.grad_norm_after.mean())
    metrics["ig_grad_alignment_after_saturation"] = float(np.nanmean(saturation.alignment_after.numpy()))
    stages.update()
    stages.close()
    metrics["sensitivity"], metrics["sic"] = metrics["sensitivity_ig"], metrics["sic_ig"]
    artifacts = [] if out_dir is None else _figures(out_dir, splits, cfg, inputs, maps, sic_curves, pic.curve_x,
                                                    saturation, metrics)
    return EvalResult(metrics, inputs.labels.cpu(), artifacts)


def _inputs(model: nn.Module, splits: DataSplits, cfg: EvalConfig, device: torch.device) -> _Inputs:
    """The evaluation images of ``cfg.seed`` and everything the methods' metrics read besides (:class:`_Inputs`)."""
    images, labels = select_eval_images(model, splits.test, cfg.num_images, cfg.seed, device, cfg.batch_size)
    channel_std = torch.as_tensor(splits.std, device=device).view(1, -1, 1, 1)
    channel_mean = torch.as_tensor(splits.mean, device=device).view(1, -1, 1, 1)
    if images.shape[1] != len(splits.std):
        raise EvaluationError(f"images have {images.shape[1]} channels, the data set's normalisation {len(splits.std)}")
    baseline = ig_baseline(splits.mean, splits.std, cfg.baseline).to(device)
    options = dict(n_steps=cfg.n_steps, nt_samples=cfg.nt_samples, nt_stdev=cfg.nt_stdev / float(channel_std.mean()),
                   internal_batch_size=cfg.batch_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    pixels = images * channel_std + channel_mean
    return _Inputs(
        images=images, labels=labels, pixels=pixels, foreground=foreground_masks(splits, pixels),
        baseline=baseline.expand(1, *images.shape[1:]).contiguous(),
        shap_baselines=training_sample(splits.train_unaugmented, cfg.deepshap_baselines, cfg.seed).to(device),
        deltas=uniform_perturbations(images.shape, cfg.n_perturbations, cfg.sensitivity_radius, splits.std, generator),
        randomised=randomised_copy(model, cfg.seed), options=options)


def _evaluate_method(model: nn.Module, method: str, inputs: _Inputs, splits: DataSplits, cfg: EvalConfig,
                     stages: tqdm) -> tuple[dict[str, float], torch.Tensor, PicResult]:
    """``method``'s metrics, its signed maps (B, H, W) of the evaluation images, and their PIC."""
    images, labels = inputs.images, inputs.labels
    check_applicable(model, method, images[:1])
    reference, fast, randomised = _explainers(
        model, inputs.randomised, method, cfg.batch_size,
        baselines=inputs.shap_baselines if method == "deepshap" else inputs.baseline, **inputs.options)
    stages.set_postfix_str(f"{method}: attributions")
    attributions = reference(images, labels)
    signed_maps = attribution_map(attributions)
    similarity, repeatability = randomisation_check(reference, randomised, images, labels, attributions, cfg.seed,
                                                    repeat=method in STOCHASTIC_METHODS)
    metrics = {f"randomisation_similarity_{method}": similarity,
               f"randomisation_repeatability_{method}": repeatability,
               f"randomisation_passed_{method}": float(passes_randomisation(similarity, repeatability)),
               f"infidelity_{method}": float(infidelity(model, images, labels, attributions, seed=cfg.seed).mean())}
    if inputs.foreground is not None:
        metrics[f"localisation_auc_{method}"] = float(np.nanmean(localisation_auc(signed_maps, inputs.foreground)))
    stages.update()
    stages.set_postfix_str(f"{method}: sensitivity")
    sensitivity = max_sensitivity(fast, model, images, labels, inputs.deltas, keep_prediction=cfg.keep_prediction,
                                  chunk_size=cfg.batch_size, explanations=attributions)
    metrics[f"sensitivity_{method}"], metrics[f"sensitivity_valid_fraction_{method}"] = mean_sensitivity(sensitivity)
    stages.update()
    stages.set_postfix_str(f"{method}: SIC")
    pic = compute_pic(model, images, attribution_map(attributions, absolute=True), labels, mean=splits.mean,
                      std=splits.std, seed=cfg.seed, batch_size=cfg.batch_size)
    metrics[f"sic_{method}"], metrics[f"aic_{method}"] = float(pic.sic_auc), float(pic.aic_auc)
    metrics[f"sic_valid_fraction_{method}"] = float(np.isfinite(pic.sic).mean())
    stages.update()
    if method == "ig":
        metrics["ig_completeness_error"] = float(completeness_error(model, images, labels, attributions,
                                                                    inputs.baseline).mean())
    return metrics, signed_maps, pic


def _figures(out_dir: str, splits: DataSplits, cfg: EvalConfig, inputs: _Inputs, maps: dict[str, torch.Tensor],
             sic_curves: dict[str, np.ndarray], curve_x: np.ndarray, saturation: Saturation,
             metrics: dict[str, float]) -> list[str]:
    """The attribution grid, SIC curves, saturation figure and gallery images, written to ``out_dir``: their paths."""
    os.makedirs(out_dir, exist_ok=True)
    shown = min(cfg.grid_images, len(inputs.images))
    names = [splits.class_names[int(label)] for label in inputs.labels[:shown]]
    artifacts = [os.path.join(out_dir, name) for name in (ARTIFACT_GRID, ARTIFACT_SIC, ARTIFACT_SATURATION)]
    plots.attribution_grid(artifacts[0], inputs.pixels[:shown], {m: v[:shown] for m, v in maps.items()}, names)
    plots.sic_curves(artifacts[1], curve_x, sic_curves, {m: metrics[f"sic_{m}"] for m in sic_curves})
    plots.saturation(artifacts[2], saturation)
    os.makedirs(os.path.join(out_dir, GALLERY_DIR), exist_ok=True)
    for index, name in enumerate(names):
        artifacts.append(os.path.join(out_dir, GALLERY_DIR, f"{index:02d}_{_file_safe(name)}.png"))
        plots.save_image(artifacts[-1], inputs.pixels[index])
    return artifacts


def _explainers(model: nn.Module, randomised: nn.Module, method: str, batch_size: int,
                **options) -> tuple[Explainer, Explainer, Explainer]:
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
    return (in_batches(make_explainer(model, method, **options), batch_size),
            in_batches(make_explainer(model, method, **fast), batch_size),
            in_batches(make_explainer(randomised, method, **options), batch_size))


def in_batches(explain: Explainer, batch_size: int) -> Explainer:
    """``explain`` applied ``batch_size`` inputs at a time, the results concatenated."""

    def batched(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([explain(inputs[s:s + batch_size], target[s:s + batch_size])
                          for s in range(0, len(inputs), batch_size)])

    return batched


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def training_sample(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` images (count, C, H, W) of ``dataset`` in a seeded order: DeepSHAP's baseline distribution."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 1))[:count]
    return torch.stack([dataset[int(i)][0] for i in order])


REPEATS_FILE = "eval_repeats.csv"


def evaluate_repeated(model: nn.Module, splits: DataSplits, cfg: EvalConfig, repeats: int = 1,
                      out_dir: str | None = None, device: torch.device | str = "cpu",
                      progress: bool = True) -> EvalResult:
    """:func:`evaluate` ``repeats`` times, as the papers did (100 images, 5 times): mean and std of every metric.

    Repeat r runs with seed ``cfg.seed + r`` (and the global torch RNG seeded with it, for
    SmoothGrad's noise), so each repeat draws its own set of correctly classified test images, its
    own sensitivity perturbations, DeepSHAP baselines, infidelity and SIC randomness; the model is
    the same. With ``repeats`` 1 this is :func:`evaluate`. Otherwise metrics keep their names and
    hold the mean over repeats (NaN repeats left out), ``<name>_std`` the sample std (ddof 1);
    figures come from the first repeat, and ``out_dir`` also gets :data:`REPEATS_FILE` (one row per
    repeat: seed, then every metric).
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise EvaluationError(f"repeats must be an integer >= 1, got {repeats!r}")
    results = []
    for repeat in range(repeats):
        torch.manual_seed(cfg.seed + repeat)
        results.append(evaluate(model, splits, replace(cfg, seed=cfg.seed + repeat),
                                out_dir=out_dir if repeat == 0 else None, device=device, progress=progress))
    if repeats == 1:
        return results[0]
    names = list(results[0].metrics)
    table = np.array([[result.metrics.get(name, np.nan) for name in names] for result in results], dtype=float)
    metrics: dict[str, float] = {}
    with warnings.catch_warnings():  # a metric NaN in every repeat stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, column in zip(names, table.T):
            metrics[name] = float(np.nanmean(column))
            metrics[f"{name}_std"] = float(np.nanstd(column, ddof=1)) if np.isfinite(column).sum() > 1 else float("nan")
    artifacts = list(results[0].artifacts)
    if out_dir is not None:
        artifacts.append(os.path.join(out_dir, REPEATS_FILE))
        with open(artifacts[-1], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seed", *names])
            writer.writerows([cfg.seed + repeat, *row] for repeat, row in enumerate(table.tolist()))
    return EvalResult(metrics, results[0].labels, artifacts)
