"""The front with uncertainty, on hand-made configurations: probability, noise floors, who may enter it."""

import math

import numpy as np
import pytest

from nsde_ray.front import MIN_SIC_VALID_FRACTION, assess_front
from nsde_ray.pareto import front_probability, noise_floor


def _row(trial_id, accuracy, sensitivity, sic, se=(math.nan, math.nan, math.nan), **extra):
    row = {
        "trial_id": trial_id,
        "val_accuracy": accuracy,
        "sensitivity": sensitivity,
        "sic": sic,
        "val_accuracy_se": se[0],
        "sensitivity_se": se[1],
        "sic_se": se[2],
        "randomisation_passed_ig": 1.0,
        "sic_valid_fraction_ig": 1.0,
    }
    row.update(extra)
    return row


def test_probability_is_the_plain_front_without_standard_errors():
    losses = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, -0.5], [np.nan, -9.0]])
    assert front_probability(losses, np.full_like(losses, np.nan)).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_a_clear_winner_is_sure_and_a_clear_loser_never_on_the_front():
    losses = np.array([[0.0, 0.0], [1.0, 1.0]])
    probability = front_probability(losses, np.full_like(losses, 0.05))
    assert probability[0] == 1.0 and probability[1] == 0.0


def test_overlapping_configurations_share_the_front_by_their_spread():
    """b is dominated by a on the means, but within one SE: it is on the front in a good share of the redraws."""
    losses = np.array([[0.0, 0.0], [0.05, 0.05], [3.0, 3.0]])
    probability = front_probability(losses, np.full_like(losses, 0.1), draws=20_000, seed=1)
    assert probability[0] > 0.7 and 0.2 < probability[1] < 0.8 and probability[2] == 0.0
    # two independent normals: b is dominated by a in a draw with probability P(a1 < b1) P(a2 < b2)
    p_better = 0.5 * math.erfc(-0.05 / (0.1 * math.sqrt(2)) / math.sqrt(2))
    assert probability[1] == pytest.approx(1 - p_better**2, abs=0.02)


def test_noise_floor_flags_an_objective_whose_standard_errors_swamp_its_range():
    assert noise_floor([0.10, 0.11, 0.12], [0.03, 0.02, 0.04]) == pytest.approx((0.03, 0.02, True))
    floor, spread, flagged = noise_floor([0.5, 0.9, 0.7], [0.01, 0.02, 0.01])
    assert (floor, flagged) == (0.01, False) and spread == pytest.approx(0.4)
    assert math.isnan(noise_floor([0.1, 0.2], [math.nan, math.nan])[0])  # one seed: no floor, no flag


def test_nan_objectives_and_failed_randomisation_checks_stay_off_the_front():
    rows = [
        _row("good", 0.90, 0.20, 0.10),
        _row("nan", 0.99, math.nan, 0.9),
        _row("constant", 0.99, 0.0, 0.9, randomisation_passed_ig=0.0),
        _row("worse", 0.80, 0.30, 0.05),
    ]
    report = assess_front(rows)
    status = {r["trial_id"]: (r["pareto_front"], r["pareto_probability"], r["excluded"]) for r in report.rows}
    assert status["good"] == (True, 1.0, "")
    assert status["nan"] == (False, 0.0, "non-finite sensitivity")
    assert status["constant"] == (False, 0.0, "IG failed the randomisation check")
    assert status["worse"][:2] == (False, 0.0)
    assert any("2 configuration(s) kept off the front" in note for note in report.notes)


def test_sic_measured_on_too_few_images_does_not_drive_the_front():
    rows = [_row("a", 0.9, 0.2, 0.01, sic_valid_fraction_ig=0.6), _row("b", 0.9, 0.2, 0.50, sic_valid_fraction_ig=0.7)]
    report = assess_front(rows)
    assert [name for name, _ in report.objectives] == ["val_accuracy", "sensitivity"]
    assert all(r["pareto_front"] for r in report.rows)  # equal on the objectives in use: both on the front
    assert any(note.startswith("sic does not drive the front") for note in report.notes)
    for row in rows:
        row["sic_valid_fraction_ig"] = MIN_SIC_VALID_FRACTION
    report = assess_front(rows)
    assert len(report.objectives) == 3 and [r["pareto_front"] for r in report.rows] == [False, True]


def _seeds(*values):
    """A row's per_seed and seed_ids from (accuracy, sensitivity, sic) per training seed 0, 1, ..."""
    per_seed = [{"val_accuracy": a, "sensitivity": s, "sic": c} for a, s, c in values]
    return {"per_seed": per_seed, "seed_ids": list(range(len(values)))}


def test_front_report_names_the_objectives_its_noise_floor_flags():
    """The seeds disagree on sensitivity by 0.1 (not alike in every configuration: no shared seed effect), against a
    range of the means of 0.05; accuracy and SIC seeds agree to 0.002."""
    rows = [
        _row("a", 0.90, 0.20, 0.10, **_seeds((0.899, 0.15, 0.099), (0.901, 0.25, 0.101))),
        _row("b", 0.80, 0.25, 0.12, **_seeds((0.801, 0.30, 0.121), (0.799, 0.20, 0.119))),
        _row("c", 0.85, 0.22, 0.30, **_seeds((0.849, 0.17, 0.301), (0.851, 0.27, 0.299))),
    ]
    report = assess_front(rows)
    assert report.flagged == ["sensitivity"]
    assert any(note.startswith("sensitivity does not separate the configurations") for note in report.notes)
    assert report.hypervolume() > 0
