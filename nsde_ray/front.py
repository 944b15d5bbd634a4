"""The sweep's Pareto front with its uncertainty: who may enter it, what drives it, how sure it is.

Input: one row per finished configuration (:meth:`nsde_ray.tracking.SweepTracker.front_rows`): the
objectives' means over training seeds (``val_accuracy``, ``sensitivity``, ``sic``), their standard
errors (``<name>_se``; NaN with one seed), ``randomisation_passed_ig`` and
``sic_valid_fraction_ig``. :func:`assess_front` adds to every row:

- ``excluded``: why it cannot be on the front (empty if it can): a non-finite objective (a
  diverged run, or broken attribution maps), or IG failing the model-parameter randomisation check
  (:mod:`nsde_ray.metrics.randomisation`: maps that do not depend on the model);
- ``pareto_front``: non-dominated on the means, among the eligible rows, over the objectives in use;
- ``pareto_probability``: the probability of being non-dominated when each mean is redrawn from
  N(mean, SE²) (:func:`nsde_ray.pareto.front_probability`): how sure the membership is.

Why a probability rather than a pairwise "dominated with confidence" test: three objectives and a
dozen configurations make many pairwise tests, each with its own threshold, while the front is a
joint property; the bootstrap answers the question a user asks ("would this configuration still be
on the front with other seeds?") in one number, and with one seed it reduces to the plain front.

SIC drives the front only where it is measured on most images: PAIR's rules skip an image whose
blurred version is already classified correctly, and below :data:`MIN_SIC_VALID_FRACTION` (0.75,
the median over the eligible configurations) the median curve is that of an unrepresentative
minority. Each objective also gets its noise floor (:func:`nsde_ray.pareto.noise_floor`): an
objective whose median SE exceeds half its range over the sweep is flagged as not separating the
configurations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nsde_ray import pareto
from nsde_ray.registry import objective_directions

if TYPE_CHECKING:
    from nsde_ray.mode_fronts import ModeReport

MIN_SIC_VALID_FRACTION = 0.75
RANDOMISATION_GATE = "randomisation_passed_ig"
SIC_VALID = "sic_valid_fraction_ig"


@dataclass
class FrontReport:
    """The assessed rows, the objectives that drive the front, each objective's noise floor, notes for people."""

    rows: list[dict[str, Any]]
    objectives: tuple[tuple[str, str], ...]
    floors: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    modes: ModeReport | None = None  # the noise modes compared by their own fronts (nsde_ray.mode_fronts)

    @property
    def flagged(self) -> list[str]:
        """Objectives whose noise floor exceeds half their range."""
        return [name for name, (_, _, flagged) in self.floors.items() if flagged]

    def hypervolume(self) -> float:
        """Hypervolume of the front over the objectives in use (reference point:
        :attr:`nsde_ray.registry.Objective.reference`)."""
        front = [row for row in self.rows if row["pareto_front"]]
        return pareto.hypervolume(
            pareto.as_minimisation(front, self.objectives), pareto.sweep_reference(self.objectives)
        )


def _standard_errors(rows: list[dict[str, Any]], objectives: tuple[tuple[str, str], ...]) -> np.ndarray:
    """(N, M) standard errors of the rows' objectives; NaN where a row has none (one seed)."""
    return np.array(
        [[float(row.get(f"{name}_se", math.nan)) for name, _ in objectives] for row in rows], dtype=float
    ).reshape(len(rows), len(objectives))


def exclusion(row: dict[str, Any]) -> str:
    """Why ``row`` cannot be on the front, or ``""``."""
    bad = [name for name, _ in objective_directions() if not math.isfinite(float(row.get(name, math.nan)))]
    if bad:
        return f"non-finite {', '.join(bad)}"
    if float(row.get(RANDOMISATION_GATE, 1.0)) < 1.0:
        return "IG failed the randomisation check"
    return ""


def assess_front(rows: list[dict[str, Any]], seed: int = 0) -> FrontReport:
    """Mark ``rows`` (in place) with ``excluded``, ``pareto_front`` and ``pareto_probability``; see the module doc."""
    for row in rows:
        row["excluded"] = exclusion(row)
    eligible = [row for row in rows if not row["excluded"]]
    all_objectives = objective_directions()
    objectives, notes = all_objectives, []
    valid = [float(row[SIC_VALID]) for row in eligible if math.isfinite(float(row.get(SIC_VALID, math.nan)))]
    if valid and float(np.median(valid)) < MIN_SIC_VALID_FRACTION:
        objectives = tuple(o for o in all_objectives if o[0] != "sic")
        notes.append(
            f"sic does not drive the front: PAIR's rules kept a median {np.median(valid):.0%} of the "
            f"images (below {MIN_SIC_VALID_FRACTION:.0%}); it is still logged"
        )
    for row in rows:
        row["pareto_front"], row["pareto_probability"] = False, 0.0
    if eligible:
        values, errors = pareto.as_minimisation(eligible, objectives), _standard_errors(eligible, objectives)
        for row, on_front, probability in zip(
            eligible, pareto.non_dominated(values), pareto.front_probability(values, errors, seed=seed)
        ):
            row["pareto_front"], row["pareto_probability"] = bool(on_front), float(probability)
    floors = {
        name: pareto.noise_floor([float(r[name]) for r in eligible], _standard_errors(eligible, ((name, mode),))[:, 0])
        for name, mode in all_objectives
    }
    for name, (floor, spread, flagged) in floors.items():
        if flagged:
            notes.append(
                f"{name} does not separate the configurations: its noise floor (median SE {floor:.3g}) "
                f"exceeds half its range over the sweep ({spread:.3g})"
            )
    excluded = [row for row in rows if row["excluded"]]
    if excluded:
        notes.append(
            f"{len(excluded)} configuration(s) kept off the front: "
            + "; ".join(f"{row.get('trial_id', '?')}: {row['excluded']}" for row in excluded)
        )
    return FrontReport(rows, objectives, floors, notes)
