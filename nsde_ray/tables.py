"""The papers' tables from the models of a paper-tables grid, and whether the papers' orderings held.

Input: one :class:`ModelResult` per trained model (architecture, noise mode, training seed) with the
metrics :func:`nsde_ray.evaluate.evaluate_repeated` logs: ``sensitivity_<method>`` is the mean over
the evaluation repeats, ``sensitivity_<method>_std`` their std. A table cell aggregates one metric
of one (architecture, noise mode) over the training seeds: its mean is the mean of the per-model
means, its ``±`` the sample std across seeds (the spread of the claim); the CSV files also hold the
per-seed values and the mean within-model std over repeats.

Tables (``Table.name`` is the file stem):
- ``accuracy``: validation accuracy per architecture and noise mode (context for the rest);
- ``sensitivity_<arch>``: AAAI 2022 Table 1's rows (IG, IG + NT, Saliency, DeepLIFT, DeepSHAP) and
  columns (Standard, Noise, Attribution-driven noise); max-sensitivity, lower is better;
- ``sic``: AAAI 2022 Table 2's rows (ResNet with gradients, IG, IG + NoiseTunnel; Gaussian SDE and
  attribution SDE with IG) per architecture; SIC AUC, higher is better;
- ``localisation_<arch>``: localisation AUC against foreground masks, where the data set has them.

Orderings (the claims): sensitivity ResNet > Gaussian SDE (IJCAI 2021 Tables 1-3) > attribution SDE
(AAAI 2022 Table 1), per method; SIC of IG ResNet < Gaussian SDE < attribution SDE (AAAI 2022
Table 2). Beyond the papers: input noise > Gaussian SDE in sensitivity (per-block noise beats
noise on the input image alone, the cheapest alternative). An ordering "held" when it holds strictly between the means over seeds; ``k/n seeds``
counts the seeds whose own models show it, out of the seeds where all its models finished.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from nsde_ray.config import NOISE_MODES

MODE_NAMES = {"none": "ResNet", "gaussian": "Gaussian SDE", "attribution": "attribution SDE", "input": "input noise"}
TABLE1_COLUMNS = {"none": "Standard (ResNet)", "gaussian": "Noise (Gaussian SDE)",
                  "attribution": "Attribution-driven noise", "input": "Input noise (baseline)"}
PAPER_MODES = ("none", "gaussian", "attribution")  # the papers' claimed order, most sensitive first
METHOD_NAMES = {"ig": "IG", "ig_nt": "IG + NT", "saliency": "Saliency", "deeplift": "DeepLIFT", "deepshap": "DeepSHAP"}
TABLE1_METHODS = ("ig", "ig_nt", "saliency", "deeplift", "deepshap")  # AAAI 2022 Table 1's row order
TABLE2_ROWS = (("none", "saliency", "Gradients"), ("none", "ig", "IG"), ("none", "ig_nt", "IG + Noise Tunnel"),
               ("gaussian", "ig", "IG"), ("attribution", "ig", "IG"), ("input", "ig", "IG"))  # AAAI 2022 Table 2: (mode, method, name)
MISSING = "—"


@dataclass(frozen=True)
class ModelResult:
    """One trained and evaluated model of the grid."""

    arch: str
    mode: str
    seed: int
    metrics: dict[str, float]


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
        return {f"{prefix}_mean": self.mean, f"{prefix}_seed_std": self.seed_std,
                f"{prefix}_repeat_std": self.repeat_std, f"{prefix}_n_seeds": len(self.per_seed),
                f"{prefix}_per_seed": ";".join(f"{seed}:{value:.6g}" for seed, value in sorted(self.per_seed.items()))}


def cell(results: list[ModelResult], arch: str, mode: str, metric: str) -> Cell:
    """``metric`` of the models of (``arch``, ``mode``), one value per seed."""
    models = [r for r in results if r.arch == arch and r.mode == mode and math.isfinite(r.metrics.get(metric, math.nan))]
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
    """Validation accuracy (fraction) per architecture and noise mode."""
    rows, records = [], []
    for arch in archs:
        cells = [cell(results, arch, mode, "val_accuracy") for mode in NOISE_MODES]
        rows.append([arch, *(c.text() for c in cells)])
        record: dict[str, object] = {"arch": arch}
        for mode, c in zip(NOISE_MODES, cells):
            record.update(c.columns(mode))
        records.append(record)
    return Table("accuracy", "Validation accuracy", ["Architecture", *MODE_NAMES.values()], rows, records)


def spread_note(cells: list[Cell]) -> list[str]:
    """Where the spread comes from: training seeds or evaluation repeats (empty without both).

    The seed std of a cell is that of the per-model means (models of different training seeds, the
    same evaluation draws); its repeat std is the mean std over one model's evaluation repeats.
    """
    pairs = [(c.seed_std, c.repeat_std) for c in cells if math.isfinite(c.seed_std) and c.repeat_std > 0]
    if not pairs:
        return []
    seed_std, repeat_std = (statistics.median(values) for values in zip(*pairs))
    return [f"spread: the std across training seeds (median over cells {seed_std:.2g}) is "
            f"{seed_std / repeat_std:.1f}x the std across evaluation repeats of one model ({repeat_std:.2g}); "
            + ("training seeds, not evaluation repeats, decide how sure an ordering is" if seed_std > repeat_std
               else "evaluation repeats, not training seeds, decide how sure an ordering is")]


def sensitivity_table(results: list[ModelResult], arch: str, methods: list[str]) -> Table:
    """AAAI 2022 Table 1 for one architecture: max-sensitivity per method and noise mode, with the orderings."""
    steps = {"ResNet > Gaussian": ("none", "gaussian"), "Gaussian > attribution": ("gaussian", "attribution"),
             "ResNet > Gaussian > attribution": PAPER_MODES, "input > Gaussian": ("input", "gaussian")}
    rows, records, every_cell = [], [], []
    counts = {claim: [0, 0] for claim in steps}  # methods where it held on the means, and in every seed
    shown = [m for m in TABLE1_METHODS if m in methods]
    for method in shown:
        cells = {mode: cell(results, arch, mode, f"sensitivity_{method}") for mode in NOISE_MODES}
        every_cell += cells.values()
        verdicts = {claim: ordering([cells[m] for m in modes], decreasing=True) for claim, modes in steps.items()}
        rows.append([METHOD_NAMES[method], *(cells[m].text() for m in NOISE_MODES), *(v.text() for v in verdicts.values())])
        record: dict[str, object] = {"arch": arch, "method": method}
        for mode in NOISE_MODES:
            record.update(cells[mode].columns(mode))
        for claim, verdict in verdicts.items():
            key = "held_" + claim.replace(" > ", "_gt_").replace(" ", "_").lower()
            record[key], record[f"{key}_seeds"] = verdict.held, f"{verdict.seeds_held}/{verdict.seeds}"
            counts[claim][0] += verdict.held is True
            counts[claim][1] += verdict.held is True and verdict.seeds_held == verdict.seeds
        records.append(record)
    notes = [f"{claim} (lower sensitivity is better; the {source} claim) held on the means for "
             f"{counts[claim][0]} of {len(shown)} methods, in every seed for {counts[claim][1]}"
             for claim, source in zip(steps, ("IJCAI 2021", "AAAI 2022", "AAAI 2022 Table 1",
                                              "input-noise baseline"))]
    notes += spread_note(every_cell)
    return Table(f"sensitivity_{arch}", f"Sensitivity, {arch} (AAAI 2022 Table 1; lower is better)",
                 ["Attribution", *TABLE1_COLUMNS.values(), *steps], rows, records, notes)


def sic_table(results: list[ModelResult], archs: list[str], methods: list[str]) -> Table:
    """AAAI 2022 Table 2 per architecture: SIC AUC of the ResNet's methods and of IG on each model."""
    rows, records, notes = [], [], []
    for arch in archs:
        for mode, method, name in TABLE2_ROWS:
            if method not in methods:
                continue
            c = cell(results, arch, mode, f"sic_{method}")
            rows.append([arch, MODE_NAMES[mode], name, c.text()])
            records.append({"arch": arch, "mode": mode, "method": method, **c.columns("sic")})
        ig = [cell(results, arch, mode, "sic_ig") for mode in PAPER_MODES]
        notes.append(f"{arch}: ResNet < Gaussian SDE < attribution SDE (SIC of IG, higher is better; AAAI 2022 "
                     f"Table 2): {ordering(ig, decreasing=False).text()}; ResNet < Gaussian SDE: "
                     f"{ordering(ig[:2], decreasing=False).text()}; Gaussian SDE < attribution SDE: "
                     f"{ordering(ig[1:], decreasing=False).text()}")
    return Table("sic", "SIC (AAAI 2022 Table 2; higher is better)", ["Architecture", "Model", "Method", "SIC"],
                 rows, records, notes)


def localisation_table(results: list[ModelResult], arch: str, methods: list[str]) -> Table | None:
    """Localisation AUC per method and noise mode (higher is better); None when no model has masks."""
    if not any(k.startswith("localisation_auc_") for r in results if r.arch == arch for k in r.metrics):
        return None
    rows, records = [], []
    for method in [m for m in TABLE1_METHODS if m in methods]:
        cells = {mode: cell(results, arch, mode, f"localisation_auc_{method}") for mode in NOISE_MODES}
        ranked = sorted((c.mean, mode) for mode, c in cells.items() if math.isfinite(c.mean))
        rows.append([METHOD_NAMES[method], *(cells[m].text() for m in NOISE_MODES),
                     MODE_NAMES[ranked[-1][1]] if ranked else MISSING])
        record: dict[str, object] = {"arch": arch, "method": method}
        for mode in NOISE_MODES:
            record.update(cells[mode].columns(mode))
        records.append(record)
    return Table(f"localisation_{arch}", f"Localisation AUC, {arch} (higher is better; no claim in the papers)",
                 ["Attribution", *(MODE_NAMES[m] for m in NOISE_MODES), "best"], rows, records)


def paper_tables(results: list[ModelResult], archs: list[str], methods: list[str]) -> list[Table]:
    """Every table of the grid, in report order: accuracy, per-architecture sensitivity, SIC, localisation."""
    tables = [accuracy_table(results, archs)]
    tables += [sensitivity_table(results, arch, methods) for arch in archs]
    tables.append(sic_table(results, archs, methods))
    tables += [t for t in (localisation_table(results, arch, methods) for arch in archs) if t is not None]
    return tables
