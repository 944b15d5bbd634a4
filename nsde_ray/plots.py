"""PNG figures of an evaluation: attribution grids, SIC curves, IG saturation (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nsde_ray.metrics.saturation import Saturation  # noqa: E402


def to_display(pixels: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) grey or (H, W, 3) RGB for imshow."""
    array = pixels.clamp(0, 1).cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def attribution_grid(path: str, pixels: torch.Tensor, maps: dict[str, torch.Tensor], labels: list[str]) -> None:
    """One row per image: the input, then each method's signed map (B, H, W) over a grey copy of it.

    A diverging colormap (red positive, blue negative) is centred on zero and scaled per map to
    its 99th percentile of |attribution|, so one extreme pixel does not wash the map out.
    """
    rows, columns = len(pixels), 1 + len(maps)
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.0 * rows), squeeze=False)
    for row in range(rows):
        image = to_display(pixels[row])
        grey = image if image.ndim == 2 else image.mean(axis=2)
        axes[row, 0].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        axes[row, 0].set_title(labels[row], fontsize=8)
        for column, (method, attribution) in enumerate(maps.items(), start=1):
            values = attribution[row].cpu().numpy()
            limit = float(np.percentile(np.abs(values), 99)) or 1.0
            axes[row, column].imshow(grey, cmap="gray", vmin=0, vmax=1)
            axes[row, column].imshow(values, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.65)
            if row == 0:
                axes[row, column].set_title(method, fontsize=9)
    for axis in axes.flat:
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def sic_curves(path: str, curve_x: np.ndarray, curves: dict[str, np.ndarray], aucs: dict[str, float]) -> None:
    """Median softmax information curve per method (x: normalised information, y: relative softmax)."""
    figure, axis = plt.subplots(figsize=(5, 4))
    for method, curve in curves.items():
        axis.plot(curve_x, curve, label=f"{method} (SIC {aucs[method]:.3f})")
    axis.set_xlabel("information level (normalised compressed size)")
    axis.set_ylabel("softmax of original class / original")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.set_title("Softmax information curve (median over images)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def saturation(path: str, result: Saturation) -> None:
    """IG along the path: logit, gradient norm and consecutive-gradient alignment against alpha."""
    alphas = result.alphas.numpy()
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    panels = [(alphas, result.logits, "target logit"), (alphas, result.grad_norm, "gradient L2 norm"),
              (alphas[:-1], result.alignment[:, :-1], "cos(g(alpha), g(next alpha))")]
    for axis, (x, curves, title) in zip(axes, panels):
        values = curves.numpy()
        axis.plot(x, values.T, color="tab:blue", alpha=0.15, linewidth=0.8)
        axis.plot(x, values.mean(axis=0), color="black", linewidth=2, label="mean")
        axis.axvline(float(result.alpha_95.median()), color="tab:red", linestyle="--", label="median alpha_95")
        axis.set_xlabel("alpha")
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
