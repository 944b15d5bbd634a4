"""The MLflow names that docs/mlflow.md promises, on a SQLite store written by SweepTracker (no Ray, no training)."""

from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import mlflow
import pytest

from nsde_ray.aggregate import aggregate_seeds
from nsde_ray.registry import objective_names
from nsde_ray.tracking import FRONT_FILTER, OBJECTIVES_SECTION, SweepTracker, front_url

SEEDS = (
    {"val_accuracy": 0.9, "sensitivity": 0.2, "sic": 0.3, "eval_time_s": 4.0},
    {"val_accuracy": 0.8, "sensitivity": 0.4, "sic": 0.1, "eval_time_s": 5.0},
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One configuration trained with two seeds, as run_trial logs it (epochs to the seeds), and the front."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('contract')}/mlflow.db"
    tracker = SweepTracker.start(uri, "exp", "sweep1", {})
    configuration, _ = tracker.open_trial("t1", {"noise_mode": "gaussian", "seeds_per_config": 2})
    seeds = [tracker.open_seed(configuration, "t1", index, {"seed": index})[0] for index in range(2)]
    for run_id, metrics in zip(seeds, SEEDS):
        for epoch in (1, 2):
            tracker.log_epoch(run_id, {"train_loss": 1.0 / epoch, "val_accuracy": metrics["val_accuracy"]}, epoch)
        tracker.finish_trial(run_id, "finished", {k: v for k, v in metrics.items() if k != "val_accuracy"})
    tracker.finish_trial(configuration, "finished", aggregate_seeds([tracker.finished_metrics(s) for s in seeds]))
    tracker.update_front()
    return SimpleNamespace(tracker=tracker, client=mlflow.MlflowClient(uri), configuration=configuration, seeds=seeds)


def test_objectives_are_also_logged_under_a_section_of_their_own_that_sorts_first(sweep):
    """Configuration and seed runs hold each objective (and its _se) under objectives/ as well as under its flat
    name; no other metric has a prefix, so MLflow's Chart view shows the objectives' section first."""
    configuration = sweep.client.get_run(sweep.configuration).data.metrics
    for name in objective_names():
        for key in (name, f"{name}_se"):
            assert configuration[OBJECTIVES_SECTION + key] == configuration[key]
        assert OBJECTIVES_SECTION + f"{name}_std" not in configuration
    for run_id, logged in zip(sweep.seeds, SEEDS):
        metrics = sweep.client.get_run(run_id).data.metrics
        assert {OBJECTIVES_SECTION + name: logged[name] for name in objective_names()}.items() <= metrics.items()
        history = sweep.client.get_metric_history(run_id, f"{OBJECTIVES_SECTION}val_accuracy")
        assert sorted(m.step for m in history) == [1, 2]  # per epoch, like val_accuracy
    prefixes = {key.split("/")[0] for key in configuration if "/" in key}
    assert prefixes == {OBJECTIVES_SECTION.rstrip("/")}


def test_aggregation_and_tune_read_the_flat_names_only(sweep):
    """finished_metrics (what run_trial aggregates and reports to Tune) leaves the objectives/ copies out."""
    finished = sweep.tracker.finished_metrics(sweep.configuration)
    assert {"val_accuracy", "val_accuracy_se", "sensitivity_std"} <= set(finished)
    assert not [key for key in finished if key.startswith(OBJECTIVES_SECTION)]
    assert finished["val_accuracy"] == pytest.approx(0.85) and finished["seeds"] == 2


def test_the_sweep_runs_description_links_to_the_front_listed_flat(sweep):
    """The parent's description ends the front table with a link to the experiment's training runs, filtered to
    the front and sorted by val_accuracy (not by creation time, which would nest the runs under the sweep's)."""
    description = sweep.client.get_run(sweep.tracker.parent_run_id).data.tags["mlflow.note.content"]
    link = front_url(sweep.tracker.experiment_id)
    assert f"[The front's runs]({link})" in description
    url = urlsplit(link.removeprefix("#"))
    assert url.path == f"/experiments/{sweep.tracker.experiment_id}/runs"
    assert parse_qs(url.query) == {
        "workflowType": ["machine_learning"],
        "searchFilter": [FRONT_FILTER],
        "orderByKey": ["metrics.`val_accuracy`"],
        "orderByAsc": ["false"],
    }
    assert front_url("7", "http://127.0.0.1:5000/").startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
