"""Figures: an evaluation's attribution grids, SIC curves and IG saturation (PNG, matplotlib Agg), and a
sweep's Pareto front (PNG, and interactive HTML with plotly)."""

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


def save_image(path: str, pixels: torch.Tensor) -> None:
    """Pixels (C, H, W) in [0, 1] as an 8-bit grey or RGB PNG at their own size."""
    from PIL import Image

    Image.fromarray(np.round(to_display(pixels) * 255).astype(np.uint8)).save(path)


def overlay(pixels: torch.Tensor, attribution: torch.Tensor, alpha: float = 0.65) -> np.ndarray:
    """A signed map (H, W) over a grey copy of the image (C, H, W) in [0, 1] -> RGB (H, W, 3) in [0, 1].

    A diverging colormap (red positive, blue negative) is centred on zero and scaled to the map's
    99th percentile of |attribution|, so one extreme pixel does not wash the map out.
    """
    image = to_display(pixels)
    grey = image if image.ndim == 2 else image.mean(axis=2)
    values = attribution.detach().float().cpu().numpy()
    limit = float(np.percentile(np.abs(values), 99)) or 1.0
    colours = plt.get_cmap("bwr")((np.clip(values / limit, -1, 1) + 1) / 2)[..., :3]
    return (1 - alpha) * grey[..., None] + alpha * colours


def attribution_grid(path: str, pixels: torch.Tensor, maps: dict[str, torch.Tensor], labels: list[str]) -> None:
    """One row per image: the input, then each method's signed map (B, H, W) as an :func:`overlay`."""
    rows, columns = len(pixels), 1 + len(maps)
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.0 * rows), squeeze=False)
    for row in range(rows):
        image = to_display(pixels[row])
        axes[row, 0].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        axes[row, 0].set_title(labels[row], fontsize=8)
        for column, (method, attribution) in enumerate(maps.items(), start=1):
            axes[row, column].imshow(overlay(pixels[row], attribution[row]))
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


PARETO_PANELS = (("sensitivity", "IG max-sensitivity (lower is better)"), ("sic", "IG SIC (higher is better)"))


def _hover(row: dict) -> str:
    shown = ("trial_id", "noise_mode", "noise_sigma", "lr", "shaping_method", "shaping_warmup_epochs",
             "shaping_refresh_every", "shaping_clip_percentile", "val_accuracy", "sensitivity", "sic")
    return "<br>".join(f"{key}: {row[key]:.4g}" if isinstance(row.get(key), float) else f"{key}: {row.get(key, '')}"
                       for key in shown if row.get(key, "") != "")


def pareto_figure(rows: list[dict]):
    """Interactive (plotly) accuracy vs sensitivity and accuracy vs SIC; front points highlighted, params on hover.

    rows: :meth:`nsde_ray.tracking.SweepTracker.front_rows`. Each trial is one point per panel.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in PARETO_PANELS])
    for column, (metric, title) in enumerate(PARETO_PANELS, start=1):
        for on_front, name, marker in ((False, "other trials", dict(color="lightgray", size=9)),
                                       (True, "Pareto front", dict(color="crimson", size=12, symbol="star"))):
            chosen = [row for row in rows if row["pareto_front"] == on_front]
            figure.add_trace(go.Scatter(x=[row[metric] for row in chosen], y=[row["val_accuracy"] for row in chosen],
                                        mode="markers", name=name, marker=marker, showlegend=column == 1,
                                        legendgroup=name, text=[_hover(row) for row in chosen],
                                        customdata=[row["run_id"] for row in chosen], hoverinfo="text"),
                             row=1, col=column)
        figure.update_xaxes(title_text=title, row=1, col=column)
        figure.update_yaxes(title_text="validation accuracy", row=1, col=column)
    figure.update_layout(title="Accuracy vs attribution robustness", height=520)
    return figure


def pareto_html(path: str, rows: list[dict]) -> None:
    """:func:`pareto_figure` as a standalone HTML file; plotly.js is embedded, so it opens offline
    (from the MLflow UI's artifact view, or saved to disk)."""
    figure = pareto_figure(rows)
    figure.update_layout(width=1100)
    figure.write_html(path, include_plotlyjs=True)


def pareto_png(path: str, rows: list[dict]) -> None:
    """The same two panels as :func:`pareto_html`, static; front points labelled with their noise mode."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (metric, title) in zip(axes, PARETO_PANELS):
        for on_front, style in ((False, dict(c="lightgray", s=30)), (True, dict(c="crimson", s=80, marker="*"))):
            chosen = [row for row in rows if row["pareto_front"] == on_front]
            ax.scatter([row[metric] for row in chosen], [row["val_accuracy"] for row in chosen],
                       label="Pareto front" if on_front else "other trials", **style)
        for row in rows:
            if row["pareto_front"]:
                ax.annotate(str(row.get("noise_mode", "")), (row[metric], row["val_accuracy"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(title)
        ax.set_ylabel("validation accuracy")
    axes[0].legend(loc="lower right")
    fig.suptitle("Accuracy vs attribution robustness")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
