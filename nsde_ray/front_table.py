"""The Pareto front as text: the console's fixed-width table and the sweep run's Markdown description."""

from __future__ import annotations

import io
import math
from typing import Any

from nsde_ray import front
from nsde_ray.registry import objective_names


def table_columns() -> tuple[str, ...]:
    """The front table's columns: membership, every registered objective, the seeds behind them, the mode and what
    sets its strength."""
    return (
        "pareto_front",
        "pareto_probability",
        *objective_names(),
        "seeds",
        "noise_mode",
        "noise_sigma",
        "effective_sigma",
        "lr",
        "trial_id",
        "excluded",
    )


def front_table(rows: list[dict[str, Any]]) -> str:
    """The front (and the configurations off it) as a fixed-width text table; objectives as mean ± SE."""
    columns = table_columns()
    cells = [[table_cell(row, c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = io.StringIO()
    lines.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for r in cells:
        lines.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    return lines.getvalue()


def front_markdown(report: front.FrontReport, link: str = "") -> str:
    """The front table and the notes as Markdown: the sweep run's description in MLflow's UI; ``link``
    (:func:`nsde_ray.tracking.front_url`), if any, under the table."""
    columns = table_columns()
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(table_cell(row, c) or " " for c in columns) + " |\n" for row in report.rows)
    notes = "".join(f"- {note}\n" for note in report.notes)
    return (
        f"**Pareto front** over {', '.join(name for name, _ in report.objectives)} "
        f"(mean ± SE over seeds; pareto_probability: on the front when the means are redrawn within their SE)"
        f"\n\n{header}{body}" + (f"\n[The front's runs]({link})\n" if link else "") + (f"\n{notes}" if notes else "")
    )


def table_cell(row: dict[str, Any], column: str) -> str:
    """``mean ± SE`` for an objective with a finite SE, blank for NaN, else :func:`format_cell`."""
    value, se = row.get(column, ""), row.get(f"{column}_se", math.nan)
    if column in ("trial_id", "run_id"):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(se, float) and math.isfinite(se):
        return f"{format_cell(value)} ± {se:.2g}"
    return format_cell(value)


def format_cell(value: Any) -> str:
    """A table cell: ``*`` for True, 4 significant digits for numbers and numeric strings (MLflow params)."""
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        return f"{float(value):.4g}" if value not in ("", None) and not str(value).isalpha() else str(value)
    except ValueError:
        return str(value)
