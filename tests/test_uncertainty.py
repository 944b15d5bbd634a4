"""The front's uncertainty model: moderated variances, seed blocking, t tails, evaluation floor, adaptive seeds,
replay.

The replay fixture (``tests/data/front_replay_fixture.csv``) is constructed, not recorded: 6
configurations (3 noise modes) x 4 seeds in the recorder's columns, with a seed effect shared by
all configurations, SIC valid on ~66% of the images (so SIC does not drive the front, as on
digits), and a second evaluation of seed 0.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from nsde_ray import pareto, uncertainty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "data", "front_replay_fixture.csv")


def _today(values):
    """Today's rule: each configuration's own SE, normal, independent draws."""
    means = np.array([v.mean(axis=0) for v in values])
    errors = np.array([v.std(axis=0, ddof=1) / np.sqrt(len(v)) for v in values])
    return pareto.front_probability(means, errors)


def test_two_agreeing_seeds_no_longer_claim_certainty():
    values = [
        np.array([[-0.900, 0.200], [-0.900, 0.200]]),  # two seeds that agree exactly
        np.array([[-0.898, 0.201], [-0.898, 0.201]]),  # just behind it, agreeing too
        np.array([[-0.96, 0.24], [-0.94, 0.26]]),
        np.array([[-0.80, 0.10], [-0.82, 0.12]]),
        np.array([[-0.86, 0.15], [-0.84, 0.17]]),
    ]
    assert _today(values)[0] == 1.0
    assert uncertainty.front_probability(uncertainty.fit(values, [[0, 1]] * 5))[0] < 0.85
    assert (uncertainty.standard_errors(uncertainty.fit(values, [[0, 1]] * 5))[:2] > 0.004).all()


def test_moderated_variance_by_hand():
    # equal variances: the likelihood's prior is the pooled variance sum(ss) / sum(dof) = 9 / 6 with the largest
    # dof, so every configuration gets it, with the sweep's residual dof
    variance, dof, (prior_var, prior_dof) = uncertainty.moderated_variance(np.array([1.5, 1.5, 3.0, 3.0]), [1, 1, 2, 2])
    assert prior_var == pytest.approx(1.5, rel=1e-3) and prior_dof == pytest.approx(uncertainty.PRIOR_DOF_RANGE[1])
    assert variance == pytest.approx([1.5] * 4, rel=1e-3) and dof.tolist() == [6.0] * 4
    # a prior of finite dof: (nu0 s0² + ss) / (nu0 + d), with nu0 + d dof, at most the sweep's 6
    ss, own = np.array([0.0, 0.2, 0.1, 4.0]), np.array([1.0, 1.0, 2.0, 2.0])
    variance, dof, (prior_var, prior_dof) = uncertainty.moderated_variance(ss, own)
    assert 0.5 <= prior_dof < 100
    assert variance == pytest.approx((prior_dof * prior_var + ss) / (prior_dof + own))
    assert dof == pytest.approx(np.minimum(prior_dof + own, 6.0))


def test_the_prior_is_recovered_from_the_variances_it_generates():
    rng = np.random.default_rng(1)
    for prior_dof, own in ((4.0, 1.0), (4.0, 2.0), (20.0, 4.0)):
        true_variance = 0.01 * prior_dof / rng.chisquare(prior_dof, 2000)  # scaled inverse chi², s0² = 0.01
        ss = true_variance * rng.chisquare(own, 2000)  # each configuration's residual sum of squares
        scale, nu = uncertainty.prior_variance(ss, np.full(2000, own))
        assert scale == pytest.approx(0.01, rel=0.1) and nu == pytest.approx(prior_dof, rel=0.3)


def test_an_unstable_configuration_does_not_make_the_others_uncertain():
    rng = np.random.default_rng(0)
    stable = [np.array([[-0.95 + 0.01 * c], [-0.95 + 0.01 * c]]) + rng.normal(0, 0.003, (2, 1)) for c in range(6)]
    unstable = np.array([[-0.95], [-0.65]])  # accuracy 0.95 with one seed, 0.65 with the other
    fit = uncertainty.fit(stable + [unstable], [[0, 1]] * 7)
    errors = uncertainty.standard_errors(fit)[:, 0]
    assert np.isfinite(fit.prior[0, 1]) and (errors[:6] < 0.03).all() and errors[6] > 0.1
    pooled = np.sqrt(np.mean([np.var(v, ddof=1) for v in stable + [unstable]]) / 2)  # one pooled variance for all
    assert (errors[:6] < pooled / 3).all()


def test_blocked_two_by_two_by_hand():
    values = [np.array([[1.0], [3.0]]), np.array([[2.0], [8.0]])]  # configuration x seed
    fit = uncertainty.fit(values, [[0, 1], [0, 1]])
    assert fit.variance[:, 0] == pytest.approx([4.0, 4.0])  # (y11 - y12 - y21 + y22)² / 4, 1 dof
    assert fit.dof[:, 0].tolist() == pytest.approx([1.0, 1.0])
    assert fit.means[:, 0] == pytest.approx([2.0, 5.0])
    assert uncertainty.standard_errors(fit)[:, 0] == pytest.approx([2**0.5] * 2)


def _seeded(index, shift):
    """(4, 2) values of configuration ``index`` at ``shift`` (2,): a large seed effect (SD ~0.04), small interaction."""
    effect = np.array([0.05, -0.05, 0.025, -0.025])[:, None]
    return shift + effect + np.random.default_rng(index).normal(0.0, 0.002, (4, 2))


def test_seed_blocking_removes_a_large_shared_seed_effect():
    shifts = [np.array([-0.90, 0.20]), np.array([-0.91, 0.21]), np.array([-0.89, 0.21])]  # the last is dominated
    values = [_seeded(i, shift) for i, shift in enumerate(shifts)]
    today, pooled = _today(values), uncertainty.front_probability(uncertainty.fit(values, [[0, 1, 2, 3]] * 3))
    assert today[2] > 0.2  # the seed effect, counted into every comparison, hides the dominance
    assert pooled[2] < 0.01 and (pooled[:2] > 0.99).all()
    unbalanced = values[:2] + [values[2][:3]]  # the last configuration misses seed 3
    fit = uncertainty.fit(unbalanced, [[0, 1, 2, 3]] * 2 + [[0, 1, 2]])
    assert fit.means[2] == pytest.approx(values[2].mean(axis=0), abs=2e-3)
    assert abs(unbalanced[2].mean(axis=0) - values[2].mean(axis=0)).max() > 5e-3  # the raw mean is off


def test_seeds_only_one_configuration_has_still_count():
    rng = np.random.default_rng(5)
    effect = rng.normal(0.0, 0.3, 6)  # seed effects
    values = [np.array([[0.3 * c + effect[s] + 0.3 * rng.normal()] for s in range(k)]) for c, k in enumerate([6, 2, 2])]
    seeds = [list(range(6)), [0, 1], [0, 1]]  # as adaptive replication leaves them: seeds 2-5 unshared
    fit = uncertainty.fit(values, seeds)
    assert fit.seed_variance[0] > 0 and fit.means[0, 0] == pytest.approx(values[0].mean())
    assert (
        uncertainty.standard_errors(fit)[0, 0]
        < 0.9 * uncertainty.standard_errors(uncertainty.fit([values[0][:2]] + values[1:], [[0, 1]] * 3))[0, 0]
    )


def test_t_tails_are_wider_than_normal_at_few_dof():
    rng = np.random.default_rng(3)
    values = [rng.normal(size=(3, 1)) for _ in range(4)]  # (3 - 1)(4 - 1) = 6 residual dof
    fit = uncertainty.fit(values, [[0, 1, 2]] * 4)
    error = uncertainty.standard_errors(fit)[0, 0]
    draws = uncertainty.posterior_draws(fit, draws=40000)[:, 0, 0]
    quantile = np.quantile(np.abs(draws - fit.means[0, 0]) / error, 0.95)
    assert fit.dof[0, 0] == pytest.approx(6.0)
    assert quantile == pytest.approx(stats.t.ppf(0.975, 6), rel=0.05) and quantile > stats.norm.ppf(0.975) * 1.15


def test_evaluation_variance_floors_the_residual():
    values = [np.array([[0.1], [0.1]]), np.array([[0.2], [0.2]]), np.array([[0.3], [0.3]])]
    assert uncertainty.standard_errors(uncertainty.fit(values, [[0, 1]] * 3))[:, 0] == pytest.approx(
        [0.0] * 3, abs=1e-12
    )
    floored = uncertainty.standard_errors(uncertainty.fit(values, [[0, 1]] * 3, eval_var=np.array([0.02])))
    assert floored[:, 0] == pytest.approx([0.1] * 3)  # sqrt(0.02 / 2)
    assert uncertainty.eval_variance(np.array([[1.0], [2.0]]), np.array([[1.2], [2.0]]))[0] == pytest.approx(0.01)


def test_non_finite_configurations_are_left_out():
    values = [
        np.array([[0.1, 0.2], [0.12, 0.21]]),
        np.array([[np.nan, 0.1], [0.2, 0.1]]),
        np.array([[0.2, 0.1], [0.21, 0.12]]),
    ]
    fit = uncertainty.fit(values, [[0, 1]] * 3)
    probability = uncertainty.front_probability(fit)
    assert probability[1] == 0.0 and (probability[[0, 2]] > 0.9).all()
    assert np.isnan(fit.means[1, 0]) and np.isnan(uncertainty.standard_errors(fit)[1, 0])
    # its finite objective keeps its own fit: the mean of its seeds, and a probability over that objective alone
    assert fit.means[1, 1] == pytest.approx(0.1) and np.isfinite(uncertainty.standard_errors(fit)[1, 1])
    assert uncertainty.front_probability(fit, objectives=[1])[1] > 0.0


def test_adaptive_policy_spends_only_inside_its_band():
    probability = np.array([0.5, 0.95, 0.3, 0.12, 0.6, 0.05, 0.9, 0.09])
    counts = np.array([2, 2, 2, 2, 8, 2, 2, 2])  # the 0.6 one already has max seeds
    assert uncertainty.next_seeds(probability, counts, max_seeds=8, budget=2).tolist() == [0, 2]
    assert uncertainty.next_seeds(probability, counts, max_seeds=8, budget=10).tolist() == [0, 2, 3, 6]  # 0.9: in
    assert uncertainty.next_seeds(probability, counts, max_seeds=8, budget=0).tolist() == []
    assert uncertainty.next_seeds(probability, counts, max_seeds=2, budget=10).tolist() == []
    everything = uncertainty.next_seeds(probability, counts, max_seeds=8, budget=10, band=(0.0, 1.0))
    assert sorted(everything.tolist()) == [0, 1, 2, 3, 5, 6, 7]


def test_replay_runs_end_to_end_on_the_fixture(tmp_path):
    out = tmp_path / "replay.md"
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "front_replay.py"),
            FIXTURE,
            "--replays",
            "3",
            "--draws",
            "300",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    text = out.read_text()
    for heading in ("| policy | seed-runs |", "| policy | probability bin |", "| objective | seed SD"):
        assert heading in text
    for policy in ("today K=2", "moderated K=2", "moderated K=3", "moderated K=4", "adaptive +6"):
        assert f"| {policy} |" in text
    assert "| front on the means: errors / replay |" in text and "| configurations |" in text
    assert "| adaptive +6 (" in text and "| moderated K=4 (" in text  # the cost comparisons
