"""The papers' tables from the models of a paper-tables grid, and whether the papers' orderings held.

Input: one :class:`ModelResult` per trained model (architecture, noise mode, training seed) with the
metrics :func:`nsde_ray.evaluate.evaluate_repeated` logs: ``sensitivity_<method>`` is the mean over
the evaluation repeats, ``sensitivity_<method>_std`` their std. A table cell aggregates one metric
of one (architecture, noise mode) over the training seeds: its mean is the mean of the per-model
means, its ``±`` the sample std across seeds (the spread of the claim); the CSV files also hold the
per-seed values and the mean within-model std over repeats. Sensitivity, SIC and localisation are
taken on the images common to the models compared: per architecture and training seed, the candidate
images that every model scored (:func:`nsde_ray.common_images.compare`, from each model's per-image
record; a model without one keeps its logged means, and the tables' notes say so).

Tables (``Table.name`` is the file stem):
- ``accuracy``: validation accuracy and effective noise sigma per architecture and noise mode
  (context for the rest);
- ``sensitivity_<arch>``: AAAI 2022 Table 1's rows (IG, IG + NT, Saliency, DeepLIFT, DeepSHAP) and
  columns (Standard, Noise, Attribution-driven noise); max-sensitivity, lower is better;
- ``sic``: AAAI 2022 Table 2's rows (ResNet with gradients, IG, IG + NoiseTunnel; Gaussian SDE and
  attribution SDE with IG) per architecture; SIC AUC, higher is better;
- ``localisation_<arch>``: localisation AUC against foreground masks, where the data set has them;
- ``paired_differences`` (:func:`paired_table`): per training seed, each noisy model minus the plain
  model of its seed, with a paired t-test across seeds and its p Holm-adjusted over the table's tests
  (``--paired`` grids fine-tune the noisy models from that plain model, and the plain control, mode
  :data:`PLAIN_CONTROL`, alongside them for as many epochs: the differences are taken against it where
  the grid has one).

Orderings (the claims): sensitivity ResNet > Gaussian SDE (IJCAI 2021 Tables 1-3) > attribution SDE
(AAAI 2022 Table 1), per method; SIC of IG ResNet < Gaussian SDE < attribution SDE (AAAI 2022
Table 2). Beyond the papers: input noise > Gaussian SDE in sensitivity (per-block noise beats
noise on the input image alone, the cheapest alternative). An ordering "held" when it holds strictly between the
means over seeds; ``k/n seeds`` counts the seeds whose own models show it, out of the seeds where all its
models finished.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import warnings
from dataclasses import dataclass, field

from nsde_ray import common_images
from nsde_ray.names import METHOD_LABELS, METHODS
from nsde_ray.registry import NOISE_MODES
from nsde_ray.uncertainty import holm

PAPER_MODES = ("none", "gaussian", "attribution")  # the papers' claimed order, most sensitive first
TABLE2_ROWS = (
    ("none", "saliency", "Gradients"),
    ("none", "ig", "IG"),
    ("none", "ig_nt", "IG + Noise Tunnel"),
    ("gaussian", "ig", "IG"),
    ("attribution", "ig", "IG"),
    ("input", "ig", "IG"),
)  # AAAI 2022 Table 2: (mode, method, name)
MISSING = "—"


@dataclass(frozen=True)
class ModelResult:
    """One trained and evaluated model of the grid; ``per_image``: its per-image record
    (:mod:`nsde_ray.common_images`), None for a model evaluated before there was one."""

    arch: str
    mode: str
    seed: int
    metrics: dict[str, float]
    per_image: list[common_images.Row] | None = None


@dataclass(frozen=True)
class Cell:
    """One metric of one (architecture, noise mode) across seeds."""

    per_seed: dict[int, float]  # seed -> that model's value (mean over repeats); finite values only
    repeat_std: float  # mean over seeds of the std over repeats; NaN with one repeat

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_seed.values()) if self.per_seed else math.nan

    @property
    def seed_std(self) -> float:
        return statistics.stdev(self.per_seed.values()) if len(self.per_seed) > 1 else math.nan

    def text(self) -> str:
        """``mean ± seed std`` (``mean`` alone from one seed; a dash when no model finished)."""
        if not self.per_seed:
            return MISSING
        return f"{self.mean:.4g}" + (f" ± {self.seed_std:.2g}" if len(self.per_seed) > 1 else "")

    def columns(self, prefix: str) -> dict[str, object]:
        """The CSV columns of this cell: mean, seed std, repeat std, seed count, per-seed values."""
        return {
            f"{prefix}_mean": self.mean,
            f"{prefix}_seed_std": self.seed_std,
            f"{prefix}_repeat_std": self.repeat_std,
            f"{prefix}_n_seeds": len(self.per_seed),
            f"{prefix}_per_seed": ";".join(f"{seed}:{value:.6g}" for seed, value in sorted(self.per_seed.items())),
        }


def cell(results: list[ModelResult], arch: str, mode: str, metric: str) -> Cell:
    """``metric`` of the models of (``arch``, ``mode``), one value per seed."""
    models = [
        r for r in results if r.arch == arch and r.mode == mode and math.isfinite(r.metrics.get(metric, math.nan))
    ]
    stds = [r.metrics.get(f"{metric}_std", math.nan) for r in models]
    stds = [s for s in stds if math.isfinite(s)]
    return Cell({r.seed: r.metrics[metric] for r in models}, statistics.fmean(stds) if stds else math.nan)


@dataclass(frozen=True)
class Verdict:
    """Whether an ordering held on the means (None: a cell is missing) and in how many seeds."""

    held: bool | None
    seeds_held: int
    seeds: int

    def text(self) -> str:
        if self.held is None:
            return "n/a"
        return f"{'yes' if self.held else 'no'} ({self.seeds_held}/{self.seeds} seeds)"


def ordering(cells: list[Cell], decreasing: bool) -> Verdict:
    """Whether cells[0] > cells[1] > ... (``decreasing``) or cells[0] < cells[1] < ... holds strictly."""

    def ordered(values: list[float]) -> bool:
        return all((a > b) if decreasing else (a < b) for a, b in zip(values, values[1:]))

    means = [c.mean for c in cells]
    if not all(math.isfinite(m) for m in means):
        return Verdict(None, 0, 0)
    seeds = set.intersection(*(set(c.per_seed) for c in cells))
    held = sum(ordered([c.per_seed[seed] for c in cells]) for seed in seeds)
    return Verdict(ordered(means), held, len(seeds))


@dataclass
class Table:
    """A table as Markdown cells (``header``, ``rows``) and as CSV records, with notes (verdicts) below it."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    records: list[dict[str, object]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """Title, a column-aligned Markdown table (readable in a terminal too), then the notes as a list."""
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in range(len(self.header))]

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        lines = [f"### {self.title}", "", line(self.header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [line(row) for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(self.records[0]) if self.records else [])
        writer.writeheader()
        writer.writerows(self.records)
        return out.getvalue()


def accuracy_table(results: list[ModelResult], archs: list[str]) -> Table:
    """Validation accuracy (fraction) and effective sigma (metric ``effective_sigma``) per architecture and noise
    mode."""
    quantities = {"val accuracy": "val_accuracy", "effective sigma": "effective_sigma"}
    rows, records = [], []
    for arch in archs:
        record: dict[str, object] = {"arch": arch}
        for label, metric in quantities.items():
            cells = [cell(results, arch, mode, metric) for mode in NOISE_MODES]
            rows.append([arch, label, *(c.text() for c in cells)])
            for mode, c in zip(NOISE_MODES, cells):
                record.update(c.columns(mode if metric == "val_accuracy" else f"{mode}_{metric}"))
        records.append(record)
    notes = [
        "effective sigma = sigma * sqrt(noise_energy): the sigma of Gaussian noise with the variance the model "
        "saw in training (noise_energy: mean squared noise multiplier, averaged over training; shaped noise "
        "with raw maps has far less than Gaussian noise at the same sigma); compare modes at matched "
        "effective sigma"
    ]
    return Table(
        "accuracy",
        "Validation accuracy and effective noise sigma",
        ["Architecture", "Quantity", *(m.label for m in NOISE_MODES.values())],
        rows,
        records,
        notes,
    )


def spread_note(cells: list[Cell]) -> list[str]:
    """Where the spread comes from: training seeds or evaluation repeats (empty without both).

    The seed std of a cell is that of the per-model means (models of different training seeds, the
    same evaluation draws); its repeat std is the mean std over one model's evaluation repeats.
    """
    pairs = [(c.seed_std, c.repeat_std) for c in cells if math.isfinite(c.seed_std) and c.repeat_std > 0]
    if not pairs:
        return []
    seed_std, repeat_std = (statistics.median(values) for values in zip(*pairs))
    return [
        f"spread: the std across training seeds (median over cells {seed_std:.2g}) is "
        f"{seed_std / repeat_std:.1f}x the std across evaluation repeats of one model ({repeat_std:.2g}); "
        + (
            "training seeds, not evaluation repeats, decide how sure an ordering is"
            if seed_std > repeat_std
            else "evaluation repeats, not training seeds, decide how sure an ordering is"
        )
    ]


def absent_modes(results: list[ModelResult], arch: str, modes: tuple[str, ...]) -> list[str]:
    """The labels of ``modes`` that no model of ``arch`` in ``results`` has (the grid left them out, or none
    finished)."""
    present = {r.mode for r in results if r.arch == arch}
    return [NOISE_MODES[m].label for m in modes if m not in present]


def claim_note(claim: str, counts: list[int], untested: list[str], methods: int, absent: list[str]) -> str:
    """The verdict sentence of one ordering over the methods of a table.

    counts: methods where it held on the means, and in every seed; untested: the labels of the methods
    without a verdict (a cell missing); absent: the labels of the claim's modes with no model at all.
    A claim no method could test says "not tested", never "held for 0 of n".
    """
    why = f"no {' or '.join(absent)} models in this grid" if absent else "a model it needs has no result"
    if len(untested) == methods:
        return f"{claim}: not tested ({why})"
    tested = methods - len(untested)
    note = f"{claim} held on the means for {counts[0]} of {tested} methods, in every seed for {counts[1]}"
    return note + (f"; not tested for {', '.join(untested)} ({why})" if untested else "")


def sic_claim(verdict: Verdict) -> str:
    """A SIC ordering's verdict in a sentence: "not tested" where a model it needs has no result."""
    return "not tested" if verdict.held is None else verdict.text()


def sensitivity_table(results: list[ModelResult], arch: str, methods: list[str]) -> Table:
    """AAAI 2022 Table 1 for one architecture: max-sensitivity per method and noise mode, with the orderings."""
    steps = {
        "ResNet > Gaussian": ("none", "gaussian"),
        "Gaussian > attribution": ("gaussian", "attribution"),
        "ResNet > Gaussian > attribution": PAPER_MODES,
        "input > Gaussian": ("input", "gaussian"),
    }
    rows, records, every_cell = [], [], []
    counts = {claim: [0, 0] for claim in steps}  # methods where it held on the means, and in every seed
    untested: dict[str, list[str]] = {claim: [] for claim in steps}  # methods without a verdict (a mode missing)
    shown = [m for m in METHODS if m in methods]
    for method in shown:
        cells = {mode: cell(results, arch, mode, f"sensitivity_{method}") for mode in NOISE_MODES}
        every_cell += cells.values()
        verdicts = {claim: ordering([cells[m] for m in modes], decreasing=True) for claim, modes in steps.items()}
        rows.append(
            [METHOD_LABELS[method], *(cells[m].text() for m in NOISE_MODES), *(v.text() for v in verdicts.values())]
        )
        record: dict[str, object] = {"arch": arch, "method": method}
        for mode in NOISE_MODES:
            record.update(cells[mode].columns(mode))
        for claim, verdict in verdicts.items():
            key = "held_" + claim.replace(" > ", "_gt_").replace(" ", "_").lower()
            record[key], record[f"{key}_seeds"] = verdict.held, f"{verdict.seeds_held}/{verdict.seeds}"
            if verdict.held is None:
                untested[claim].append(method)
            counts[claim][0] += verdict.held is True
            counts[claim][1] += verdict.held is True and verdict.seeds_held == verdict.seeds
        records.append(record)
    notes = [
        claim_note(
            f"{claim} (lower sensitivity is better; the {source} claim)",
            counts[claim],
            [METHOD_LABELS[m] for m in untested[claim]],
            len(shown),
            absent_modes(results, arch, steps[claim]),
        )
        for claim, source in zip(steps, ("IJCAI 2021", "AAAI 2022", "AAAI 2022 Table 1", "input-noise baseline"))
    ]
    notes += spread_note(every_cell)
    return Table(
        f"sensitivity_{arch}",
        f"Sensitivity, {arch} (AAAI 2022 Table 1; lower is better)",
        ["Attribution", *(m.table_column for m in NOISE_MODES.values()), *steps],
        rows,
        records,
        notes,
    )


def sic_table(results: list[ModelResult], archs: list[str], methods: list[str]) -> Table:
    """AAAI 2022 Table 2 per architecture: SIC AUC of the ResNet's methods and of IG on each model."""
    rows, records, notes = [], [], []
    for arch in archs:
        for mode, method, name in TABLE2_ROWS:
            if method not in methods:
                continue
            c = cell(results, arch, mode, f"sic_{method}")
            rows.append([arch, NOISE_MODES[mode].label, name, c.text()])
            records.append({"arch": arch, "mode": mode, "method": method, **c.columns("sic")})
        ig = [cell(results, arch, mode, "sic_ig") for mode in PAPER_MODES]
        notes.append(
            f"{arch}: ResNet < Gaussian SDE < attribution SDE (SIC of IG, higher is better; AAAI 2022 "
            f"Table 2): {sic_claim(ordering(ig, decreasing=False))}; ResNet < Gaussian SDE: "
            f"{sic_claim(ordering(ig[:2], decreasing=False))}; Gaussian SDE < attribution SDE: "
            f"{sic_claim(ordering(ig[1:], decreasing=False))}"
        )
    return Table(
        "sic",
        "SIC (AAAI 2022 Table 2; higher is better)",
        ["Architecture", "Model", "Method", "SIC"],
        rows,
        records,
        notes,
    )


def localisation_table(results: list[ModelResult], arch: str, methods: list[str]) -> Table | None:
    """Localisation AUC per method and noise mode (higher is better); None when no model has masks."""
    if not any(k.startswith("localisation_auc_") for r in results if r.arch == arch for k in r.metrics):
        return None
    rows, records = [], []
    for method in [m for m in METHODS if m in methods]:
        cells = {mode: cell(results, arch, mode, f"localisation_auc_{method}") for mode in NOISE_MODES}
        ranked = sorted((c.mean, mode) for mode, c in cells.items() if math.isfinite(c.mean))
        rows.append(
            [
                METHOD_LABELS[method],
                *(cells[m].text() for m in NOISE_MODES),
                NOISE_MODES[ranked[-1][1]].label if ranked else MISSING,
            ]
        )
        record: dict[str, object] = {"arch": arch, "method": method}
        for mode in NOISE_MODES:
            record.update(cells[mode].columns(mode))
        records.append(record)
    return Table(
        f"localisation_{arch}",
        f"Localisation AUC, {arch} (higher is better; no claim in the papers)",
        ["Attribution", *(NOISE_MODES[m].label for m in NOISE_MODES), "best"],
        rows,
        records,
    )


def paired_t_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided paired t-test of ``a`` against ``b`` (``scipy.stats.ttest_rel``): (t, p).

    NaN with fewer than two pairs or with differences that are all zero; differences that are all
    equal and non-zero give t = ±inf, p = 0.
    """
    from scipy import stats

    if len(a) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance of the differences
        result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def paired_metrics(methods: list[str]) -> list[tuple[str, str, bool]]:
    """(metric, label, higher is better) of the paired-differences table: accuracy, sensitivity per method, SIC of
    IG."""
    return [
        ("val_accuracy", "val accuracy", True),
        *((f"sensitivity_{m}", f"sensitivity {METHOD_LABELS[m]}", False) for m in METHODS if m in methods),
        ("sic_ig", "SIC (IG)", True),
    ]


PLAIN_CONTROL = "none_finetuned"  # the mode of a paired grid's plain control: fine-tuned as long as the noisy models


def paired_table(results: list[ModelResult], archs: list[str], methods: list[str]) -> Table:
    """Per (arch, noisy mode, metric): the per-seed differences noisy minus plain, their mean, std across seeds, how
    many seeds moved the better way, and a paired t-test across seeds, its p also Holm-adjusted over every test of
    the table. Plain is the plain control (mode :data:`PLAIN_CONTROL`) where ``results`` have one, else the plain
    model (mode ``none``)."""
    reference = PLAIN_CONTROL if any(r.mode == PLAIN_CONTROL for r in results) else "none"
    results, common = common_images.compare(results)
    rows, records = [], []
    for arch in archs:
        for mode in [m for m in NOISE_MODES if m != "none" and any(r.arch == arch and r.mode == m for r in results)]:
            for metric, label, higher in paired_metrics(methods):
                noisy = cell(results, arch, mode, metric).per_seed
                plain = cell(results, arch, reference, metric).per_seed
                row, record = paired_row(noisy, plain, higher)
                rows.append([arch, NOISE_MODES[mode].label, label, *row])
                records.append({"arch": arch, "mode": mode, "metric": metric, "reference": reference, **record})
    adjusted = holm([record["p"] for record in records])
    for row, record, p_holm in zip(rows, records, adjusted):
        row.append(_number(p_holm))
        record["p_holm"] = p_holm
    return Table(
        "paired_differences",
        "Paired differences: noisy minus plain, per training seed",
        ["Architecture", "Model", "Metric", "better", "Noisy − plain", "better in", "t", "p", "p (Holm)"],
        rows,
        records,
        paired_notes(records, reference) + common,
    )


def paired_row(noisy: dict[int, float], plain: dict[int, float], higher: bool) -> tuple[list[str], dict[str, object]]:
    """One metric's differences ``noisy`` minus ``plain`` (seed -> value) over their common seeds: the Markdown
    cells from "better" to "p", and the CSV columns from ``higher_is_better`` to the per-seed differences."""
    seeds = sorted(set(noisy) & set(plain))
    differences = Cell({seed: noisy[seed] - plain[seed] for seed in seeds}, math.nan)
    better = sum((d > 0) == higher and d != 0 for d in differences.per_seed.values())
    t, p = paired_t_test([noisy[s] for s in seeds], [plain[s] for s in seeds])
    text = (
        MISSING
        if not seeds
        else f"{differences.mean:+.3g}" + (f" ± {differences.seed_std:.2g}" if len(seeds) > 1 else "")
    )
    record = {
        "higher_is_better": higher,
        "difference_mean": differences.mean,
        "difference_seed_std": differences.seed_std,
        "n_seeds": len(seeds),
        "better_seeds": better,
        "t": t,
        "p": p,
        "difference_per_seed": ";".join(f"{s}:{d:.6g}" for s, d in differences.per_seed.items()),
    }
    return ["higher" if higher else "lower", text, f"{better}/{len(seeds)}", _number(t), _number(p)], record


def paired_notes(records: list[dict[str, object]], reference: str) -> list[str]:
    """The paired table's notes: what a difference is taken against (``reference``, the plain control or the plain
    model) and how to read it, then how many differences are significant before and after Holm's correction."""
    adjusted = [record["p_holm"] for record in records]
    tested = sum(not math.isnan(p) for p in adjusted)
    significant = sum(record["p"] < 0.05 for record in records)
    surviving = sum(p < 0.05 for p in adjusted)
    against = (
        "the plain control of the same architecture and training seed (the plain ResNet fine-tuned from the same "
        "plain model for the same epochs and learning-rate schedule as the noisy model, so the difference is the "
        "noise's alone, not more training)"
        if reference == PLAIN_CONTROL
        else "the plain ResNet of the same architecture and training seed (in a --paired grid, the plain model it "
        "was fine-tuned from: this grid has no plain control fine-tuned alongside, so the noisy model also trained "
        "the fine-tune's extra epochs, the plain one did not, and a difference there is noise and more training "
        "together)"
    )
    return [
        f"difference = the noisy model minus {against}; ± = std across seeds; better in = seeds whose difference "
        "goes the better way; t, p: two-sided paired t-test across seeds (scipy.stats.ttest_rel; none below 2 "
        "seeds); p (Holm): p adjusted by Holm's step-down method over all "
        f"{tested} tests of this table (family-wise error rate)",
        f"{significant} of {tested} tested differences have p < 0.05 uncorrected, {surviving} after Holm's "
        f"correction for the {tested} tests",
    ]


def _number(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:.3g}"


def paper_tables(results: list[ModelResult], archs: list[str], methods: list[str]) -> list[Table]:
    """Every table of the grid, in report order: accuracy, per-architecture sensitivity, SIC, localisation; the
    attribution metrics on the images common to the models compared (:func:`common_images.compare`)."""
    compared, common = common_images.compare(results)
    scored = [sensitivity_table(compared, arch, methods) for arch in archs]
    scored.append(sic_table(compared, archs, methods))
    scored += [t for t in (localisation_table(compared, arch, methods) for arch in archs) if t is not None]
    for table in scored:
        table.notes += common
    return [accuracy_table(results, archs), *scored]
