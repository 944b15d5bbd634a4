"""Figures: an evaluation's attribution grids, SIC curves and IG saturation (PNG, matplotlib Agg), and a
sweep's Pareto front (PNG, and interactive HTML with plotly)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nsde_ray import pareto  # noqa: E402
from nsde_ray.metrics.saturation import Saturation  # noqa: E402
from nsde_ray.registry import ACCURACY, NOISE_MODES, OBJECTIVES, front_params, mode_label, objective_names  # noqa: E402


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


def mode_colours(rows: list[dict]) -> dict[str, str]:
    """One colour per noise mode among ``rows``, in registration order (modes this process does not know last)."""
    modes = [mode for mode in NOISE_MODES if any(row.get("noise_mode") == mode for row in rows)]
    modes += sorted({str(row.get("noise_mode", "")) for row in rows} - set(modes))
    return {mode: MODE_PALETTE[index % len(MODE_PALETTE)] for index, mode in enumerate(modes)}


MODE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def mode_front_line(rows: list[dict], metric: str) -> list[dict]:
    """The rows of one mode on its own front of accuracy against ``metric`` (eligible rows only), by ``metric``."""
    eligible = [row for row in rows if not row.get("excluded") and np.isfinite([row[ACCURACY], row[metric]]).all()]
    if not eligible:
        return []
    objectives = ((ACCURACY, "max"), (metric, OBJECTIVES[metric].direction))
    front = pareto.non_dominated(pareto.as_minimisation(eligible, objectives))
    return sorted((row for row, on in zip(eligible, front) if on), key=lambda row: row[metric])


def pareto_figure(rows: list[dict]):
    """Interactive (plotly) accuracy against each objective, one panel each, every point ±1 SE over seeds.

    rows: :meth:`nsde_ray.tracking.SweepTracker.front_rows`. Each configuration is one point per panel,
    coloured by its noise mode, with a line through that mode's own front; stars are the sweep's Pareto
    front, crosses the configurations kept off it; params and the probability of being on the front show
    on hover.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = pareto_panels()
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    colours = mode_colours(rows)
    for column, (metric, title) in enumerate(panels, start=1):
        for mode, colour in colours.items():
            chosen = [row for row in rows if row.get("noise_mode") == mode]
            symbols = ["star" if r["pareto_front"] else "x" if r.get("excluded") else "circle" for r in chosen]
            figure.add_trace(
                go.Scatter(
                    x=[row[metric] for row in chosen],
                    y=[row[ACCURACY] for row in chosen],
                    error_x=dict(type="data", array=_error(chosen, metric), thickness=1),
                    error_y=dict(type="data", array=_error(chosen, ACCURACY), thickness=1),
                    mode="markers",
                    name=mode_label(mode),
                    marker=dict(color=colour, size=[13 if r["pareto_front"] else 9 for r in chosen], symbol=symbols),
                    showlegend=column == 1,
                    legendgroup=mode,
                    text=[_hover(row) for row in chosen],
                    customdata=[row["run_id"] for row in chosen],
                    hoverinfo="text",
                ),
                row=1,
                col=column,
            )
            line = mode_front_line(chosen, metric)
            figure.add_trace(
                go.Scatter(
                    x=[row[metric] for row in line],
                    y=[row[ACCURACY] for row in line],
                    mode="lines",
                    line=dict(color=colour, width=1.5, shape="hv"),
                    name=f"{mode_label(mode)} front",
                    showlegend=False,
                    legendgroup=mode,
                    hoverinfo="skip",
                ),
                row=1,
                col=column,
            )
        figure.update_xaxes(title_text=title, row=1, col=column)
        figure.update_yaxes(title_text="validation accuracy", row=1, col=column)
    figure.update_layout(
        title="Accuracy vs attribution robustness by noise mode (mean ± 1 SE over seeds; ★ Pareto front, "
        "✕ kept off it; lines: each mode's own front)",
        height=520,
    )
    return figure


def pareto_html(path: str, rows: list[dict]) -> None:
    """:func:`pareto_figure` as a standalone HTML file; plotly.js is embedded, so it opens offline
    (from the MLflow UI's artifact view, or saved to disk)."""
    figure = pareto_figure(rows)
    figure.update_layout(width=1100)
    figure.write_html(path, include_plotlyjs=True)


def pareto_png(path: str, rows: list[dict]) -> None:
    """The panels of :func:`pareto_html`, static, ±1 SE bars: a colour and a front line per noise mode, the
    sweep's front as stars."""
    panels = pareto_panels()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    axes = axes[0]
    colours = mode_colours(rows)
    for ax, (metric, title) in zip(axes, panels):
        for mode, colour in colours.items():
            chosen = [row for row in rows if row.get("noise_mode") == mode]
            ax.errorbar(
                [row[metric] for row in chosen],
                [row[ACCURACY] for row in chosen],
                xerr=_error(chosen, metric),
                yerr=_error(chosen, ACCURACY),
                linestyle="none",
                elinewidth=0.8,
                marker="o",
                ms=5,
                color=colour,
                label=mode_label(mode),
            )
            line = mode_front_line(chosen, metric)
            ax.step([row[metric] for row in line], [row[ACCURACY] for row in line], where="post", color=colour, lw=1)
        front = [row for row in rows if row["pareto_front"]]
        ax.plot(
            [row[metric] for row in front],
            [row[ACCURACY] for row in front],
            "*",
            color="black",
            ms=11,
            mfc="none",
            label="Pareto front",
        )
        ax.set_xlabel(title)
        ax.set_ylabel("validation accuracy")
    axes[0].legend(loc="lower right", fontsize=7)
    fig.suptitle("Accuracy vs attribution robustness by noise mode (mean ± 1 SE over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
