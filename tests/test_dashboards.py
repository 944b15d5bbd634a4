"""The dashboards' MLflow side, on a real SQLite MLflow store: sweeps, default models, missing artifacts."""

import pytest
from mlflow import MlflowClient

from dashboards.store import DashboardError, SweepStore, default_pair
from nsde_ray.tracking import SweepTracker


def _row(run_id, mode, accuracy, sensitivity, on_front):
    return {"run_id": run_id, "noise_mode": mode, "val_accuracy": accuracy, "sensitivity": sensitivity,
            "sic": 0.1, "pareto_front": on_front}


def test_default_models_are_the_best_plain_resnet_and_the_fronts_least_sensitive_sde():
    rows = [_row("plain-a", "none", 0.90, 0.20, False), _row("plain-b", "none", 0.95, 0.30, True),
            _row("sde-front", "gaussian", 0.93, 0.15, True), _row("sde-off", "attribution", 0.80, 0.05, False),
            _row("sde-front-2", "attribution", 0.96, 0.18, True)]
    assert default_pair(rows) == ("plain-b", "sde-front")
    assert default_pair([_row("sde-off", "gaussian", 0.8, 0.1, False)]) == (None, "sde-off")
    assert default_pair([]) == (None, None)


def test_sweeps_and_trials_come_from_the_store_and_a_missing_model_is_a_clear_error(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = SweepStore(uri, cache_dir=str(tmp_path / "cache"))
    assert store.sweeps() == []

    tracker = SweepTracker.start(uri, "my-sweep", "my-sweep", {"num_samples": 2})
    run_id, _ = tracker.open_trial("t1", {"noise_mode": "gaussian", "noise_sigma": 0.5, "lr": 0.1})
    tracker.finish_trial(run_id, "finished", {"val_accuracy": 0.9, "sensitivity": 0.1, "sic": 0.2})
    tracker.update_front()

    [sweep] = store.sweeps()
    assert sweep.name == "my-sweep" and store.sweep(sweep.label) == sweep
    [row] = store.trials(sweep)
    assert row["run_id"] == run_id and row["pareto_front"] is True
    assert store.run_url(sweep, run_id) == f"http://127.0.0.1:5000/#/experiments/{sweep.experiment_id}/runs/{run_id}"
    assert store.grid(run_id) is None and store.gallery(run_id) == []
    with pytest.raises(DashboardError, match="no model artifact"):
        store.model(run_id)
    with pytest.raises(DashboardError, match="no sweep"):
        store.sweep("nope")
    assert MlflowClient(uri).get_run(run_id).data.tags["pareto_front"] == "true"


def test_an_unreachable_store_is_a_clear_error(tmp_path):
    store = SweepStore("http://127.0.0.1:9", cache_dir=str(tmp_path))
    with pytest.raises(DashboardError, match="cannot read the MLflow store"):
        store.sweeps()
