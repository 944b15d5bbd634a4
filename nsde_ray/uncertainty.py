"""How sure the sweep's Pareto front is, with the few training seeds a sweep can afford.

Input, per configuration i: its per-seed objective values (K_i, M) in minimisation form
(:func:`nsde_ray.pareto.as_minimisation` of its seeds' rows), the training seed of each of those
values (the same seed means the same initial weights and data order in every configuration), and
optionally, per objective, a measured evaluation-repeat variance. The model, per objective::

    y[i, s] = mu[i] + b[s] + e[i, s],    b ~ N(0, tau²),    e ~ N(0, sigma²(i))

- **Seed effect.** b[s] is what seed s does to every configuration alike; e, the configuration x
  seed interaction plus the evaluation's noise, is what a *comparison* at the same seeds sees.
  sigma²(i) comes from the seed-blocked least-squares fit (configuration and seed effects, so a
  large shared seed effect does not inflate it); tau² is the within-configuration spread of the
  raw values minus sigma²(i), its median over the configurations (a moment estimate, 0 if
  negative). The means are the generalised least
  squares estimates under that covariance, and the draws are multivariate over the configurations
  with the GLS covariance: the shared seed effect is drawn, correlated. In a balanced sweep (every
  configuration at the same seeds) this is exactly the blocked comparison: the means are the plain
  seed means, and the shared part moves every configuration alike, which changes no dominance.
  Drawing it rather than only blocking it matters once the seeds are unbalanced, which adaptive
  replication makes them: a seed only one configuration has carries nothing in a pure blocked fit
  (it only estimates its own seed effect), but here it counts, with tau² added to its noise.
  Today's independent draws with each configuration's own raw spread count the seed effect into
  every comparison when it is large, and nothing at all when two seeds agree by chance.
- **Moderation.** With 2 seeds a configuration's own residual variance has about 1 degree of
  freedom (log s² then has a sampling variance near 5), and configurations differ: a sigma that
  makes training unstable can spread accuracy over seeds 30 times as much as its neighbours do.
  So each configuration's variance is moderated (empirical Bayes, as limma does for genes):
  s̃ᵢ² = (ν₀ s₀² + dᵢ sᵢ²) / (ν₀ + dᵢ), with the prior s₀², ν₀ fitted to all configurations' sᵢ²
  by maximum likelihood (:func:`prior_variance`: sᵢ²/s₀² ~ F(dᵢ, ν₀)). Where the sᵢ² spread no
  more than their degrees of freedom explain, ν₀ is large and every configuration gets about s₀²;
  where they spread more, an unstable configuration keeps most of its own large variance, and two
  seeds that agree by chance still get a share of s₀². A configuration's own degrees of freedom
  dᵢ are its share of the residual ones (the sum of 1 - leverage over its values), (K - 1)(N - 1)/N
  in a balanced sweep of N configurations; the seed effects are fitted with weights 1/s̃ᵢ², so an
  unstable configuration does not blur the others' residuals, and weights and variances are
  iterated to a fixed point, from the moderated raw (unblocked) variances. Fewer than
  :data:`MIN_PRIOR_CONFIGURATIONS` configurations with residual degrees of freedom: one pooled
  variance for all, sum(ssᵢ) / sum(dᵢ).
- **Evaluation noise.** Each per-seed value is one evaluation, so sigma² already holds one
  evaluation's noise; a measured evaluation-repeat variance (:func:`eval_variance`, divided by the
  repeats when a seed's value is a mean over several evaluations) is a *floor* on sigma², not an
  addition: the residual of a single-evaluation value cannot be smaller than its evaluation noise,
  and adding it would count that noise twice.
- **Tails.** Configuration means are drawn from a multivariate Student t: the normal with the GLS
  covariance, divided by sqrt(chi²_ν/ν), one draw for all configurations (a scale drawn per
  configuration would stop the shared seed effect from cancelling between them), ν the median of
  the configurations' ν₀ + dᵢ (each at most the fit's residual degrees of freedom, as limma caps
  it). With no residual degrees of freedom (one seed each) and no floor, the draws are the plain
  means.

Objectives are drawn independently of one another; the uncertainty of tau² itself is not drawn
(it cancels in balanced sweeps). :func:`front_probability` is the fraction of draws in which a
configuration is non-dominated (ties are not dominance, as in :func:`nsde_ray.pareto.non_dominated`);
:func:`standard_errors` are the comparison standard errors behind it (the shared seed effect left
out), for display and for :func:`nsde_ray.pareto.noise_floor`. :func:`next_seeds` is the
adaptive replication policy: one more seed to the configurations whose membership is undecided.
A configuration with a non-finite value of an objective is left out of that objective's fit (NaN mean
and error there) and out of the draws of any set of objectives that includes it (probability 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.special import gammaln

MIN_PRIOR_CONFIGURATIONS = 3  # configurations with residual degrees of freedom needed to fit the prior
MIN_OWN_DOF = 0.25  # residual degrees of freedom a configuration needs to count in the prior's fit
PRIOR_DOF_RANGE = (0.5, 1e4)  # the prior's degrees of freedom searched; the top is the pooled limit
FIT_ITERATIONS = 20  # at most, of the weights / variances fixed point
FIT_TOLERANCE = 1e-3  # relative change of every weight at which that fixed point is reached
# membership probabilities still undecided (bounds included): a 0.5 cut errs on at most 10% of the rest
BAND = (0.1, 0.9)
_DRAW_CHUNK = 500


@dataclass(frozen=True)
class Fit:
    """The fit of N configurations' M objectives (a configuration left out of an objective's fit
    is NaN there).

    means: (N, M) each configuration's GLS mean, in the values' units;
    covariance: (M, N, N) covariance of those means (the shared seed effect included), units²;
    variance: (N, M) the residual variance of one seed-run of each configuration (moderated, floored), units²;
    dof: (N, M) degrees of freedom of that variance (0: none, the draws are normal);
    seed_variance: (M,) tau², the variance of the seed effect, units²;
    prior: (M, 2) the moderation's prior (s₀² in units², ν₀; ν₀ infinite: every configuration gets s₀²);
    counts: (N,) seeds per configuration.
    """

    means: np.ndarray
    covariance: np.ndarray
    variance: np.ndarray
    dof: np.ndarray
    seed_variance: np.ndarray
    prior: np.ndarray
    counts: np.ndarray


def prior_variance(ss: np.ndarray, dof: np.ndarray) -> tuple[float, float]:
    """(s₀², ν₀): the scaled inverse-chi² prior of the configurations' variances, by maximum likelihood on their
    residual sums of squares ``ss`` (N,) with ``dof`` (N,).

    Under the prior, sᵢ² / s₀² (sᵢ² = ssᵢ / dᵢ) follows an F(dᵢ, ν₀) distribution; s₀² and ν₀ (within
    :data:`PRIOR_DOF_RANGE`; its top is the pooled limit, every configuration s₀²) maximise the
    likelihood of the sᵢ². Unlike limma's moments of log sᵢ², the likelihood is not thrown by variances of
    0, which discrete metrics give often (two seeds with the same accuracy on the same images): under
    F(1, ν₀) values near 0 are likely whatever the prior, so they do not drag ν₀ down and leave
    two agreeing seeds with a variance near 0. Configurations with fewer than :data:`MIN_OWN_DOF`
    degrees of freedom do not count; with fewer than :data:`MIN_PRIOR_CONFIGURATIONS` left, or no
    spread: the pooled variance sum(ss) / sum(dof) and ν₀ at the top of the range.
    """
    ss, dof = np.asarray(ss, dtype=float), np.asarray(dof, dtype=float)
    pooled = float(ss.sum() / dof.sum())
    used = dof >= MIN_OWN_DOF
    if used.sum() < MIN_PRIOR_CONFIGURATIONS or pooled <= 0:
        return pooled, PRIOR_DOF_RANGE[1]
    variance, own = np.fmax(ss[used] / dof[used], 1e-12 * pooled), dof[used]

    def negative_log_likelihood(params: np.ndarray) -> float:
        log_scale, log_nu = params
        nu, x = math.exp(log_nu), variance / math.exp(log_scale)
        density = (
            gammaln((own + nu) / 2)
            - gammaln(own / 2)
            - gammaln(nu / 2)
            + own / 2 * np.log(own / nu)
            + (own / 2 - 1) * np.log(x)
            - (own + nu) / 2 * np.log1p(own * x / nu)
            - log_scale
        )
        return -float(density.sum())

    bounds = [(math.log(pooled) - 20, math.log(pooled) + 5), tuple(math.log(b) for b in PRIOR_DOF_RANGE)]
    best = optimize.minimize(
        negative_log_likelihood, np.array([math.log(pooled), math.log(10.0)]), method="L-BFGS-B", bounds=bounds
    )
    return float(math.exp(best.x[0])), float(math.exp(best.x[1]))


def moderated_variance(ss: np.ndarray, dof: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(moderated variances (N,), their degrees of freedom (N,), the prior (s₀², ν₀)) from residual sums of squares
    ``ss`` (N,) with ``dof`` (N,) (:func:`prior_variance`): (ν₀ s₀² + ssᵢ) / (ν₀ + dᵢ) with ν₀ + dᵢ degrees of
    freedom, at most sum(dof) (as limma caps them: the prior is fitted to these configurations); NaN and 0
    without degrees of freedom."""
    ss, dof = np.asarray(ss, dtype=float), np.asarray(dof, dtype=float)
    total = float(dof.sum())
    if total <= 1e-9:
        return np.full(len(ss), np.nan), np.zeros(len(ss)), (math.nan, math.nan)
    prior_var, prior_dof = prior_variance(ss, dof)
    moderated = (prior_dof * prior_var + ss) / (prior_dof + dof)
    return moderated, np.minimum(prior_dof + dof, total), (prior_var, prior_dof)


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


def fit(values: Sequence[np.ndarray], seeds: Sequence[Sequence[int]], eval_var: np.ndarray | None = None) -> Fit:
    """The moderated, seed-blocked fit of configurations' per-seed ``values`` (K_i, M) at training ``seeds`` (K_i,).

    ``eval_var``: (M,) per-seed evaluation variance, a floor on the residual variance (NaN entries: no
    floor). Seed sets may differ; values at a seed no other configuration has add to their
    configuration's mean (through tau²) but not to sigma²'s degrees of freedom.
    """
    values = [np.asarray(v, dtype=float).reshape(len(s), -1) for v, s in zip(values, seeds)]
    n, n_obj = len(values), max((v.shape[1] for v in values), default=0)
    means, variance, dof = np.full((n, n_obj), np.nan), np.full((n, n_obj), np.nan), np.zeros((n, n_obj))
    covariance, seed_variance = np.full((n_obj, n, n), np.nan), np.full(n_obj, np.nan)
    prior, counts = np.full((n_obj, 2), np.nan), np.array([len(s) for s in seeds], dtype=float)
    floor = np.full(n_obj, np.nan) if eval_var is None else np.asarray(eval_var, dtype=float)
    for m in range(n_obj):
        keep = [i for i, v in enumerate(values) if v.size and np.isfinite(v[:, m]).all()]
        if not keep:
            continue
        kept = [values[i][:, m] for i in keep]
        config_of, seed_of = _layout([seeds[i] for i in keep])
        response = np.concatenate(kept)
        weights = _starting_weights(kept)
        for _ in range(FIT_ITERATIONS):
            ss, own_dof = _blocked_residuals(response, config_of, seed_of, weights[config_of])
            moderated, moderated_dof, prior[m] = moderated_variance(ss, own_dof)
            moderated = np.fmax(moderated, floor[m])
            usable = (np.isfinite(moderated) & (moderated > 0)).all()
            if not usable or np.allclose(weights, 1.0 / moderated, rtol=FIT_TOLERANCE, atol=0.0):
                break
            weights = 1.0 / moderated
        variance[keep, m], dof[keep, m] = moderated, moderated_dof
        seed_variance[m] = _seed_variance(kept, moderated)
        means[keep, m], covariance[m][np.ix_(keep, keep)] = _gls(
            response, config_of, seed_of, moderated[config_of], seed_variance[m]
        )
    return Fit(means, covariance, variance, dof, seed_variance, prior, counts)


def _layout(seeds: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(configuration index (n,), seed index (n,)) of each value, the seeds numbered in sorted order."""
    seed_ids = sorted({int(s) for config in seeds for s in config})
    config_of = np.concatenate([np.full(len(config), k) for k, config in enumerate(seeds)])
    seed_of = np.array([seed_ids.index(int(s)) for config in seeds for s in config])
    return config_of, seed_of


def _starting_weights(values: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) 1 / the moderated raw within-configuration variances of ``values`` (K_i,) (ones where there is none).

    The weighted fit starts here, not from equal weights: an unweighted seed-blocked fit spreads one
    unstable configuration's swings over every configuration's residuals (through the seed effects),
    which then look alike, and the moderation would see no difference to start from."""
    ss = np.array([((v - v.mean()) ** 2).sum() for v in values])
    variance, _, _ = moderated_variance(ss, np.array([len(v) - 1.0 for v in values]))
    usable = np.isfinite(variance) & (variance > 0)
    return 1.0 / variance if usable.all() else np.ones(len(values))


def _blocked_residuals(
    response: np.ndarray, config_of: np.ndarray, seed_of: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(residual sums of squares (N,), residual degrees of freedom (N,)) of the additive configuration + seed fit
    of ``response`` (n,), weighted least squares with ``weights`` (n,).

    A configuration's degrees of freedom are the sum of 1 - leverage over its values, so they add
    up to the fit's residual degrees of freedom (n - rank: disjoint seed sets are allowed).
    """
    configs, seeds = config_of.max() + 1, seed_of.max() + 1
    design = np.hstack([np.eye(configs)[config_of], np.eye(seeds)[seed_of][:, 1:]])
    weighted = design * np.sqrt(weights)[:, None]
    gram = np.linalg.pinv(weighted.T @ weighted)
    residual = response - design @ (gram @ weighted.T @ (response * np.sqrt(weights)))
    spare = 1.0 - np.einsum("ij,jk,ik->i", weighted, gram, weighted)
    ss = np.array([(residual[config_of == k] ** 2).sum() for k in range(configs)])
    return ss, np.clip([spare[config_of == k].sum() for k in range(configs)], 0.0, None)


def _seed_variance(values: Sequence[np.ndarray], residual_variance: np.ndarray) -> float:
    """tau²: the median over configurations with two or more ``values`` (K_i,) of their raw within-configuration
    variance minus their ``residual_variance`` (N,) (a median, so that one unstable configuration does not set
    it); 0 if negative or if no configuration has two values."""
    excess = [np.var(v, ddof=1) - residual_variance[k] for k, v in enumerate(values) if len(v) > 1]
    return float(max(0.0, np.median(excess))) if excess else 0.0


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


def standard_errors(fitted: Fit) -> np.ndarray:
    """(N, M) comparison standard errors of the configurations' means, in the values' units (see :func:`fit`).

    Each configuration's moderated residual SD over the square root of its seed count: sigma / sqrt(K) in a
    balanced sweep. The seed effect all configurations share is not in it: it says how well
    configurations are told apart, not how far a mean is from other seeds' mean. NaN where no
    variance is known (one seed each and no evaluation floor), never a claim of 0.
    """
    counts = fitted.counts[:, None]
    return np.where(np.isfinite(fitted.means), np.sqrt(fitted.variance / counts), np.nan)


def posterior_draws(
    fitted: Fit, draws: int = 4000, rng_seed: int = 0, objectives: Sequence[int] | None = None
) -> np.ndarray:
    """(D, N, M') plausible configuration means (multivariate t around ``fitted``'s means) of the ``objectives``
    (column indices of the fit, M' of them; all M by default); NaN rows left out."""
    columns = range(fitted.means.shape[1]) if objectives is None else list(objectives)
    keep = np.flatnonzero(np.isfinite(fitted.means[:, columns]).all(axis=1))
    sample = np.full((draws, fitted.means.shape[0], len(columns)), np.nan)
    rng = np.random.default_rng(rng_seed)
    for k, m in enumerate(columns):
        noise = rng.standard_normal((draws, len(keep))) @ _sqrt_psd(fitted.covariance[m][np.ix_(keep, keep)]).T
        nu = float(np.median(fitted.dof[keep, m])) if len(keep) else 0.0
        if nu > 1e-9:  # one scale per draw, so that the seed effect the configurations share still cancels
            noise /= np.sqrt(rng.chisquare(nu, size=(draws, 1)) / nu)
        sample[:, keep, k] = fitted.means[keep, m] + noise
    return sample


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """A (N, N) root A of a positive semi-definite ``matrix``: A @ A.T == matrix."""
    eigenvalues, vectors = np.linalg.eigh(matrix)
    return vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def front_probability(
    fitted: Fit, draws: int = 4000, rng_seed: int = 0, objectives: Sequence[int] | None = None
) -> np.ndarray:
    """(N,) probability that each configuration is non-dominated in the ``objectives`` (as
    :func:`posterior_draws`), the fraction of its draws; 0 if left out."""
    return non_dominated_fraction(posterior_draws(fitted, draws, rng_seed, objectives))


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
