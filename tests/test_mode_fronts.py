"""Noise modes compared by their whole fronts, on hand-made sweeps: verdicts, levels, Holm, the SmoothGrad control."""

import math

import numpy as np
import pytest

from nsde_ray.mode_fronts import CONTROL, attainable, choose_levels, compare_modes, mode_front, normal_draws
from nsde_ray.uncertainty import holm

LABELS = {"none": "ResNet", "gaussian": "Gaussian SDE", "attribution": "attribution SDE", "input": "input noise"}


def _row(mode, lr, accuracy, sensitivity, se=(0.002, 0.005), seeds=5, **extra):
    return {
        "noise_mode": mode,
        "noise_sigma": 0.0 if mode == "none" else 0.5,
        "lr": lr,
        "val_accuracy": accuracy,
        "sensitivity": sensitivity,
        "val_accuracy_se": se[0],
        "sensitivity_se": se[1],
        "seeds": seeds,
        "excluded": "",
        **extra,
    }


def _curve(mode, points, **extra):
    """One row per (accuracy, sensitivity) point, learning rates 0.1, 0.01, ..."""
    return [_row(mode, 10.0 ** -(k + 1), a, s, **extra) for k, (a, s) in enumerate(points)]


def _tested(report):
    return [v for v in report.verdicts if v.tested]


def test_front_membership_on_a_hand_checked_case():
    rows = _curve("gaussian", [(0.90, 0.30), (0.80, 0.20), (0.85, 0.35), (0.70, 0.20), (0.60, 0.10)])
    rows.append(_row("gaussian", 0.5, 0.95, 0.05, excluded="non-finite sic"))
    report = compare_modes(rows, LABELS)
    # (0.85, 0.35) is beaten by (0.90, 0.30); (0.70, 0.20) by (0.80, 0.20); the excluded row never counts
    assert [(r["val_accuracy"], r["sensitivity"]) for r in report.fronts["gaussian"]] == [
        (0.9, 0.3),
        (0.8, 0.2),
        (0.6, 0.1),
    ]
    assert mode_front(rows[:5]) == report.fronts["gaussian"]
    assert report.counts["gaussian"] == (5, 25)


def test_the_attainable_curve_is_a_step_function_undefined_above_the_best_accuracy():
    accuracy, sensitivity = np.array([0.9, 0.8, 0.6]), np.array([0.3, 0.2, 0.1])
    assert [float(attainable(accuracy, sensitivity, a)) for a in (0.5, 0.6, 0.7, 0.8, 0.9)] == [0.1, 0.1, 0.2, 0.2, 0.3]
    assert math.isnan(attainable(accuracy, sensitivity, 0.91))
    assert math.isnan(attainable(np.array([0.9, np.nan]), np.array([0.3, 0.1]), 0.5))


def test_a_mode_far_ahead_wins_at_every_level_after_holm():
    rows = _curve("none", [(0.92, 0.60), (0.88, 0.55), (0.80, 0.50)]) + _curve(
        "gaussian", [(0.91, 0.15), (0.86, 0.12), (0.79, 0.10)]
    )
    report = compare_modes(rows, LABELS)
    assert report.levels and len(report.verdicts) == len(report.levels)
    for verdict in report.verdicts:
        assert verdict.verdict == f"Gaussian SDE less sensitive than ResNet at accuracy >= {verdict.level:g}"
        assert verdict.p_holm <= 0.05 and 0 < verdict.low <= verdict.difference <= verdict.high


def test_identical_modes_show_no_resolvable_difference():
    points = [(0.90, 0.30), (0.85, 0.25), (0.80, 0.20)]
    report = compare_modes(_curve("gaussian", points) + _curve("input", points), LABELS)
    assert report.verdicts
    for verdict in report.verdicts:
        assert verdict.verdict == "no resolvable difference" and verdict.difference == 0.0
        assert verdict.low < 0 < verdict.high and verdict.p_holm > 0.05


def test_a_mode_that_never_reaches_a_level_is_not_extrapolated():
    rows = (
        _curve("none", [(0.92, 0.60), (0.85, 0.50)])
        + _curve("gaussian", [(0.91, 0.15), (0.84, 0.10)])
        + _curve("input", [(0.80, 0.05)])
    )
    report = compare_modes(rows, LABELS, levels=[0.8, 0.9])
    high = {(v.mode_x, v.mode_y): v for v in report.verdicts if v.level == 0.9}
    for pair in (("none", "input"), ("gaussian", "input")):
        assert high[pair].verdict == "not reached: input noise tops at accuracy 0.8"
        assert math.isnan(high[pair].difference) and math.isnan(high[pair].p) and not high[pair].tested
    assert high[("none", "gaussian")].tested
    assert report.family == 4  # three pairs at 0.8, one at 0.9


def test_default_levels_are_reached_by_at_least_two_modes():
    fronts = {
        "none": [{"val_accuracy": 0.92}, {"val_accuracy": 0.80}],
        "gaussian": [{"val_accuracy": 0.88}],
        "input": [{"val_accuracy": 0.70}],
        "attribution": [],
    }
    # range 0.70 (lowest front point) to 0.88 (second-best top), at 0, 1/4, 1/2, 3/4, rounded down to 0.01
    assert choose_levels(fronts) == [0.7, 0.74, 0.79, 0.83]
    assert choose_levels({"none": [{"val_accuracy": 0.9}]}) == [0.9]
    assert choose_levels({}) == []


def test_a_missing_mode_is_not_tested():
    rows = (
        _curve("none", [(0.90, 0.50)])
        + _curve("gaussian", [(0.89, 0.20)])
        + [_row("input", 0.1, 0.95, 0.01, excluded="IG failed the randomisation check")]
    )
    report = compare_modes(rows, LABELS, modes=("none", "gaussian", "attribution"))
    untested = [v for v in report.verdicts if "not tested" in v.verdict]
    assert {v.verdict for v in untested} == {
        "not tested: attribution SDE has no configuration",
        "not tested: input noise has no configuration",
    }
    assert report.fronts["attribution"] == [] and report.counts["attribution"] == (0, 0)
    assert all(math.isnan(v.p) for v in untested) and report.family == len(report.levels)
    # the tables leave the untested pairs out and name the modes once; the CSV keeps every pair
    for text in (report.to_text(), report.to_markdown()):
        assert "has no configuration" not in text
        assert "Not tested, no finished configuration: attribution SDE, input noise" in text
    assert len(report.csv_rows()) == len(report.verdicts)


def test_holm_against_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    rows = (
        _curve("none", [(0.90, 0.40), (0.85, 0.38)], se=(0.01, 0.05), seeds=3)
        + _curve("gaussian", [(0.89, 0.30), (0.84, 0.33)], se=(0.01, 0.05), seeds=3)
        + _curve("input", [(0.88, 0.36), (0.83, 0.30)], se=(0.01, 0.05), seeds=3)
    )
    tested = _tested(compare_modes(rows, LABELS))
    p = sorted(v.p for v in tested)
    expected = np.maximum.accumulate([min(1.0, (len(p) - k) * pk) for k, pk in enumerate(p)])
    assert sorted(v.p_holm for v in tested) == pytest.approx(list(expected))


def test_the_smoothgrad_control_appears_only_with_ig_nt_sensitivity():
    plain = _curve("none", [(0.90, 0.50), (0.85, 0.45)])
    gaussian = _curve("gaussian", [(0.89, 0.20), (0.84, 0.18)])
    without = compare_modes(plain + gaussian, LABELS)
    assert CONTROL not in without.fronts and not without.notes
    for row, nt in zip(plain, (0.10, 0.08)):
        row.update(sensitivity_ig_nt=nt, sensitivity_ig_nt_se=0.005)
    report = compare_modes(plain + gaussian, LABELS)
    assert report.labels[CONTROL] == "SmoothGrad on plain (control)" and "no training cost" in report.notes[0]
    assert [r["sensitivity"] for r in report.fronts[CONTROL]] == [0.10, 0.08]
    assert [r["val_accuracy"] for r in report.fronts[CONTROL]] == [0.90, 0.85]
    assert all(r["noise_mode"] == "none" and r["sensitivity"] >= 0.45 for r in report.fronts["none"])
    control = [v for v in report.verdicts if v.mode_y == CONTROL and v.mode_x == "gaussian"]
    assert control and all(v.verdict.startswith("SmoothGrad on plain (control) less sensitive") for v in control)
    assert "SmoothGrad on plain (control)" in report.to_text()


def test_a_mode_is_judged_by_its_whole_learning_rate_curve():
    """One bad learning rate does not sink a mode whose good one beats the other mode."""
    rows = [_row("gaussian", 1.0, 0.60, 0.90), _row("gaussian", 0.1, 0.90, 0.10), _row("none", 0.1, 0.90, 0.40)]
    report = compare_modes(rows, LABELS, levels=[0.6, 0.85])
    assert [r["lr"] for r in report.fronts["gaussian"]] == [0.1]
    assert [v.verdict for v in report.verdicts] == [
        f"Gaussian SDE less sensitive than ResNet at accuracy >= {a:g}" for a in (0.6, 0.85)
    ]


def test_a_draw_where_a_curve_is_not_reached_counts_against_the_verdict():
    rows = [_row("gaussian", 0.1, 0.90, 0.10), _row("none", 0.1, 0.90, 0.40)]
    draws = np.tile(np.array([[0.90, 0.10], [0.90, 0.40]]), (1000, 1, 1))  # (D, N, 2): no spread at all
    sure = compare_modes(rows, LABELS, draws=draws, levels=[0.9]).verdicts[0]
    assert sure.p == pytest.approx(1 / 1000) and sure.low == sure.high == sure.difference == pytest.approx(-0.3)
    draws[:300, 0, 0] = 0.89  # the drawn accuracy of gaussian's only configuration misses 0.9 in 30% of the draws
    shaky = compare_modes(rows, LABELS, draws=draws, levels=[0.9]).verdicts[0]
    assert shaky.p == pytest.approx(0.6) and shaky.low == -np.inf and shaky.verdict == "no resolvable difference"
    assert sure.undefined == 0.0 and shaky.undefined == pytest.approx(0.3)  # p = 2 x 0.3: the report says why
    text = compare_modes(rows, LABELS, draws=draws, levels=[0.9]).to_text()
    assert "30%" in text and "p is at least twice that share" in text
    with pytest.raises(ValueError):
        compare_modes(rows, LABELS, draws=draws[:, :1])


def test_default_draws_use_t_tails_and_pool_the_spread_for_one_seed_rows():
    rows = [
        _row("none", 0.1, 0.9, 0.3, se=(0.01, 0.02), seeds=3),
        _row("none", 0.1, 0.8, 0.2, se=(0.03, 0.06), seeds=3),
        _row("none", 0.1, 0.7, 0.1, se=(math.nan, math.nan), seeds=1),
    ]
    draws = normal_draws(rows, draws=20_000, seed=1)
    assert draws.shape == (20_000, 3, 2)
    assert np.median(draws[:, 0, 0]) == pytest.approx(0.9, abs=0.002)
    # pooled per-seed SD of accuracy: sqrt(mean(3 * 0.01^2, 3 * 0.03^2)) = 0.0387; t with 4 df: IQR 1.482 SD
    iqr = np.subtract(*np.percentile(draws[:, 2, 0], [75, 25]))
    assert iqr == pytest.approx(1.482 * math.sqrt(3 * (0.01**2 + 0.03**2) / 2), rel=0.05)


def test_one_seed_everywhere_resolves_nothing():
    rows = [
        _row("gaussian", 0.1, 0.90, 0.10, se=(math.nan, math.nan), seeds=1),
        _row("none", 0.1, 0.90, 0.90, se=(math.nan, math.nan), seeds=1),
    ]
    assert np.isnan(normal_draws(rows, draws=10)).all()
    verdict = compare_modes(rows, LABELS).verdicts[0]
    assert verdict.p == 1.0 and verdict.verdict == "no resolvable difference"
    assert verdict.difference == pytest.approx(-0.8)


def test_renderings_state_n_test_and_correction():
    rows = (
        _curve("none", [(0.92, 0.60), (0.80, 0.50)])
        + _curve("gaussian", [(0.91, 0.15), (0.79, 0.10)])
        + _curve("input", [(0.70, 0.05)])
    )
    report = compare_modes(rows, {"none": "ResNet"}, levels=[0.75])
    text, markdown, csv = report.to_text(), report.to_markdown(), report.csv_rows()
    assert "gaussian less sensitive than ResNet at accuracy >= 0.75" in text
    assert "2 cfg / 10 seeds" in text and "draw test, Holm over 1" in text and "not reached: input" in text
    assert "| ResNet | gaussian | 0.75 |" in markdown and markdown.startswith("### ")
    assert len(csv) == 3 and csv[0]["label_x"] == "ResNet" and csv[0]["configs_y"] == 2 and csv[0]["seeds_x"] == 10
    assert csv[0]["test"] == "draw test, Holm over 1" and csv[1]["test"] == ""
