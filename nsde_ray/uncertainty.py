"""How sure the sweep's Pareto front is, with the few training seeds a sweep can afford.

Input, per configuration i: its per-seed objective values (K_i, M) in minimisation form
(:func:`nsde_ray.pareto.as_minimisation` of its seeds' rows), the training seed of each of those
values (the same seed means the same initial weights and data order in every configuration), and
optionally a group label (the noise mode) and, per objective, a measured evaluation-repeat
variance. The model, per objective::

    y[i, s] = mu[i] + b[s] + e[i, s],    b ~ N(0, tau²),    e ~ N(0, sigma²_pool(i))

- **Seed effect.** b[s] is what seed s does to every configuration alike; e, the configuration x
  seed interaction plus the evaluation's noise, is what a *comparison* at the same seeds sees.
  sigma² comes from the seed-blocked least-squares fit (configuration and seed effects, so a large
  shared seed effect does not inflate it); tau² is the within-configuration spread of the raw
  values minus sigma² (a moment estimate, 0 if negative). The means are the generalised least
  squares estimates under that covariance, and the draws are multivariate over the configurations
  with the GLS covariance: the shared seed effect is drawn, correlated. In a balanced sweep (every
  configuration at the same seeds) this is exactly the blocked comparison: the means are the plain
  seed means, and the shared part moves every configuration alike, which changes no dominance.
  Drawing it rather than only blocking it matters once the seeds are unbalanced, which adaptive
  replication makes them: a seed only one configuration has carries nothing in a pure blocked fit
  (it only estimates its own seed effect), but here it counts, with tau² added to its noise.
  Today's independent draws with each configuration's own raw spread count the seed effect into
  every comparison when it is large, and nothing at all when two seeds agree by chance.
- **Pooling.** With 2 seeds a configuration's own residual variance has about 1 degree of
  freedom (log s² then has a sampling variance near 5), so it is pooled: the empirical-Bayes
  (limma) estimate s̃ᵢ² = (ν₀ s₀² + dᵢ sᵢ²) / (ν₀ + dᵢ) with s₀², ν₀ the pooled variance and degrees
  of freedom of the *other* configurations of its pool, which equals the pool's pooled variance
  (:func:`pooled_variance`). We do not estimate ν₀ from the spread of the sᵢ² (limma's moment
  fit): at 1-3 degrees of freedom each that spread is sampling noise. A pool is the configuration's
  group (noise mode) when that group has :data:`MIN_GROUP_DOF` residual degrees of freedom, else
  all configurations: variances may differ between noise modes, not within one. A configuration's
  degrees of freedom dᵢ are its share of the residual ones (the sum of 1 - leverage over its
  values), so dᵢ = (K - 1)(N - 1)/N in a balanced sweep of N configurations.
- **Evaluation noise.** Each per-seed value is one evaluation, so sigma² already holds one
  evaluation's noise; a measured evaluation-repeat variance (:func:`eval_variance`, divided by the
  repeats when a seed's value is a mean over several evaluations) is a *floor* on sigma², not an
  addition: the residual of a single-evaluation value cannot be smaller than its evaluation noise,
  and adding it would count that noise twice.
- **Tails.** Configuration means are drawn from a multivariate Student t: the normal with the GLS
  covariance, each configuration's deviation divided by its pool's sqrt(chi²_ν/ν), one per draw and
  objective, ν the pool's degrees of freedom (one variance estimate, so one scale draw for all its
  configurations). With no residual degrees of freedom (one seed each) and no floor, the draws
  are the plain means.

Objectives are drawn independently of one another; the uncertainty of tau² itself is not drawn
(it cancels in balanced sweeps). :func:`front_probability` is the fraction of draws in which a
configuration is non-dominated (ties are not dominance, as in :func:`nsde_ray.pareto.non_dominated`);
:func:`standard_errors` are the comparison standard errors behind it (the shared seed effect left
out), for display and for :func:`nsde_ray.pareto.noise_floor`. :func:`next_seeds` is the
adaptive replication policy: one more seed to the configurations whose membership is undecided.
Configurations with a non-finite value are left out: NaN means and errors, probability 0.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_GROUP_DOF = 4.0  # residual degrees of freedom a group needs to have its own pooled variance
# membership probabilities still undecided (bounds included): a 0.5 cut errs on at most 10% of the rest
BAND = (0.1, 0.9)
_DRAW_CHUNK = 500


@dataclass(frozen=True)
class Fit:
    """The fit of N configurations' M objectives (rows of left-out configurations are NaN).

    means: (N, M) each configuration's GLS mean, in the values' units;
    covariance: (M, N, N) covariance of those means (the shared seed effect included), units²;
    variance: (N, M) the residual variance of one seed-run of each configuration (pooled, floored), units²;
    dof: (N, M) degrees of freedom of that variance (0: none, the draws are normal);
    seed_variance: (M,) tau², the variance of the seed effect, units²;
    pools: (N,) the pool each configuration's variance comes from (its group, or ``"all"``).
    """

    means: np.ndarray
    covariance: np.ndarray
    variance: np.ndarray
    dof: np.ndarray
    seed_variance: np.ndarray
    pools: tuple


def pooled_variance(
    ss: np.ndarray, dof: np.ndarray, groups: Sequence[Hashable], min_group_dof: float = MIN_GROUP_DOF
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Each configuration's pooled residual variance (N, M), its degrees of freedom (N,) and pool (N,).

    ``ss``: (N, M) residual sums of squares of the configurations; ``dof``: (N,) their residual
    degrees of freedom; ``groups``: (N,) labels. A group with at least ``min_group_dof`` degrees of
    freedom pools its own: sum(ss) / sum(dof) over its configurations; the others pool over all
    configurations. NaN where the pool has no degrees of freedom.
    """
    ss, dof, labels = np.asarray(ss, dtype=float), np.asarray(dof, dtype=float), np.asarray(groups, dtype=object)
    variance, pool_dof, pools = np.empty_like(ss), np.empty(len(dof)), np.array(["all"] * len(dof), dtype=object)
    variance[:], pool_dof[:] = _pool(ss, dof), dof.sum()
    for group in dict.fromkeys(labels.tolist()):
        members = labels == group
        if dof[members].sum() >= min_group_dof:
            variance[members], pool_dof[members] = _pool(ss[members], dof[members]), dof[members].sum()
            pools[members] = group
    return variance, pool_dof, tuple(pools)


def _pool(ss: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """(M,) pooled variance sum(ss) / sum(dof) of ``ss`` (N, M) with ``dof`` (N,); NaN without degrees of freedom."""
    total = dof.sum()
    return ss.sum(axis=0) / total if total > 1e-9 else np.full(ss.shape[1], np.nan)


def eval_variance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(M,) variance of one evaluation, from pairs of evaluations of the same models (R, M) each.

    Half the mean squared difference over the R pairs whose values are finite: the evaluation's
    own noise (other images, perturbations and SIC draws), the model fixed. NaN with no pair.
    """
    diff = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    finite = np.isfinite(diff)
    squares = np.where(finite, diff, 0.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return squares.sum(axis=0) / (2 * finite.sum(axis=0))


def fit(
    values: Sequence[np.ndarray],
    seeds: Sequence[Sequence[int]],
    groups: Sequence[Hashable] | None = None,
    eval_var: np.ndarray | None = None,
    min_group_dof: float = MIN_GROUP_DOF,
) -> Fit:
    """The pooled mixed-model fit of configurations' per-seed ``values`` (K_i, M) at training ``seeds`` (K_i,).

    ``groups``: (N,) pool labels (e.g. noise modes; default one pool); ``eval_var``: (M,) per-seed
    evaluation variance, a floor on the residual variance (NaN entries: no floor). Seed sets may
    differ; values at a seed no other configuration has add to their configuration's mean (through
    tau²) but not to sigma²'s degrees of freedom.
    """
    values = [np.asarray(v, dtype=float).reshape(len(s), -1) for v, s in zip(values, seeds)]
    n, n_obj = len(values), max((v.shape[1] for v in values), default=0)
    keep = [i for i, v in enumerate(values) if v.size and np.isfinite(v).all()]
    means, variance, dof = np.full((n, n_obj), np.nan), np.full((n, n_obj), np.nan), np.zeros((n, n_obj))
    covariance, seed_variance, pools = np.full((n_obj, n, n), np.nan), np.full(n_obj, np.nan), ["all"] * n
    if not keep:
        return Fit(means, covariance, variance, dof, seed_variance, tuple(pools))
    kept = [values[i] for i in keep]
    config_of, seed_of = _layout([seeds[i] for i in keep])
    ss, own_dof = _blocked_residuals(np.concatenate(kept), config_of, seed_of)
    labels = [groups[i] for i in keep] if groups is not None else ["all"] * len(keep)
    pooled, pooled_dof, kept_pools = pooled_variance(ss, own_dof, labels, min_group_dof)
    floor = np.full(n_obj, np.nan) if eval_var is None else np.asarray(eval_var, dtype=float)
    variance[keep], dof[keep] = np.fmax(pooled, floor), pooled_dof[:, None]
    seed_variance[:] = _seed_variance(kept, _pool(ss, own_dof))
    response = np.concatenate(kept)
    for m in range(n_obj):
        means[keep, m], covariance[m][np.ix_(keep, keep)] = _gls(
            response[:, m], config_of, seed_of, variance[keep, m][config_of], seed_variance[m]
        )
    for k, i in enumerate(keep):
        pools[i] = kept_pools[k]
    return Fit(means, covariance, variance, dof, seed_variance, tuple(pools))


def _layout(seeds: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(configuration index (n,), seed index (n,)) of each value, the seeds numbered in sorted order."""
    seed_ids = sorted({int(s) for config in seeds for s in config})
    config_of = np.concatenate([np.full(len(config), k) for k, config in enumerate(seeds)])
    seed_of = np.array([seed_ids.index(int(s)) for config in seeds for s in config])
    return config_of, seed_of


def _blocked_residuals(
    response: np.ndarray, config_of: np.ndarray, seed_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(residual sums of squares (N, M), residual degrees of freedom (N,)) of the additive configuration + seed fit.

    A configuration's degrees of freedom are the sum of 1 - leverage over its values, so they add
    up to the fit's residual degrees of freedom (n - rank: disjoint seed sets are allowed).
    """
    configs, seeds = config_of.max() + 1, seed_of.max() + 1
    design = np.hstack([np.eye(configs)[config_of], np.eye(seeds)[seed_of][:, 1:]])
    gram = np.linalg.pinv(design.T @ design)
    residual = response - design @ (gram @ design.T @ response)
    spare = 1.0 - np.einsum("ij,jk,ik->i", design, gram, design)
    ss = np.array([(residual[config_of == k] ** 2).sum(axis=0) for k in range(configs)])
    return ss, np.clip([spare[config_of == k].sum() for k in range(configs)], 0.0, None)


def _seed_variance(values: Sequence[np.ndarray], residual_variance: np.ndarray) -> np.ndarray:
    """(M,) tau²: pooled within-configuration variance of raw ``values`` (K_i, M) minus ``residual_variance`` (M,)."""
    dof = sum(len(v) - 1 for v in values)
    if dof == 0:
        return np.zeros(len(residual_variance))
    within = sum(((v - v.mean(axis=0)) ** 2).sum(axis=0) for v in values) / dof
    return np.clip(np.nan_to_num(within - residual_variance), 0.0, None)


def _gls(
    response: np.ndarray, config_of: np.ndarray, seed_of: np.ndarray, noise: np.ndarray, seed_variance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(means (N,), covariance (N, N)) of the configurations under cov(y) = diag(``noise``) + tau² [same seed].

    ``response``, ``noise``: (n,) values and their residual variances. Without a usable residual
    variance (none, or not positive): the plain means and no covariance.
    """
    configs = np.eye(config_of.max() + 1)[config_of]  # (n, N)
    if not (np.isfinite(noise) & (noise > 0)).all():
        counts = configs.sum(axis=0)
        return configs.T @ response / counts, np.zeros((len(counts), len(counts)))
    inverse = np.diag(1.0 / noise)
    if seed_variance > 0:  # Woodbury: (D + tau² Z Z')⁻¹
        seeds = np.eye(seed_of.max() + 1)[seed_of] / noise[:, None]  # D⁻¹ Z, (n, S)
        inner = np.linalg.inv(np.eye(seeds.shape[1]) / seed_variance + np.eye(seeds.shape[1])[seed_of].T @ seeds)
        inverse -= seeds @ inner @ seeds.T
    covariance = np.linalg.inv(configs.T @ inverse @ configs)
    return covariance @ configs.T @ inverse @ response, covariance


def standard_errors(
    values: Sequence[np.ndarray],
    seeds: Sequence[Sequence[int]],
    groups: Sequence[Hashable] | None = None,
    eval_var: np.ndarray | None = None,
) -> np.ndarray:
    """(N, M) comparison standard errors of the configurations' means, in the values' units (see :func:`fit`).

    The SE of each mean's distance to the average of all the kept means, times sqrt(N / (N - 1)):
    sigma / sqrt(K) in a balanced sweep. The seed effect all configurations share is not in it: it
    says how well configurations are told apart, not how far a mean is from other seeds' mean. NaN
    where no variance is known (one seed each and no evaluation floor), never a claim of 0.
    """
    result = fit(values, seeds, groups, eval_var)
    keep = np.flatnonzero(np.isfinite(result.means).all(axis=1))
    errors = np.full(result.means.shape, np.nan)
    centre = np.eye(len(keep)) - 1.0 / len(keep) if len(keep) > 1 else np.eye(len(keep))
    scale = len(keep) / (len(keep) - 1) if len(keep) > 1 else 1.0
    for m in range(result.means.shape[1]):
        centred = centre @ result.covariance[m][np.ix_(keep, keep)] @ centre
        errors[keep, m] = np.sqrt(np.clip(np.diag(centred) * scale, 0.0, None))
    return np.where(np.isfinite(result.variance), errors, np.nan)  # no variance known (one seed each): unknown


def posterior_draws(
    values: Sequence[np.ndarray],
    seeds: Sequence[Sequence[int]],
    groups: Sequence[Hashable] | None = None,
    eval_var: np.ndarray | None = None,
    draws: int = 4000,
    rng_seed: int = 0,
) -> np.ndarray:
    """(D, N, M) plausible configuration means (multivariate t around :func:`fit`'s means); NaN rows left out."""
    result = fit(values, seeds, groups, eval_var)
    keep = np.flatnonzero(np.isfinite(result.means).all(axis=1))
    sample = np.full((draws, *result.means.shape), np.nan)
    rng = np.random.default_rng(rng_seed)
    pools = np.array(result.pools, dtype=object)[keep]
    for m in range(result.means.shape[1]):
        noise = rng.standard_normal((draws, len(keep))) @ _sqrt_psd(result.covariance[m][np.ix_(keep, keep)]).T
        for pool in dict.fromkeys(pools.tolist()):
            members, nu = pools == pool, result.dof[keep[pools == pool][0], m]
            if nu > 1e-9:
                noise[:, members] /= np.sqrt(rng.chisquare(nu, size=(draws, 1)) / nu)
        sample[:, keep, m] = result.means[keep, m] + noise
    return sample


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """A (N, N) root A of a positive semi-definite ``matrix``: A @ A.T == matrix."""
    eigenvalues, vectors = np.linalg.eigh(matrix)
    return vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def front_probability(*args: Any, **kwargs: Any) -> np.ndarray:
    """(N,) probability that each configuration is non-dominated, over :func:`posterior_draws` (called with
    these arguments: values, seeds, groups, eval_var, draws, rng_seed); 0 if left out."""
    return non_dominated_fraction(posterior_draws(*args, **kwargs))


def non_dominated_fraction(sample: np.ndarray) -> np.ndarray:
    """(N,) fraction of the draws of ``sample`` (D, N, M) in which each row is non-dominated; rows with a NaN: 0."""
    keep = np.isfinite(sample).all(axis=(0, 2))
    counts = np.zeros(sample.shape[1])
    for start in range(0, len(sample), _DRAW_CHUNK):
        chunk = sample[start : start + _DRAW_CHUNK][:, keep]
        no_worse = (chunk[:, :, None, :] <= chunk[:, None, :, :]).all(axis=3)  # [d, j, i]: j <= i everywhere
        better = (chunk[:, :, None, :] < chunk[:, None, :, :]).any(axis=3)
        counts[keep] += (~(no_worse & better).any(axis=1)).sum(axis=0)
    return counts / max(len(sample), 1)


def next_seeds(
    probabilities: np.ndarray,
    seeds_per_config: np.ndarray,
    max_seeds: int,
    budget: int,
    band: tuple[float, float] = BAND,
) -> np.ndarray:
    """Indices of the configurations that get one more seed now, most undecided (closest to 0.5) first.

    Only configurations whose front probability lies in ``band`` (bounds included) and that have fewer
    than ``max_seeds`` seeds qualify; at most ``budget`` (remaining seed-runs) of them. Empty: the
    front is decided, or the budget spent. Rerun the front after the new seeds and call again.
    """
    probabilities, counts = np.asarray(probabilities, dtype=float), np.asarray(seeds_per_config)
    undecided = (probabilities >= band[0]) & (probabilities <= band[1]) & (counts < max_seeds)
    order = np.argsort(np.abs(probabilities - 0.5), kind="stable")
    return order[undecided[order]][: max(int(budget), 0)]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given; NaN stays NaN and is not counted as a test.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted p_(i) is
    max over j <= i of min(1, (m - j + 1) * p_(j)). Rejecting where the adjusted p < alpha controls the
    family-wise error rate at alpha over the m tests, under any dependence between them.
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted
