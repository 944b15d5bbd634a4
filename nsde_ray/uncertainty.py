"""How sure the sweep's Pareto front is, with the few training seeds a sweep can afford.

Input, per configuration i: its per-seed objective values (K_i, M) in minimisation form
(:func:`nsde_ray.pareto.as_minimisation` of its seeds' rows), the training seed of each of those
values (the same seed means the same initial weights and data order in every configuration), and
optionally a group label (the noise mode) and, per objective, a measured evaluation-repeat
variance. The model, per objective::

    y[i, s] = mu[i] + b[s] + e[i, s],    e ~ N(0, sigma²_pool(i))

- **Seed blocking.** b[s] is what seed s does to every configuration alike. It cancels exactly in
  every comparison between configurations at the same seeds, and the front is made of comparisons
  only (dominance does not change when every configuration moves by the same amount), so it is
  *removed*, not drawn: :func:`fit` estimates mu and b together by least squares (unbalanced seed
  sets allowed, as long as they overlap), and the residual e, the configuration x seed interaction
  plus the evaluation's noise, is what a comparison sees. A shared seed draw would change nothing
  with equal seed sets and need the seed variance estimated from a handful of seeds; independent
  draws with each configuration's raw spread (today's rule) count the seed effect into every
  comparison when it is large, and not at all when two seeds agree by chance. The means reported
  (and drawn around) are each configuration at the average of the seeds seen: its plain seed mean
  when every configuration has the same seeds.
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
- **Tails.** Configuration means are drawn from a multivariate Student t: the normal with the
  blocked fit's covariance, divided per pool and objective by one sqrt(chi²_ν/ν) per draw, ν the
  pool's degrees of freedom (one variance estimate, so one scale draw for all its configurations).
  With no residual degrees of freedom (one seed each) and no floor, the draws are the means.

Objectives are drawn independently of one another. :func:`front_probability` is the fraction of
draws in which a configuration is non-dominated (ties are not dominance, as in
:func:`nsde_ray.pareto.non_dominated`); :func:`standard_errors` are the comparison standard errors
behind it, for display and for :func:`nsde_ray.pareto.noise_floor`. :func:`next_seeds` is the
adaptive replication policy: one more seed to the configurations whose membership is undecided.
Configurations with a non-finite value are left out: NaN means and errors, probability 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

MIN_GROUP_DOF = 4.0  # residual degrees of freedom a group needs to have its own pooled variance
BAND = (0.1, 0.9)  # membership probabilities still undecided: a 0.5 cut errs on at most 10% of the rest
_DRAW_CHUNK = 500


@dataclass(frozen=True)
class Fit:
    """The seed-blocked fit of N configurations' M objectives (rows of left-out configurations are NaN).

    means: (N, M) each configuration at the average seed, in the values' units;
    covariance: (N, N) covariance of those means per unit residual variance (the seed effect removed);
    variance: (N, M) the residual variance of one seed-run of each configuration (pooled, floored), units²;
    dof: (N, M) degrees of freedom of that variance (0: none, the draws are normal);
    pools: (N,) the pool each configuration's variance comes from (its group, or ``"all"``).
    """

    means: np.ndarray
    covariance: np.ndarray
    variance: np.ndarray
    dof: np.ndarray
    pools: tuple


def pooled_variance(ss: np.ndarray, dof: np.ndarray, groups: Sequence[Hashable],
                    min_group_dof: float = MIN_GROUP_DOF) -> tuple[np.ndarray, np.ndarray, tuple]:
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


def fit(values: Sequence[np.ndarray], seeds: Sequence[Sequence[int]], groups: Sequence[Hashable] | None = None,
        eval_var: np.ndarray | None = None, min_group_dof: float = MIN_GROUP_DOF) -> Fit:
    """The seed-blocked, pooled fit of configurations' per-seed ``values`` (K_i, M) at training ``seeds`` (K_i,).

    ``groups``: (N,) pool labels (e.g. noise modes; default one pool); ``eval_var``: (M,) per-seed
    evaluation variance, a floor on the residual variance (NaN entries: no floor). Raises
    ValueError when the kept configurations' seed sets do not overlap enough to separate
    configuration from seed effects.
    """
    values = [np.asarray(v, dtype=float).reshape(len(s), -1) for v, s in zip(values, seeds)]
    n_obj = max((v.shape[1] for v in values), default=0)
    keep = [i for i, v in enumerate(values) if v.size and np.isfinite(v).all()]
    means, covariance = np.full((len(values), n_obj), np.nan), np.full((len(values), len(values)), np.nan)
    variance, dof = np.full_like(means, np.nan), np.zeros_like(means)
    pools = ["all"] * len(values)
    if not keep:
        return Fit(means, covariance, variance, dof, tuple(pools))
    design, config_of, contrast = _design([seeds[i] for i in keep])
    response = np.concatenate([values[i] for i in keep])
    gram = np.linalg.pinv(design.T @ design)
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise ValueError("the configurations' seed sets do not overlap enough to separate them from the seeds")
    residual = response - design @ (gram @ design.T @ response)
    spare = 1.0 - np.einsum("ij,jk,ik->i", design, gram, design)  # 1 - leverage of each value
    ss = np.array([(residual[config_of == k] ** 2).sum(axis=0) for k in range(len(keep))])
    own_dof = np.clip([spare[config_of == k].sum() for k in range(len(keep))], 0.0, None)
    labels = [groups[i] for i in keep] if groups is not None else ["all"] * len(keep)
    pooled, pooled_dof, kept_pools = pooled_variance(ss, own_dof, labels, min_group_dof)
    floor = np.full(n_obj, np.nan) if eval_var is None else np.asarray(eval_var, dtype=float)
    means[keep] = contrast @ (gram @ design.T @ response)
    covariance[np.ix_(keep, keep)] = contrast @ gram @ contrast.T
    variance[keep], dof[keep] = np.fmax(pooled, floor), pooled_dof[:, None]
    for k, i in enumerate(keep):
        pools[i] = kept_pools[k]
    return Fit(means, covariance, variance, dof, tuple(pools))


def _design(seeds: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(design (n, N + S - 1), configuration of each value (n,), contrast (N, N + S - 1)) of the additive model.

    Columns: one indicator per configuration, then one per seed but the first (its effect is 0);
    the contrast gives each configuration at the average of the S seeds.
    """
    seed_ids = sorted({int(s) for config in seeds for s in config})
    column = {s: len(seeds) + k - 1 for k, s in enumerate(seed_ids)}
    config_of = np.concatenate([np.full(len(config), k) for k, config in enumerate(seeds)])
    design = np.zeros((len(config_of), len(seeds) + len(seed_ids) - 1))
    design[np.arange(len(config_of)), config_of] = 1.0
    for row, seed in enumerate(int(s) for config in seeds for s in config):
        if column[seed] >= len(seeds):
            design[row, column[seed]] = 1.0
    contrast = np.hstack([np.eye(len(seeds)), np.full((len(seeds), len(seed_ids) - 1), 1.0 / len(seed_ids))])
    return design, config_of, contrast


def standard_errors(values: Sequence[np.ndarray], seeds: Sequence[Sequence[int]],
                    groups: Sequence[Hashable] | None = None, eval_var: np.ndarray | None = None) -> np.ndarray:
    """(N, M) comparison standard errors of the configurations' means, in the values' units (see :func:`fit`).

    The seed effect shared by all configurations is not in them: they say how well configurations
    are told apart, not how far a mean is from what other seeds would give everywhere.
    """
    result = fit(values, seeds, groups, eval_var)
    return np.sqrt(np.nan_to_num(result.variance) * np.diag(result.covariance)[:, None])


def posterior_draws(values: Sequence[np.ndarray], seeds: Sequence[Sequence[int]],
                    groups: Sequence[Hashable] | None = None, eval_var: np.ndarray | None = None,
                    draws: int = 4000, rng_seed: int = 0) -> np.ndarray:
    """(D, N, M) plausible configuration means (multivariate t around :func:`fit`'s means); NaN rows left out."""
    result = fit(values, seeds, groups, eval_var)
    keep = np.flatnonzero(np.isfinite(result.means).all(axis=1))
    sample = np.full((draws, *result.means.shape), np.nan)
    rng = np.random.default_rng(rng_seed)
    root = _sqrt_psd(result.covariance[np.ix_(keep, keep)])
    pools = np.array(result.pools, dtype=object)[keep]
    for m in range(result.means.shape[1]):
        scale = np.sqrt(np.nan_to_num(result.variance[keep, m]))
        noise = rng.standard_normal((draws, len(keep))) @ root.T * scale
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


def front_probability(values: Sequence[np.ndarray], seeds: Sequence[Sequence[int]],
                      groups: Sequence[Hashable] | None = None, eval_var: np.ndarray | None = None,
                      draws: int = 4000, rng_seed: int = 0) -> np.ndarray:
    """(N,) probability that each configuration is non-dominated, over :func:`posterior_draws`; 0 if left out."""
    return non_dominated_fraction(posterior_draws(values, seeds, groups, eval_var, draws, rng_seed))


def non_dominated_fraction(sample: np.ndarray) -> np.ndarray:
    """(N,) fraction of the draws of ``sample`` (D, N, M) in which each row is non-dominated; rows with a NaN: 0."""
    keep = np.isfinite(sample).all(axis=(0, 2))
    counts = np.zeros(sample.shape[1])
    for start in range(0, len(sample), _DRAW_CHUNK):
        chunk = sample[start:start + _DRAW_CHUNK][:, keep]
        no_worse = (chunk[:, :, None, :] <= chunk[:, None, :, :]).all(axis=3)  # [d, j, i]: j <= i everywhere
        better = (chunk[:, :, None, :] < chunk[:, None, :, :]).any(axis=3)
        counts[keep] += (~(no_worse & better).any(axis=1)).sum(axis=0)
    return counts / max(len(sample), 1)


def next_seeds(probabilities: np.ndarray, seeds_per_config: np.ndarray, max_seeds: int, budget: int,
               band: tuple[float, float] = BAND) -> np.ndarray:
    """Indices of the configurations that get one more seed now, most undecided (closest to 0.5) first.

    Only configurations whose front probability is strictly inside ``band`` and that have fewer
    than ``max_seeds`` seeds qualify; at most ``budget`` (remaining seed-runs) of them. Empty: the
    front is decided, or the budget spent. Rerun the front after the new seeds and call again.
    """
    probabilities, counts = np.asarray(probabilities, dtype=float), np.asarray(seeds_per_config)
    undecided = (probabilities > band[0]) & (probabilities < band[1]) & (counts < max_seeds)
    order = np.argsort(np.abs(probabilities - 0.5), kind="stable")
    return order[undecided[order]][:max(int(budget), 0)]
