"""Means and spreads of metrics over replicates: training seeds of a configuration, or evaluation repeats.

One rule for both (:func:`mean_and_spread`): the mean and the sample standard deviation (ddof 1).
Seeds (:func:`aggregate_seeds`) keep NaN (a configuration is only as good as all of its seeds) and log
``<name>_std`` and ``<name>_se`` for the :func:`replicated` names; evaluation repeats
(:func:`nsde_ray.evaluate.evaluate_repeated`) leave NaN repeats out and keep ``<name>_std`` of every metric.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nsde_ray.registry import objective_names

TRAINING_REPLICATED = ("noise_energy",)  # training metrics whose spread across seeds is logged, besides objectives


def replicated() -> tuple[str, ...]:
    """Name prefixes whose spread across seeds is logged: the objectives, :data:`TRAINING_REPLICATED` and each
    registered metric's (:attr:`nsde_ray.metric_registry.MethodMetric.replicated`)."""
    from nsde_ray.metric_registry import METHOD_METRICS

    return (
        *objective_names(),
        *TRAINING_REPLICATED,
        *(prefix for metric in METHOD_METRICS.values() for prefix in metric.replicated),
    )


def mean_and_spread(values: np.ndarray, skip_nan: bool = False) -> tuple[float, float]:
    """(mean, sample std with ddof 1) of ``values`` (K,); ``skip_nan`` leaves NaN values out, else a NaN makes
    both NaN. The std is NaN with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if skip_nan:
        values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def aggregate_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """One configuration's metrics from its seeds' (K dicts): the mean of every metric all seeds report.

    For :func:`replicated` names (prefixes) also ``<name>_std`` (sample std, ddof 1) and
    ``<name>_se`` (std / sqrt(K)). A NaN in any seed makes the mean NaN: a configuration is only
    as good as all of its seeds. Plus ``seeds`` = K.
    """
    names = [name for name in per_seed[0] if all(_is_number(seed.get(name)) for seed in per_seed)]
    prefixes = replicated()
    aggregated: dict[str, float] = {"seeds": float(len(per_seed))}
    for name in names:
        mean, std = mean_and_spread([float(seed[name]) for seed in per_seed])
        aggregated[name] = mean
        if name.startswith(prefixes) and len(per_seed) > 1:
            aggregated[f"{name}_std"], aggregated[f"{name}_se"] = std, std / math.sqrt(len(per_seed))
    return aggregated


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
