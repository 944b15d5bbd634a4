"""Figures: an evaluation's attribution grids, SIC curves and IG saturation (PNG, matplotlib Agg), and a
sweep's Pareto front (PNG, and interactive HTML with plotly)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nsde_ray.metrics.saturation import Saturation  # noqa: E402
from nsde_ray.registry import ACCURACY, OBJECTIVES, front_params, objective_names  # noqa: E402


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
    panels = [
        (alphas, result.logits, "target logit"),
        (alphas, result.grad_norm, "gradient L2 norm"),
        (alphas[:-1], result.alignment[:, :-1], "cos(g(alpha), g(next alpha))"),
    ]
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


def pareto_panels() -> list[tuple[str, str]]:
    """(metric, title) of each panel: every registered objective but accuracy, plotted against accuracy."""
    return [(o.name, o.label) for o in OBJECTIVES.values() if o.name != ACCURACY]


def _hover(row: dict) -> str:
    shown = ("trial_id", *front_params(), "effective_sigma", *objective_names(), "pareto_probability", "excluded")
    return "<br>".join(f"{key}: {_with_se(row, key)}" for key in shown if row.get(key, "") != "")


def _with_se(row: dict, key: str) -> str:
    value, se = row.get(key, ""), row.get(f"{key}_se", float("nan"))
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text + (f" ± {se:.2g}" if isinstance(se, float) and np.isfinite(se) else "")


def _error(rows: list[dict], metric: str) -> list[float]:
    """±1 SE bars (0 where a configuration has one seed)."""
    return [float(np.nan_to_num(row.get(f"{metric}_se", 0.0))) for row in rows]


def pareto_figure(rows: list[dict]):
    """Interactive (plotly) accuracy vs sensitivity and accuracy vs SIC, each point ±1 SE over seeds.

    rows: :meth:`nsde_ray.tracking.SweepTracker.front_rows`. Each configuration is one point per
    panel; front points are highlighted, configurations kept off the front are crosses, params and
    the probability of being on the front show on hover.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = pareto_panels()
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    groups = (
        (
            "other configurations",
            lambda r: not r["pareto_front"] and not r.get("excluded"),
            dict(color="lightgray", size=9),
        ),
        ("kept off the front", lambda r: bool(r.get("excluded")), dict(color="gray", size=9, symbol="x")),
        ("Pareto front", lambda r: r["pareto_front"], dict(color="crimson", size=12, symbol="star")),
    )
    for column, (metric, title) in enumerate(panels, start=1):
        for name, belongs, marker in groups:
            chosen = [row for row in rows if belongs(row)]
            figure.add_trace(
                go.Scatter(
                    x=[row[metric] for row in chosen],
                    y=[row["val_accuracy"] for row in chosen],
                    error_x=dict(type="data", array=_error(chosen, metric), thickness=1),
                    error_y=dict(type="data", array=_error(chosen, "val_accuracy"), thickness=1),
                    mode="markers",
                    name=name,
                    marker=marker,
                    showlegend=column == 1,
                    legendgroup=name,
                    text=[_hover(row) for row in chosen],
                    customdata=[row["run_id"] for row in chosen],
                    hoverinfo="text",
                ),
                row=1,
                col=column,
            )
        figure.update_xaxes(title_text=title, row=1, col=column)
        figure.update_yaxes(title_text="validation accuracy", row=1, col=column)
    figure.update_layout(title="Accuracy vs attribution robustness (mean ± 1 SE over seeds)", height=520)
    return figure


def pareto_html(path: str, rows: list[dict]) -> None:
    """:func:`pareto_figure` as a standalone HTML file; plotly.js is embedded, so it opens offline
    (from the MLflow UI's artifact view, or saved to disk)."""
    figure = pareto_figure(rows)
    figure.update_layout(width=1100)
    figure.write_html(path, include_plotlyjs=True)


def pareto_png(path: str, rows: list[dict]) -> None:
    """The same two panels as :func:`pareto_html`, static, ±1 SE bars; front points labelled with their noise mode."""
    panels = pareto_panels()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    axes = axes[0]
    for ax, (metric, title) in zip(axes, panels):
        for on_front, style in (
            (False, dict(color="lightgray", ms=5, marker="o")),
            (True, dict(color="crimson", ms=10, marker="*")),
        ):
            chosen = [row for row in rows if row["pareto_front"] == on_front]
            ax.errorbar(
                [row[metric] for row in chosen],
                [row["val_accuracy"] for row in chosen],
                xerr=_error(chosen, metric),
                yerr=_error(chosen, "val_accuracy"),
                linestyle="none",
                elinewidth=0.8,
                label="Pareto front" if on_front else "other configurations",
                **style,
            )
        for row in rows:
            if row["pareto_front"]:
                ax.annotate(
                    f"{row.get('noise_mode', '')} p={row.get('pareto_probability', 1.0):.2f}",
                    (row[metric], row["val_accuracy"]),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.set_xlabel(title)
        ax.set_ylabel("validation accuracy")
    axes[0].legend(loc="lower right")
    fig.suptitle("Accuracy vs attribution robustness (mean ± 1 SE over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
