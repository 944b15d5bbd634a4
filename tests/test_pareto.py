"""Pareto front maths: non-dominated sorting and hypervolume, against Optuna's implementation."""

import numpy as np
import pytest

from nsde_ray.pareto import as_minimisation, hypervolume, non_dominated, sweep_reference


def test_non_dominated_on_a_known_set():
    losses = np.array([[1.0, 1.0], [2.0, 0.5], [2.0, 2.0], [1.0, 1.0], [0.5, 3.0], [np.nan, 0.0]])
    assert non_dominated(losses).tolist() == [True, True, False, True, True, False]


def test_objectives_are_turned_into_losses():
    rows = [{"val_accuracy": 0.9, "sensitivity": 0.2, "sic": 0.3}]
    assert as_minimisation(rows).tolist() == [[-0.9, 0.2, -0.3]]
    better_accuracy = {"val_accuracy": 0.95, "sensitivity": 0.2, "sic": 0.3}
    assert non_dominated(as_minimisation(rows + [better_accuracy])).tolist() == [False, True]


@pytest.mark.parametrize("count", [1, 3, 25, 120])
def test_hypervolume_equals_optunas(count):
    from optuna._hypervolume import compute_hypervolume  # the reference (private, so imported here only)

    points = np.random.default_rng(count).random((count, 3))
    reference = np.full(3, 1.1)
    expected = compute_hypervolume(points[non_dominated(points)], reference)
    assert hypervolume(points, reference) == pytest.approx(expected, rel=1e-12)


def test_hypervolume_of_one_box_and_points_beyond_the_reference():
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), np.array([1.0, 2.0, 3.0])) == pytest.approx(6.0)
    assert hypervolume(np.array([[0.5, 5.0, 0.0]]), np.array([1.0, 1.0, 1.0])) == 0.0
    reference = sweep_reference()  # accuracy 0, sensitivity 1, sic 0
    perfect = as_minimisation([{"val_accuracy": 1.0, "sensitivity": 0.0, "sic": 1.0}])
    assert hypervolume(perfect, reference) == pytest.approx(1.0)
