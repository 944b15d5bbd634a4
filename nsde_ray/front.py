"""The sweep's Pareto front with its uncertainty: who may enter it, what drives it, how sure it is.

Input: one row per finished configuration (:meth:`nsde_ray.tracking.SweepTracker.front_rows`): the
objectives' means over training seeds (``val_accuracy``, ``sensitivity``, ``sic``), its seeds' own
values (``per_seed``, one dict per seed) and training seeds (``seed_ids``), its ``noise_mode``,
``randomisation_passed_ig`` and ``sic_valid_fraction_ig``. :func:`assess_front` adds to every row:

- ``excluded``: why it cannot be on the front (empty if it can): a non-finite objective (a
  diverged run, or broken attribution maps), or IG failing the model-parameter randomisation check
  (:mod:`nsde_ray.metrics.randomisation`: maps that do not depend on the model);
- ``pareto_front``: non-dominated on the means, among the eligible rows, over the objectives in use;
- ``pareto_probability``: the probability of being non-dominated when the means are redrawn from the
  uncertainty model of :mod:`nsde_ray.uncertainty` (seed-blocked, each configuration's variance
  moderated towards a prior fitted to the sweep's configurations, Student-t tails): how sure the
  membership is;
- ``<objective>_se``: that model's standard errors, which the table shows (two seeds that happen to
  agree no longer show ± 0).

Why a probability rather than a pairwise "dominated with confidence" test: three objectives and a
dozen configurations make many pairwise tests, each with its own threshold, while the front is a
joint property; the bootstrap answers the question a user asks ("would this configuration still be
on the front with other seeds?") in one number, and with one seed each it reduces to the plain front.
The noise modes are compared by their own fronts (:mod:`nsde_ray.mode_fronts`), from draws of the same
model.

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
from typing import Any

import numpy as np

from nsde_ray import mode_fronts, pareto, uncertainty
from nsde_ray.registry import NOISE_MODES, objective_directions

MIN_SIC_VALID_FRACTION = 0.75
RANDOMISATION_GATE = "randomisation_passed_ig"
SIC_VALID = "sic_valid_fraction_ig"
PER_SEED, SEED_IDS = "per_seed", "seed_ids"  # a row's seeds' own objective values (dicts) and training seeds
MODE_DRAWS = 4000


@dataclass
class FrontReport:
    """The assessed rows, the objectives that drive the front, each objective's noise floor, notes for people."""

    rows: list[dict[str, Any]]
    objectives: tuple[tuple[str, str], ...]
    floors: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    modes: mode_fronts.ModeReport | None = None  # the noise modes compared by their own fronts

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


def _seed_values(
    rows: list[dict[str, Any]], objectives: tuple[tuple[str, str], ...]
) -> tuple[list[np.ndarray], list[list[int]]]:
    """Each row's per-seed objective values (K, M), in :func:`nsde_ray.pareto.as_minimisation` form, and their
    training seeds: ``per_seed`` and ``seed_ids`` where the row has them, else its means as one seed."""
    values, seeds = [], []
    for row in rows:
        per_seed = row.get(PER_SEED) or [row]
        values.append(pareto.as_minimisation(per_seed, objectives))
        seeds.append(list(row.get(SEED_IDS) or range(len(per_seed))))
    return values, seeds


def exclusion(row: dict[str, Any]) -> str:
    """Why ``row`` cannot be on the front, or ``""``."""
    bad = [name for name, _ in objective_directions() if not math.isfinite(float(row.get(name, math.nan)))]
    if bad:
        return f"non-finite {', '.join(bad)}"
    if float(row.get(RANDOMISATION_GATE, 1.0)) < 1.0:
        return "IG failed the randomisation check"
    return ""


def assess_front(rows: list[dict[str, Any]], seed: int = 0, modes: tuple[str, ...] = ()) -> FrontReport:
    """Mark ``rows`` (in place) with ``excluded``, ``pareto_front``, ``pareto_probability`` and the model's standard
    errors ``<objective>_se``, and compare the noise ``modes`` (those searched; the rows' own modes too) by their
    fronts; see the module doc."""
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
    draws = np.full((MODE_DRAWS, len(rows), 2), np.nan)
    if eligible:
        values, seeds = _seed_values(eligible, all_objectives)
        used = [all_objectives.index(objective) for objective in objectives]
        fitted = uncertainty.fit(values, seeds)
        probability = uncertainty.front_probability(fitted, rng_seed=seed, objectives=used)
        errors = uncertainty.standard_errors(fitted)
        for row, on_front, p, se in zip(
            eligible, pareto.non_dominated(pareto.as_minimisation(eligible, objectives)), probability, errors
        ):
            row["pareto_front"], row["pareto_probability"] = bool(on_front), float(p)
            row.update({f"{name}_se": float(error) for (name, _), error in zip(all_objectives, se)})
        compared = [all_objectives.index(objective) for objective in mode_fronts.FRONT_OBJECTIVES]
        sample = uncertainty.posterior_draws(fitted, draws=MODE_DRAWS, rng_seed=seed, objectives=compared)
        sample[..., 0] *= -1  # accuracy back from minimisation form
        draws[:, [rows.index(row) for row in eligible]] = sample
    floors = {
        name: pareto.noise_floor([float(r[name]) for r in eligible], [float(r[f"{name}_se"]) for r in eligible])
        for name, _ in all_objectives
    }
    labels = {name: mode.label for name, mode in NOISE_MODES.items()}
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
    modes_report = mode_fronts.compare_modes(rows, labels, draws, modes=modes, seed=seed)
    return FrontReport(rows, objectives, floors, notes, modes_report)
