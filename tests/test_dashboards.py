"""The dashboards' MLflow side, on a real SQLite MLflow store: sweeps, default models, missing artifacts."""

import pytest
from mlflow import MlflowClient

from dashboards.store import DashboardError, SweepStore, default_pair
from nsde_ray.tracking import SweepTracker


def _row(run_id, mode, accuracy, sensitivity, on_front):
    return {
        "run_id": run_id,
        "noise_mode": mode,
        "val_accuracy": accuracy,
        "sensitivity": sensitivity,
        "sic": 0.1,
        "pareto_front": on_front,
    }


def test_default_models_are_the_best_plain_resnet_and_the_fronts_least_sensitive_sde():
    rows = [
        _row("plain-a", "none", 0.90, 0.20, False),
        _row("plain-b", "none", 0.95, 0.30, True),
        _row("sde-front", "gaussian", 0.93, 0.15, True),
        _row("sde-off", "attribution", 0.80, 0.05, False),
        _row("sde-front-2", "attribution", 0.96, 0.18, True),
    ]
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


def _export(path, **changes):
    """A small exported model file (untrained cifar_resnet8 on 1-channel 32 px images), metadata overridden."""
    import torch

    from nsde_ray.config import NoiseConfig, TrialConfig
    from nsde_ray.models import build_model

    model = build_model("cifar_resnet8", 10, 1, NoiseConfig())
    state = {
        "model": model.state_dict(),
        "config": TrialConfig().to_dict(),
        "epoch": 1,
        "num_classes": 10,
        "in_channels": 1,
        "class_names": [str(k) for k in range(10)],
        "mean": [0.3],
        "std": [0.4],
        "image_size": 32,
        "shap_baselines": torch.zeros(2, 1, 32, 32, dtype=torch.float16),
    }
    state.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_size": 200000}, r"image_size 200000 is not an integer in \[8, 1024\]"),
        ({"image_size": 4}, "image_size 4"),
        ({"num_classes": 10**9}, "num_classes"),
        ({"class_names": ["a", "b"]}, "class_names must be 10 names"),
        ({"mean": [0.1, 0.2, 0.3]}, "mean must be 1 finite numbers, one per input channel"),
        ({"std": [0.0]}, "std must be > 0"),
    ],
)
def test_a_checkpoint_with_absurd_metadata_is_refused_before_use(tmp_path, changes, message):
    from mlflow import MlflowClient

    from nsde_ray.explain import load_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker.start(uri, "s", "s", {})
    run_id, _ = tracker.open_trial("t1", {})
    MlflowClient(uri).log_artifact(run_id, str(_export(tmp_path / "export" / "checkpoint.pt", **changes)), "model")
    store = SweepStore(uri, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DashboardError, match=f"model cannot be loaded: .*{message}"):
        store.model(run_id)
    assert load_model(str(_export(tmp_path / "good" / "checkpoint.pt"))).image_size == 32


def test_models_and_artifacts_are_cached_within_bounds(tmp_path, monkeypatch):
    import os

    from mlflow import MlflowClient

    import dashboards.store as store_module

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker.start(uri, "s", "s", {})
    runs = [tracker.open_trial(f"t{k}", {})[0] for k in range(4)]
    for k, run_id in enumerate(runs):
        (tmp_path / f"a{k}").mkdir()
        (tmp_path / f"a{k}" / "grid.png").write_bytes(b"x" * 1000)
        MlflowClient(uri).log_artifact(run_id, str(tmp_path / f"a{k}" / "grid.png"))
    store = SweepStore(uri, cache_dir=str(tmp_path / "cache"), max_models=2, max_cache_bytes=2500)
    for run_id in runs[:3]:
        assert store.artifact(run_id, "grid.png") is not None
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(runs[1:3])  # the least recently used run went
    store.artifact(runs[1], "grid.png")  # used again: now runs[2] is the oldest
    store.artifact(runs[3], "grid.png")
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([runs[1], runs[3]])

    monkeypatch.setattr(store_module, "load_model", lambda path: object())
    monkeypatch.setattr(store, "artifact", lambda run_id, path: path)
    for run_id in ("a", "b", "a", "c"):  # "a" used again before "c" comes, so "b" goes
        store.model(run_id)
    assert list(store._models) == ["a", "c"]


def test_the_app_runs_one_event_at_a_time_and_never_shows_the_password(tmp_path):
    import json

    from dashboards.app import Limits, build_app

    store = SweepStore("http://alice:s3cret@127.0.0.1:9", cache_dir=str(tmp_path))
    assert store.ui_url == "http://127.0.0.1:9"
    app = build_app(store, Limits(max_queue=5))
    assert app._queue.default_concurrency_limit == 1 and app._queue.max_size == 5
    config = json.dumps(app.get_config_file(), default=str)
    assert "alice:***@127.0.0.1:9" in config and "s3cret" not in config
