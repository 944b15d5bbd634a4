"""Which training noise buys attribution robustness, at what accuracy: the noise modes' whole fronts, compared.

The learning rate (and the noise sigma) move both accuracy and sensitivity, so one configuration
per mode says little about the mode. A mode is judged by its whole attainable front instead:

- its **front**: the configurations no other configuration of the same mode beats in both
  ``val_accuracy`` (max) and ``sensitivity`` (min), among its eligible rows (``excluded`` empty and
  both objectives finite);
- its **attainable-sensitivity curve** S_mode(a): the lowest sensitivity among its configurations
  with accuracy >= a, a step function of a. Above the mode's best accuracy it is undefined
  ("not reached"); nothing is extrapolated.

**Levels** (:func:`choose_levels`): the range from the lowest accuracy on any trained mode's front
to the second-highest best accuracy over the trained modes (at least two modes reach all of it),
at 0, 1/4, 1/2 and 3/4 of the way up; each rounded *down* to a step of 0.01 (finer when the range
is under 0.1) and deduplicated, so every level stays reachable by those two modes. The top of the
range itself is left out: the mode that tops there misses it in about half the draws, so no
comparison there could resolve.

**Verdicts** per pair of modes (X, Y) and level a: the difference S_X(a) - S_Y(a) (sensitivity
units) on the configurations' means, with an equal-tailed (1 - alpha) interval and a two-sided
p-value from posterior draws of the means, ``draws`` (D, N, 2) = (val_accuracy, sensitivity) per
row. Each draw recomputes both curves from the drawn values, the accuracy threshold included, so
accuracy uncertainty moves the curves too. A draw where a curve is undefined (no drawn accuracy
reaches a, or a drawn value is NaN: unknown) counts as evidence for *both* signs: it enters
P(diff <= 0) and P(diff >= 0), and sits at -inf for the interval's low end and +inf for its high
end; so it can only weaken a verdict: p is at least twice the share of such draws, which the tables
report (``undefined``). p = 2 min(P(diff <= 0), P(diff >= 0)), floored at 1/D.
Holm's step-down method adjusts the p-values over the family of all tested comparisons (every
pair and level where both curves are defined on the means); a verdict ("X less sensitive than Y
at accuracy >= a", or the reverse) needs the Holm-adjusted p <= alpha, else it is "no resolvable
difference". "not tested": a mode has no eligible configuration; "not reached": a mode's curve is
undefined at a on the means. Neither enters the Holm family.

**Default draws** (:func:`normal_draws`): mean + SE * Student-t(seeds - 1), independently per row
and objective. A one-seed row has no SE of its own (NaN): it borrows the per-seed standard
deviation pooled over the rows with two or more seeds (pooled variance of SE * sqrt(seeds), with
the pooled degrees of freedom), i.e. it is as uncertain as one seed of a typical configuration.
With no row to pool from (every row one seed), its draws are NaN: unknown, so no verdict rests on it.

**Control** (:data:`CONTROL`): when plain rows (``none``) carry ``sensitivity_ig_nt`` (SmoothGrad
over IG of the same model), a pseudo-mode of those configurations with that sensitivity (SE
``sensitivity_ig_nt_se``) enters the verdicts like a mode: robustness bought at explanation time,
at no training cost. Its accuracy draws are its plain row's; its sensitivity is drawn as in
:func:`normal_draws`. It does not set the levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from nsde_ray import pareto
from nsde_ray.uncertainty import holm

FRONT_OBJECTIVES = (("val_accuracy", "max"), ("sensitivity", "min"))
PLAIN = "none"
CONTROL = "smoothgrad_on_plain"
CONTROL_LABEL = "SmoothGrad on plain (control)"
CONTROL_METRIC = "sensitivity_ig_nt"
LEVEL_FRACTIONS = (0.0, 0.25, 0.5, 0.75)
NOT_RESOLVED = "no resolvable difference"
CONTROL_NOTE = "the plain models' IG + NoiseTunnel (SmoothGrad) sensitivity; explanation-time, no training cost."


@dataclass
class Verdict:
    """One pair of modes at one accuracy level; ``difference``, ``low``, ``high`` in sensitivity units, NaN untested."""

    mode_x: str
    mode_y: str
    level: float
    difference: float  # S_X(level) - S_Y(level) on the configurations' means
    low: float
    high: float
    p: float
    p_holm: float
    verdict: str
    undefined: float = math.nan  # share of the draws in which either curve was undefined at the level

    @property
    def tested(self) -> bool:
        """Whether this comparison is in the Holm family (both curves defined at the level)."""
        return math.isfinite(self.p)


@dataclass
class ModeReport:
    """Per-mode fronts (rows by accuracy, descending), the levels, the verdicts, and how to show them."""

    fronts: dict[str, list[dict[str, Any]]]
    levels: list[float]
    verdicts: list[Verdict]
    labels: dict[str, str]
    counts: dict[str, tuple[int, int]]  # mode -> (eligible configurations, training seeds) behind its curve
    alpha: float
    draws: int
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> int:
        """Number of comparisons Holm's method corrects over."""
        return sum(v.tested for v in self.verdicts)

    def csv_rows(self) -> list[dict[str, Any]]:
        """One dict per verdict, with labels, counts, test and correction."""
        return [
            {
                "mode_x": v.mode_x,
                "mode_y": v.mode_y,
                "label_x": self.labels[v.mode_x],
                "label_y": self.labels[v.mode_y],
                "level": v.level,
                "difference": v.difference,
                "low": v.low,
                "high": v.high,
                "p": v.p,
                "p_holm": v.p_holm,
                "undefined_share": v.undefined,
                "verdict": v.verdict,
                "configs_x": self.counts[v.mode_x][0],
                "seeds_x": self.counts[v.mode_x][1],
                "configs_y": self.counts[v.mode_y][0],
                "seeds_y": self.counts[v.mode_y][1],
                "test": self._test(v),
            }
            for v in self.verdicts
        ]

    def to_text(self) -> str:
        """Plain-text tables for the console."""
        return "\n".join(
            [
                self._summary(),
                "",
                "Fronts:",
                _aligned(*self._front_table()),
                "",
                "Verdicts:",
                _aligned(*self._verdict_table()),
                *self._notes(),
            ]
        )

    def to_markdown(self) -> str:
        """Markdown for the MLflow run description."""
        return "\n".join(
            [
                "### Noise modes compared by their fronts",
                "",
                self._summary(),
                "",
                "#### Fronts",
                "",
                _markdown(*self._front_table()),
                "",
                "#### Verdicts",
                "",
                _markdown(*self._verdict_table()),
                *self._notes(),
            ]
        )

    def _summary(self) -> str:
        levels = ", ".join(f"{level:g}" for level in self.levels) or "none"
        return (
            f"S(a) = lowest sensitivity among a mode's configurations with val_accuracy >= a. Levels a: {levels}. "
            f"Interval: {1 - self.alpha:.0%} over {self.draws} draws of the configuration means; p two-sided "
            f"from the draws, Holm-corrected over {self.family} comparisons; verdict at Holm p <= {self.alpha:g}."
        )

    def _notes(self) -> list[str]:
        untested = self.untested_modes()
        left_out = (
            [
                f"Not tested, no finished configuration: {', '.join(self.labels[m] for m in untested)} "
                "(their pairs are left out of the table above; mode_verdicts.csv lists every pair)."
            ]
            if untested
            else []
        )
        undefined = [v.undefined for v in self.verdicts if v.tested and v.undefined > 0]
        weakened = (
            [
                f"undefined: the share of draws in which a curve was undefined at the level (the mode's drawn "
                f"accuracies all below it); each counts for both signs, so p is at least twice that share, and "
                f"above {self.alpha / 2:.1%} the interval reaches infinity ({len(undefined)} comparisons, up to "
                f"{max(undefined):.0%})."
            ]
            if undefined
            else []
        )
        notes = [*left_out, *weakened, *self.notes]
        return ["", *notes] if notes else []

    def untested_modes(self) -> list[str]:
        """The modes without an eligible configuration, in report order."""
        return [mode for mode, (configs, _) in self.counts.items() if configs == 0]

    def _test(self, verdict: Verdict) -> str:
        return f"draw test, Holm over {self.family}" if verdict.tested else ""

    def _n(self, mode: str) -> str:
        configs, seeds = self.counts[mode]
        return f"{configs} cfg / {seeds} seeds"

    def _front_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["mode", "val_accuracy", "sensitivity", "lr", "noise_sigma", "seeds"]
        cells = [
            [
                self.labels[mode],
                f"{row['val_accuracy']:.4f}",
                f"{row['sensitivity']:.4f}",
                _value(row.get("lr")),
                _value(row.get("noise_sigma")),
                _value(row.get("seeds")),
            ]
            for mode, front in self.fronts.items()
            for row in front
        ]
        return header, cells

    def _verdict_table(self) -> tuple[list[str], list[list[str]]]:
        header = [
            "X",
            "Y",
            "acc >=",
            "S_X - S_Y",
            "interval",
            "undefined",
            "p",
            "p Holm",
            "n X",
            "n Y",
            "test",
            "verdict",
        ]
        untested = set(self.untested_modes())
        cells = [
            [
                self.labels[v.mode_x],
                self.labels[v.mode_y],
                f"{v.level:g}",
                _value(v.difference, "+.3g"),
                f"[{v.low:+.3g}, {v.high:+.3g}]" if v.tested else "",
                _value(v.undefined, ".0%"),
                _value(v.p, ".2g"),
                _value(v.p_holm, ".2g"),
                self._n(v.mode_x),
                self._n(v.mode_y),
                self._test(v),
                v.verdict,
            ]
            for v in self.verdicts
            if v.mode_x not in untested and v.mode_y not in untested
        ]
        return header, cells


def _value(value: Any, spec: str = "g") -> str:
    """``value`` formatted by ``spec``; empty for a missing or NaN one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _aligned(header: list[str], cells: list[list[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *cells)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *cells])


def _markdown(header: list[str], cells: list[list[str]]) -> str:
    """A Markdown table."""
    lines = [header, ["---"] * len(header), *cells]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)


def normal_draws(rows: list[dict[str, Any]], draws: int = 4000, seed: int = 0) -> np.ndarray:
    """(D, N, 2) plausible (val_accuracy, sensitivity) means of the N ``rows``: mean + SE * Student-t(seeds - 1).

    Rows without an SE borrow the pooled per-seed SD, or get NaN draws when there is none (module doc).
    """
    rng = np.random.default_rng(seed)
    seeds = np.array([float(row.get("seeds", 1)) for row in rows])
    columns = [
        _t_draws(_column(rows, name), _column(rows, f"{name}_se"), seeds, draws, rng) for name, _ in FRONT_OBJECTIVES
    ]
    return np.stack(columns, axis=-1).reshape(draws, len(rows), 2)


def _column(rows: list[dict[str, Any]], name: str) -> np.ndarray:
    """(N,) float values of ``name``; NaN where absent."""
    return np.array([float(row.get(name, math.nan)) for row in rows], dtype=float)


def _t_draws(
    means: np.ndarray, errors: np.ndarray, seeds: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """(D, N) draws of one objective's means (N,) from their SEs (N,) and seed counts (N,)."""
    known = np.isfinite(errors) & (seeds >= 2)
    pool = known & np.isfinite(means)
    sd, pooled_df = _pooled_sd(errors[pool], seeds[pool])
    scale = np.where(known, errors, sd / np.sqrt(np.maximum(seeds, 1)))
    df = np.where(known, seeds - 1, pooled_df)
    t = rng.standard_t(np.where(np.isfinite(df), df, 1.0), size=(draws, len(means)))
    return means + scale * t


def _pooled_sd(errors: np.ndarray, seeds: np.ndarray) -> tuple[float, float]:
    """(per-seed SD, degrees of freedom) pooled over rows with SEs (K,) from seeds (K,) >= 2; NaN without any."""
    dof = float(np.sum(seeds - 1))
    if dof == 0:
        return math.nan, math.nan
    return math.sqrt(float(np.sum((seeds - 1) * errors**2 * seeds)) / dof), dof


def attainable(accuracy: np.ndarray, sensitivity: np.ndarray, level: float) -> np.ndarray:
    """S(level): the lowest ``sensitivity`` (..., n) among configurations whose ``accuracy`` (..., n) is >= level.

    Returns (...); NaN where no configuration reaches the level or a value is NaN (unknown).
    """
    accuracy, sensitivity = np.asarray(accuracy, dtype=float), np.asarray(sensitivity, dtype=float)
    best = np.min(np.where(accuracy >= level, sensitivity, np.inf), axis=-1, initial=np.inf)
    unknown = np.isnan(accuracy).any(axis=-1) | np.isnan(sensitivity).any(axis=-1)
    return np.where(np.isinf(best) | unknown, np.nan, best)


def mode_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``rows`` of one mode non-dominated in (val_accuracy max, sensitivity min), by accuracy, best first."""
    if not rows:
        return []
    mask = pareto.non_dominated(pareto.as_minimisation(rows, FRONT_OBJECTIVES))
    return sorted((row for row, on in zip(rows, mask) if on), key=lambda row: -float(row["val_accuracy"]))


def choose_levels(fronts: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Accuracy levels (ascending) to compare the modes' ``fronts`` (mode -> front rows) at; see the module doc."""
    fronts = {mode: front for mode, front in fronts.items() if front}
    if not fronts:
        return []
    tops = sorted((max(float(r["val_accuracy"]) for r in front) for front in fronts.values()), reverse=True)
    high = tops[min(1, len(tops) - 1)]
    low = min(min(float(r["val_accuracy"]) for r in front) for front in fronts.values())
    span = high - low
    step = min(0.01, 10 ** math.floor(math.log10(span / 10))) if span > 0 else 0.001
    return sorted({round(math.floor((low + f * span) / step + 1e-9) * step, 6) for f in LEVEL_FRACTIONS})


def draw_test(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, float, float, int, float]:
    """(low, high, p, sign, undefined share) of the difference of drawn curves ``x - y`` (D,); NaN draws count for
    both signs.

    ``sign`` is -1 when the difference leans below 0, else +1; the undefined share is that of the NaN draws.
    """
    diff = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    undefined = np.isnan(diff)
    below, above = np.mean((diff <= 0) | undefined), np.mean((diff >= 0) | undefined)
    p = min(1.0, max(1.0 / len(diff), 2 * min(below, above)))
    low = np.quantile(np.where(undefined, -np.inf, diff), alpha / 2, method="lower")
    high = np.quantile(np.where(undefined, np.inf, diff), 1 - alpha / 2, method="higher")
    return float(low), float(high), float(p), -1 if above < below else 1, float(undefined.mean())


def compare_modes(
    rows: list[dict[str, Any]],
    labels: dict[str, str] | None = None,
    draws: np.ndarray | None = None,
    modes: tuple[str, ...] = (),
    levels: list[float] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> ModeReport:
    """Fronts, levels and Holm-corrected verdicts of the noise modes of a sweep's ``rows`` (N); see the module doc.

    ``draws`` (D, N, 2): plausible (val_accuracy, sensitivity) means of the rows (default :func:`normal_draws`).
    ``modes``: modes expected even without rows (reported "not tested"); the rows' other modes follow.
    ``labels``: mode -> label, falling back to the mode's name.
    """
    rows = list(rows)
    draws = normal_draws(rows, seed=seed) if draws is None else np.asarray(draws, dtype=float)
    if draws.ndim != 3 or draws.shape[1:] != (len(rows), 2):
        raise ValueError(f"draws must be (D, {len(rows)}, 2), got {draws.shape}")
    table, table_draws = _with_control(rows, draws, seed)
    groups = _groups(table, modes)
    fronts = {mode: mode_front([table[i] for i in index]) for mode, index in groups.items()}
    names = {mode: (labels or {}).get(mode, CONTROL_LABEL if mode == CONTROL else mode) for mode in groups}
    if levels is None:
        levels = choose_levels({mode: front for mode, front in fronts.items() if mode != CONTROL})
    counts = {mode: (len(index), sum(int(table[i].get("seeds", 1)) for i in index)) for mode, index in groups.items()}
    notes = [f"{names[CONTROL]}: {CONTROL_NOTE}"] if CONTROL in groups else []
    notes += _cost_note(table, groups, names)
    verdicts = _verdicts(table, table_draws, groups, names, list(levels), alpha)
    return ModeReport(fronts, list(levels), verdicts, names, counts, alpha, len(draws), notes)


def _cost_note(rows: list[dict[str, Any]], groups: dict[str, list[int]], names: dict[str, str]) -> list[str]:
    """The training cost of each mode relative to plain training: the ratio of mean ``train_time_s`` per seed run
    (same epochs and data), where both are measured."""
    means = {}
    for mode, index in groups.items():
        times = [float(rows[i].get("train_time_s", np.nan)) for i in index if mode != CONTROL]
        times = [t for t in times if np.isfinite(t)]
        if times:
            means[mode] = float(np.mean(times))
    if PLAIN not in means or len(means) < 2:
        return []
    ratios = ", ".join(f"{names[mode]} {means[mode] / means[PLAIN]:.2f}x" for mode in means if mode != PLAIN)
    return [f"Training cost relative to plain training (mean train_time_s per seed run): {ratios}."]


def _with_control(rows: list[dict[str, Any]], draws: np.ndarray, seed: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``rows`` (N) and ``draws`` (D, N, 2) with the control's rows (C) appended: (N + C rows, (D, N + C, 2))."""
    sources = [
        i
        for i, row in enumerate(rows)
        if row.get("noise_mode") == PLAIN and math.isfinite(float(row.get(CONTROL_METRIC, math.nan)))
    ]
    if not sources:
        return rows, draws
    control = [
        {
            **rows[i],
            "noise_mode": CONTROL,
            "sensitivity": rows[i][CONTROL_METRIC],
            "sensitivity_se": rows[i].get(f"{CONTROL_METRIC}_se", math.nan),
        }
        for i in sources
    ]
    control_draws = normal_draws(control, len(draws), seed + 1)
    control_draws[:, :, 0] = draws[:, sources, 0]
    return rows + control, np.concatenate([draws, control_draws], axis=1)


def _eligible(row: dict[str, Any]) -> bool:
    """Not excluded, with finite accuracy and sensitivity."""
    finite = all(math.isfinite(float(row.get(name, math.nan))) for name, _ in FRONT_OBJECTIVES)
    return finite and not row.get("excluded")


def _groups(rows: list[dict[str, Any]], modes: tuple[str, ...]) -> dict[str, list[int]]:
    """Mode -> indices of its eligible ``rows``; ``modes`` first (possibly empty), then the rows' others in order."""
    groups: dict[str, list[int]] = {mode: [] for mode in modes}
    for i, row in enumerate(rows):
        index = groups.setdefault(str(row.get("noise_mode")), [])
        if _eligible(row):
            index.append(i)
    return groups


def _verdicts(
    rows: list[dict[str, Any]],
    draws: np.ndarray,
    groups: dict[str, list[int]],
    names: dict[str, str],
    levels: list[float],
    alpha: float,
) -> list[Verdict]:
    """Every pair of modes at every level; the tested ones Holm-corrected together."""
    means = np.array([[float(row[name]) for name, _ in FRONT_OBJECTIVES] for row in rows]).reshape(len(rows), 2)
    pending = [
        _compare(x, y, level, means, draws, groups, names, alpha)
        for x, y in combinations(groups, 2)
        for level in levels
    ]
    tested = [i for i, (verdict, _) in enumerate(pending) if verdict.tested]
    for i, adjusted in zip(tested, holm([pending[i][0].p for i in tested])):
        verdict, sign = pending[i]
        verdict.p_holm = float(adjusted)
        if adjusted <= alpha:
            better, worse = (verdict.mode_x, verdict.mode_y) if sign < 0 else (verdict.mode_y, verdict.mode_x)
            verdict.verdict = f"{names[better]} less sensitive than {names[worse]} at accuracy >= {verdict.level:g}"
    return [verdict for verdict, _ in pending]


def _compare(
    x: str,
    y: str,
    level: float,
    means: np.ndarray,
    draws: np.ndarray,
    groups: dict[str, list[int]],
    names: dict[str, str],
    alpha: float,
) -> tuple[Verdict, int]:
    """(verdict before Holm, sign of the difference) of modes ``x`` and ``y`` at accuracy ``level``."""
    untested = Verdict(x, y, level, math.nan, math.nan, math.nan, math.nan, math.nan, "")
    for mode in (x, y):
        if not groups[mode]:
            untested.verdict = f"not tested: {names[mode]} has no configuration"
            return untested, 0
    curves = {mode: float(attainable(means[groups[mode], 0], means[groups[mode], 1], level)) for mode in (x, y)}
    for mode in (x, y):
        if math.isnan(curves[mode]):
            untested.verdict = f"not reached: {names[mode]} tops at accuracy {means[groups[mode], 0].max():.4g}"
            return untested, 0
    drawn = {mode: attainable(draws[:, groups[mode], 0], draws[:, groups[mode], 1], level) for mode in (x, y)}
    low, high, p, sign, undefined = draw_test(drawn[x], drawn[y], alpha)
    return Verdict(x, y, level, curves[x] - curves[y], low, high, p, math.nan, NOT_RESOLVED, undefined), sign
