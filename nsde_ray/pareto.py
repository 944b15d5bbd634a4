"""Pareto fronts over the sweep's objectives: non-dominated sorting and hypervolume.

Objectives are given as a (N, M) array of values to *minimise*; :func:`as_minimisation` turns the
sweep's (val_accuracy max, sensitivity min, sic max) into that form.
"""

from __future__ import annotations

import numpy as np

from nsde_ray.registry import OBJECTIVES, objective_directions


def as_minimisation(rows: list[dict[str, float]], objectives: tuple[tuple[str, str], ...] | None = None) -> np.ndarray:
    """(N, M) losses from rows holding the ``objectives``' metrics ((name, ``min`` or ``max``); default: the
    registered objectives): maximised ones negated."""
    objectives = objective_directions() if objectives is None else objectives
    return np.array(
        [[float(row[name]) if mode == "min" else -float(row[name]) for name, mode in objectives] for row in rows],
        dtype=float,
    ).reshape(len(rows), len(objectives))


def non_dominated(losses: np.ndarray) -> np.ndarray:
    """Boolean mask (N,) of the rows of ``losses`` (N, M) that no other row dominates.

    Row a dominates b when a <= b everywhere and a < b somewhere. Rows with a NaN are never on the
    front. Duplicates of a front point are all on the front.
    """
    losses = np.asarray(losses, dtype=float)
    finite = np.isfinite(losses).all(axis=1)
    front = finite.copy()
    for i in np.flatnonzero(finite):
        others = losses[finite]
        dominated = np.any(np.all(others <= losses[i], axis=1) & np.any(others < losses[i], axis=1))
        front[i] = not dominated
    return front


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Volume of the region dominated by ``losses`` (N, M) and bounded by ``reference`` (M,), exact.

    Points not strictly better than the reference in every objective contribute nothing.
    Recursive slicing on the last objective; fine for the few hundred points a sweep has.
    """
    losses = np.asarray(losses, dtype=float).reshape(-1, len(reference))
    reference = np.asarray(reference, dtype=float)
    losses = losses[np.isfinite(losses).all(axis=1) & (losses < reference).all(axis=1)]
    return _slice_volume(losses, reference)


def _slice_volume(points: np.ndarray, reference: np.ndarray) -> float:
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    order = np.argsort(points[:, -1])
    points = points[order]
    volume = 0.0
    for k in range(len(points)):
        upper = points[k + 1, -1] if k + 1 < len(points) else reference[-1]
        if upper > points[k, -1]:
            volume += (upper - points[k, -1]) * _slice_volume(points[: k + 1, :-1], reference[:-1])
    return volume


def sweep_reference(objectives: tuple[tuple[str, str], ...] | None = None) -> np.ndarray:
    """The hypervolume reference point (each objective's :attr:`Objective.reference`) in :func:`as_minimisation`
    form."""
    objectives = objective_directions() if objectives is None else objectives
    return as_minimisation([{name: OBJECTIVES[name].reference for name, _ in objectives}], objectives)[0]


def front_probability(losses: np.ndarray, standard_errors: np.ndarray, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """Probability (N,) that each row of ``losses`` (N, M) is non-dominated, given its standard errors (N, M).

    A parametric bootstrap over the seeds' means: each draw replaces every row by a sample of
    N(mean, SE²) per objective, independently, and counts the rows that no other row dominates
    (ties are not dominance, as in :func:`non_dominated`). A standard error that is NaN (one seed)
    counts as 0, so such rows are as sure as their means; rows with a non-finite loss get 0.
    """
    losses = np.asarray(losses, dtype=float)
    standard_errors = np.nan_to_num(np.asarray(standard_errors, dtype=float), nan=0.0)
    finite = np.isfinite(losses).all(axis=1)
    probability = np.zeros(len(losses))
    if not finite.any():
        return probability
    means, scales = losses[finite], standard_errors[finite]
    rng = np.random.default_rng(seed)
    on_front = np.zeros(len(means))
    for start in range(0, draws, 500):
        sample = means + scales * rng.standard_normal((min(500, draws - start), *means.shape))  # (D, N, M)
        no_worse = (sample[:, :, None, :] <= sample[:, None, :, :]).all(axis=3)  # [d, j, i]: j <= i everywhere
        better = (sample[:, :, None, :] < sample[:, None, :, :]).any(axis=3)
        on_front += (~(no_worse & better).any(axis=1)).sum(axis=0)
    probability[finite] = on_front / draws
    return probability


def noise_floor(means: np.ndarray, standard_errors: np.ndarray) -> tuple[float, float, bool]:
    """(median standard error, range of the means, flagged) of one objective over a sweep's configurations.

    An objective is flagged as not separating the configurations when its noise floor (the median
    SE) exceeds half the range its means span. NaN values are left out; with no finite SE (one
    seed per configuration) the floor is NaN and nothing is flagged.
    """
    means, standard_errors = np.asarray(means, dtype=float), np.asarray(standard_errors, dtype=float)
    means, standard_errors = means[np.isfinite(means)], standard_errors[np.isfinite(standard_errors)]
    spread = float(means.max() - means.min()) if len(means) else float("nan")
    floor = float(np.median(standard_errors)) if len(standard_errors) else float("nan")
    return floor, spread, bool(np.isfinite(floor) and np.isfinite(spread) and floor > spread / 2)
