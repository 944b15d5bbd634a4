"""Pareto fronts over the sweep's objectives: non-dominated sorting and hypervolume.

Objectives are given as a (N, M) array of values to *minimise*; :func:`as_minimisation` turns the
sweep's (val_accuracy max, sensitivity min, sic max) into that form.
"""

from __future__ import annotations

import numpy as np

OBJECTIVES = (("val_accuracy", "max"), ("sensitivity", "min"), ("sic", "max"))
# Hypervolume reference point in the sweep's own units: accuracy 0, sensitivity 1 (the attribution
# moved by as much as its own norm), SIC 0. Fixed, so the hypervolume is comparable across steps
# and sweeps; a trial beyond it in any objective adds nothing.
REFERENCE_POINT = {"val_accuracy": 0.0, "sensitivity": 1.0, "sic": 0.0}


def as_minimisation(rows: list[dict[str, float]]) -> np.ndarray:
    """(N, 3) losses from rows holding the objectives' metrics: maximised ones are negated."""
    return np.array([[row[name] if mode == "min" else -row[name] for name, mode in OBJECTIVES] for row in rows],
                    dtype=float).reshape(len(rows), len(OBJECTIVES))


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
            volume += (upper - points[k, -1]) * _slice_volume(points[:k + 1, :-1], reference[:-1])
    return volume


def sweep_reference() -> np.ndarray:
    """The hypervolume reference point in :func:`as_minimisation` form."""
    return as_minimisation([REFERENCE_POINT])[0]
