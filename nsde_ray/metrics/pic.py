"""Performance Information Curves: SIC and AIC (Kapishnikov et al. 2019, "XRAI: Better Attributions
Through Regions", ICCV), the shaping paper's "Self-consistency with model output" metric.

The shaping paper (Self-consistency section) re-introduces image content into a blurred ("bokeh")
version of the image, most salient pixels first, monitors the model's softmax of the original
class (the Softmax Information Curve, SIC) and reports the area under the curve. We reproduce the
PAIR ``saliency`` package's ``saliency.metrics.pic`` (v0.2.1) exactly (tested against it):

1. Start image: the image interpolated (Delaunay, linear) from a random ``random_mask_fraction``
   of its pixels plus the four corners; intermediate images add the pixels whose saliency is at or
   above the ``1 - t`` quantile, for each threshold ``t``. Images are uint8, as in PAIR.
2. Information (x axis): lossless WebP size in bytes, normalised to [0, 1] between the fully
   blurred and the original image (clipped).
3. Performance (y axis), normalised the same way between the blurred and the original image and
   clipped to [0, 1]: SIC tracks softmax[target]; AIC tracks 1.0 if the top-1 class is ``target``.
   With ``keep_monotonous`` the curve is the running maximum over thresholds.
4. The points, plus (0, 0) and (1, 1), are linearly interpolated at ``num_data_points`` x values
   in [0, 1] (the last is 1 with y = 1); per-image AUC by the trapezoid rule.
5. Data set: the median curve over the images that were not skipped, and its AUC.

PAIR skips an image (raises ``ComputePicMetricError``) when its prediction on the original image
is below ``min_pred_value``, when the fully blurred image's WebP is not smaller than the
original's, or when the fully blurred image's prediction is not below the original's. We return
NaN for such images, separately for SIC and AIC. For AIC the predictions are 0/1, so an image
counts only if the original is classified as ``target`` and the fully blurred image is not.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy.spatial import Delaunay
from torch import nn

from nsde_ray.attribution import eval_mode

DEFAULT_POINTS = 1001  # points of each curve, x = 1 included
DEFAULT_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)


@dataclass
class PicResult:
    """Per-image AUCs and the data-set curves; AUCs are fractions of the unit square, in [0, 1]."""

    sic: np.ndarray  # (B,) per-image SIC AUC, NaN where PAIR would skip the image
    aic: np.ndarray  # (B,) per-image AIC AUC, NaN likewise
    sic_curve: np.ndarray  # (num_data_points,) median SIC curve over the kept images (PAIR's aggregate)
    aic_curve: np.ndarray  # (num_data_points,)
    curve_x: np.ndarray  # (num_data_points,) normalised information, 0 to 1
    sic_auc: float  # AUC of sic_curve: the data-set SIC metric (NaN if every image was skipped)
    aic_auc: float
    sic_knots: list[np.ndarray | None]  # per image, the (2, K) knots (x; y) its SIC curve interpolates, or None


def curve_points(num_data_points: int) -> np.ndarray:
    """(num_data_points,) normalised information, 0 to 1, where the curves are evaluated."""
    return np.append(np.linspace(0.0, 1.0, num_data_points - 1, endpoint=False), 1.0)


def random_masks(batch: int, height: int, width: int, fraction: float = 0.01, seed: int = 0) -> np.ndarray:
    """(batch, height, width) bool: per image ``int(height * width * fraction)`` pixels, as PAIR's
    ``generate_random_mask`` draws them, from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, height * width), dtype=bool)
    for mask in masks:
        mask[rng.choice(height * width, size=int(height * width * fraction), replace=False)] = True
    return masks.reshape(batch, height, width)


def blurred_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PAIR's ``create_blurred_image`` for uint8 (H, W, C) ``image`` and (H, W) bool ``mask``.

    Same Qhull triangulation of the kept pixels (corners added), but the linear interpolation is
    done with exact integer barycentric weights instead of SciPy's point location and per-triangle
    LAPACK calls (slow). SciPy's float64 values are within ~1e-13 of these exact ratios of small
    integers, which cannot change their rounding to float32 and then to uint8, so the result is
    bit-identical to PAIR's (tested).
    """
    height, width, _ = image.shape
    mask = mask.copy()
    mask[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    if mask.all():
        return image
    points = np.argwhere(mask)
    values = image[mask].astype(np.int64)
    simplices = Delaunay(points.astype(np.float64)).simplices
    a, b, c = (points[simplices[:, k]] for k in range(3))
    det = (a[:, 0] - c[:, 0]) * (b[:, 1] - c[:, 1]) - (a[:, 1] - c[:, 1]) * (b[:, 0] - c[:, 0])
    corners = points[simplices]
    low = corners.min(axis=1)
    extent = corners.max(axis=1) - low + 1
    sizes = np.where(det != 0, extent.prod(axis=1), 0)
    # Every grid pixel in each triangle's bounding box, then the exact inside test.
    t = np.repeat(np.arange(len(sizes)), sizes)
    k = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows, cols = low[t, 0] + k // extent[t, 1], low[t, 1] + k % extent[t, 1]
    d0, d1 = rows - c[t, 0], cols - c[t, 1]
    n0 = (b[t, 1] - c[t, 1]) * d0 - (b[t, 0] - c[t, 0]) * d1
    n1 = (a[t, 0] - c[t, 0]) * d1 - (a[t, 1] - c[t, 1]) * d0
    n2 = det[t] - n0 - n1
    inside = ~mask[rows, cols] & (n0 * det[t] >= 0) & (n1 * det[t] >= 0) & (n2 * det[t] >= 0)
    t, n0, n1, n2 = t[inside], n0[inside, None], n1[inside, None], n2[inside, None]
    tri = simplices[t]
    interpolated = (n0 * values[tri[:, 0]] + n1 * values[tri[:, 1]] + n2 * values[tri[:, 2]]) / det[t, None]
    out = image * mask[..., None].astype(np.float32)
    out[~mask] = image.mean(axis=(0, 1))  # SciPy's fill value; never used, the corners span the image
    out[rows[inside], cols[inside]] = interpolated
    return np.round(out).astype(np.uint8)


def webp_size(image: np.ndarray) -> int:
    """PAIR's ``estimate_image_entropy``: bytes of the lossless WebP of uint8 (H, W, C), C in {1, 3}."""
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image).save(
        buffer, format="webp", lossless=True, quality=100
    )
    return buffer.tell()


def pic_knots(
    information: np.ndarray, performance: np.ndarray, *, min_pred_value: float, keep_monotonous: bool = True
) -> np.ndarray | None:
    """One image's PIC as (2, T + 2) knots (normalised information; performance), x ascending with (0, 0) and
    (1, 1), or None where PAIR raises ``ComputePicMetricError``.

    ``information`` and ``performance``: (T + 2,) for [original, fully blurred, thresholds...].
    """
    (info_full, info_blur), (perf_full, perf_blur) = information[:2], performance[:2]
    if perf_full < min_pred_value or info_blur >= info_full or perf_blur >= perf_full:
        return None
    x = np.clip((information[2:] - info_blur) / (info_full - info_blur), 0.0, 1.0)
    y = np.clip((performance[2:] - perf_blur) / (perf_full - perf_blur), 0.0, 1.0)
    if keep_monotonous:
        y = np.maximum.accumulate(y)
    x, y = np.append(x, [0.0, 1.0]), np.append(y, [0.0, 1.0])
    order = np.argsort(x, kind="mergesort")  # as scipy's interp1d sorts before np.interp
    return np.stack([x[order], y[order]])


def knots_curve(knots: np.ndarray, curve_x: np.ndarray) -> np.ndarray:
    """The curve (len(curve_x),) through (2, K) ``knots`` (:func:`pic_knots`), linear between them, 1 at x = 1."""
    curve = np.interp(curve_x, knots[0], knots[1])
    curve[-1] = 1.0
    return curve


def pic_curve(
    information: np.ndarray,
    performance: np.ndarray,
    curve_x: np.ndarray,
    *,
    min_pred_value: float,
    keep_monotonous: bool = True,
) -> np.ndarray | None:
    """One image's PIC on ``curve_x``, or None where PAIR raises ``ComputePicMetricError`` (:func:`pic_knots`)."""
    knots = pic_knots(information, performance, min_pred_value=min_pred_value, keep_monotonous=keep_monotonous)
    return None if knots is None else knots_curve(knots, curve_x)


def median_auc(knots: list[np.ndarray | None], num_data_points: int = DEFAULT_POINTS) -> float:
    """The data-set metric of per-image :func:`pic_knots` (None: skipped): AUC of the median curve over the
    kept images, on ``num_data_points`` points (:func:`compute_pic`'s); NaN when every image was skipped."""
    curve_x = curve_points(num_data_points)
    return _summarise([None if k is None else knots_curve(k, curve_x) for k in knots], curve_x)[2]


def compute_pic(
    model: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    saliency_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    num_data_points: int = DEFAULT_POINTS,
    random_mask_fraction: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    min_pred_value: float = 0.5,
    keep_monotonous: bool = True,
) -> PicResult:
    """SIC and AIC of saliency maps, per image and over the data set (see the module docstring).

    images: (B, C, H, W) normalised model inputs, C in {1, 3}; ``images * std + mean`` in [0, 1] is
    rounded to uint8 (the model then sees ``(uint8 / 255 - mean) / std``, also on the original).
    saliency: (B, H, W), higher = more important (take ``abs`` first if that is the ranking wanted).
    target: (B,) class whose softmax is tracked, normally the model's prediction on the image.
    num_data_points: points of each curve including x = 1 (PAIR's ``num_data_points`` + 1).
    min_pred_value: images whose original softmax[target] (SIC) or 0/1 accuracy (AIC) is below it
    are skipped; 0.5 as in PAIR's example notebook (its function default is 0.8).
    The random masks are :func:`random_masks` (``random_mask_fraction``, ``seed``), so every
    saliency method sees the same start image. Model calls are batched, ``batch_size`` at a time.
    Returns AUCs in [0, 1] (fraction of the unit square), NaN where an image or all images are skipped.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if tuple(saliency.shape) != (batch, height, width):
        raise ValueError(
            f"saliency must be (B, H, W) = {(batch, height, width)} to match images, got {tuple(saliency.shape)}"
        )
    if tuple(target.shape) != (batch,):
        raise ValueError(f"target must be (B,) = ({batch},), got {tuple(target.shape)}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if not saliency_thresholds or not all(0.0 < t <= 1.0 for t in saliency_thresholds):
        raise ValueError(f"saliency_thresholds must be fractions in (0, 1], got {list(saliency_thresholds)}")
    if num_data_points < 2:
        raise ValueError(f"num_data_points must be at least 2, got {num_data_points}")

    device = images.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    pixels = (images.detach() * std_t + mean_t).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    saliency_np = saliency.detach().cpu().numpy()
    targets = target.detach().cpu().numpy()
    masks = random_masks(batch, height, width, random_mask_fraction, seed)
    curve_x = curve_points(num_data_points)

    n_versions = len(saliency_thresholds) + 2  # original, fully blurred, one per threshold
    per_chunk = max(1, batch_size // n_versions)
    sic_knots: list[np.ndarray | None] = []
    aic_curves: list[np.ndarray | None] = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, batch, per_chunk):
            stack, information = [], []
            for i in range(start, min(start + per_chunk, batch)):
                keep = [masks[i]] + [
                    (saliency_np[i] >= np.quantile(saliency_np[i], 1 - t)) | masks[i] for t in saliency_thresholds
                ]
                versions = [pixels[i]] + [blurred_image(pixels[i], m) for m in keep]
                information.append(np.array([webp_size(v) for v in versions]))
                stack.extend(versions)
            inputs = torch.from_numpy(np.stack(stack)).to(device).permute(0, 3, 1, 2).float() / 255.0
            probs = (
                torch.cat([torch.softmax(model((chunk - mean_t) / std_t), dim=1) for chunk in inputs.split(batch_size)])
                .double()
                .cpu()
                .numpy()
            )
            probs = probs.reshape(len(information), n_versions, -1)
            for info, p, cls in zip(information, probs, targets[start : start + per_chunk]):
                sic_knots.append(
                    pic_knots(info, p[:, cls], min_pred_value=min_pred_value, keep_monotonous=keep_monotonous)
                )
                aic_curves.append(
                    pic_curve(
                        info,
                        (p.argmax(axis=1) == cls).astype(np.float64),
                        curve_x,
                        min_pred_value=min_pred_value,
                        keep_monotonous=keep_monotonous,
                    )
                )

    sic_curves = [None if k is None else knots_curve(k, curve_x) for k in sic_knots]
    sic, sic_curve, sic_auc = _summarise(sic_curves, curve_x)
    aic, aic_curve, aic_auc = _summarise(aic_curves, curve_x)
    return PicResult(
        sic=sic,
        aic=aic,
        sic_curve=sic_curve,
        aic_curve=aic_curve,
        curve_x=curve_x,
        sic_auc=sic_auc,
        aic_auc=aic_auc,
        sic_knots=sic_knots,
    )


def _summarise(curves: list[np.ndarray | None], curve_x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-image AUCs (NaN for skipped images), PAIR's median curve and its AUC."""
    aucs = np.array([np.nan if c is None else np.trapezoid(c, curve_x) for c in curves])
    kept = [c for c in curves if c is not None]
    median = np.median(kept, axis=0) if kept else np.full_like(curve_x, np.nan)
    return aucs, median, float(np.trapezoid(median, curve_x))
