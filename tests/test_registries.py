"""Adding an objective, a metric or a noise mode is registering one record: every code path that lists them follows.

Each toy below is one record, registered for this test only (monkeypatch); nothing else changes. The test runs
them through what reads the registries: config validation and the searcher's space, the model and its noise
energy, the evaluation, the seeds' aggregate, Tune's report, the front (hypervolume included), its table, plots
and MLflow names, and the papers' Table 1. If any of these needed a second edit, it would fail here.
"""

import math

import optuna
import pytest
import torch

from nsde_ray import front_table, metric_registry, plots, registry
from nsde_ray.aggregate import aggregate_seeds
from nsde_ray.config import EvalConfig, NoiseConfig, SearchSpace
from nsde_ray.evaluate import evaluate
from nsde_ray.front import assess_front
from nsde_ray.models import build_model, noise_modules
from nsde_ray.shaping import noise_energy
from nsde_ray.sweep import DefineSpace
from nsde_ray.tables import ModelResult, accuracy_table, sensitivity_table
from nsde_ray.tracking import OBJECTIVES_SECTION, SweepTracker
from nsde_ray.trial import reported_metrics

TOY_MODE = registry.NoiseMode("twin", "twin SDE", "Twin noise (toy)", "blocks", "unit", (registry.SIGMA,))
TOY_METRIC = metric_registry.MethodMetric(
    "map_norm",
    lambda ctx: {f"map_norm_{ctx.method}": float(ctx.attributions.flatten(1).norm(dim=1).mean())},
    ("map_norm_",),
)
TOY_OBJECTIVE = registry.Objective("map_norm", "min", 100.0, "IG map norm (lower is better)", "map_norm_ig")


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(registry.NOISE_MODES, TOY_MODE.name, TOY_MODE)
    monkeypatch.setitem(metric_registry.METHOD_METRICS, TOY_METRIC.name, TOY_METRIC)
    monkeypatch.setitem(registry.OBJECTIVES, TOY_OBJECTIVE.name, TOY_OBJECTIVE)


def test_a_toy_noise_mode_is_validated_searched_built_and_tabled(toys):
    noise = NoiseConfig("twin", 0.5)
    model = build_model("cifar_resnet8", 10, 1, noise)
    assert noise_modules(model) and all(m.mode == "twin" and m.sigma == 0.5 for m in noise_modules(model))
    model.train()
    x = torch.randn(2, 1, 32, 32)
    assert not torch.equal(model(x), model(x))  # noise in training
    assert noise_energy(noise, None) == 1.0

    space = SearchSpace(noise_modes=("none", "twin"))
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    suggested = []
    for _ in range(12):
        trial = study.ask()
        DefineSpace(space, epochs=4)(trial)
        suggested.append(trial.params)
        study.tell(trial, 0.0)
    twins = [p for p in suggested if p["noise_mode"] == "twin"]
    assert twins and all(set(p) == {"noise_mode", "noise_sigma", "lr"} for p in twins)

    results = [
        ModelResult("cifar_resnet8", mode, 0, {"val_accuracy": 0.9, "sensitivity_ig": 0.1 * (i + 1)})
        for i, mode in enumerate(("none", "twin"))
    ]
    accuracy = accuracy_table(results, ["cifar_resnet8"])
    assert accuracy.header[2:] == [mode.label for mode in registry.NOISE_MODES.values()]
    sensitivity = sensitivity_table(results, "cifar_resnet8", ["ig"])
    column = sensitivity.header.index("Twin noise (toy)")  # the header from the record, the cell under it too
    assert sensitivity.rows[0][column].startswith("0.2") and sensitivity.rows[0][1].startswith("0.1")


def test_a_toy_metric_and_objective_flow_from_the_evaluation_to_the_front_and_mlflow(toys, digits_model, tmp_path):
    model, splits = digits_model
    cfg = EvalConfig(methods=("ig",), num_images=4, n_steps=4, n_perturbations=2, saturation_images=2, grid_images=2)
    metrics = evaluate(model, splits, cfg, progress=False).metrics
    assert metrics["map_norm"] == metrics["map_norm_ig"] > 0  # the objective copied from its source metric

    seeds = [dict(metrics, val_accuracy=0.9), dict(metrics, val_accuracy=0.8, map_norm=metrics["map_norm"] * 2)]
    aggregated = aggregate_seeds(seeds)
    assert {"map_norm_se", "map_norm_ig_std", "map_norm_ig_se"} <= set(aggregated)
    assert reported_metrics(aggregated, diverged=False)["map_norm"] == aggregated["map_norm"]

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker.start(uri, "toys", "toys", {})
    for trial_id, scale in (("a", 1.0), ("b", 2.0)):
        run_id, _ = tracker.open_trial(trial_id, {"noise_mode": "twin", "noise_sigma": 0.5, "lr": 0.1})
        tracker.finish_trial(
            run_id, "finished", dict(aggregated, map_norm=aggregated["map_norm"] * scale, sic_valid_fraction_ig=1.0)
        )
    report = tracker.update_front()
    assert ("map_norm", "min") in report.objectives and "map_norm" in report.floors
    assert math.isfinite(report.hypervolume())  # the reference point comes from the record
    on_front = [row["trial_id"] for row in report.rows if row["pareto_front"]]
    assert on_front == ["a"]  # equal but for the toy objective, which b doubles
    run = tracker.client.get_run(tracker.trial_runs()[0].info.run_id)
    assert OBJECTIVES_SECTION + "map_norm" in run.data.metrics
    assert "map_norm" in front_table.table_columns() and "map_norm" in front_table.front_table(report.rows)
    assert ("map_norm", TOY_OBJECTIVE.label) in plots.pareto_panels()
    assert {"pareto_front.csv", "pareto_front.html", "pareto_front.png"} <= {
        a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)
    }
    assert assess_front([dict(report.rows[0])]).objectives == report.objectives
