"""The sweep's parts without Ray: search space, reference points, bad flags, the MLflow records."""

import math

import mlflow
import optuna
import pytest

from helpers import assert_usage_error
from nsde_ray.cli import main
from nsde_ray.config import SearchSpace, SweepConfig, TrialConfig
from nsde_ray.sweep import DefineSpace, reference_points, trial_config
from nsde_ray.tracking import FRONT_CSV, FRONT_HTML, FRONT_PNG, SweepTracker


def test_search_space_is_conditional_and_references_come_first():
    cfg = SweepConfig(name="s", storage="/tmp", num_samples=12)
    study = optuna.create_study(directions=["maximize", "minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for point in reference_points(cfg):
        study.enqueue_trial(point)
    space = DefineSpace(cfg.space, epochs=6)
    trials = []
    for _ in range(cfg.num_samples):
        trial = study.ask()
        space(trial)
        trials.append(trial.params)
        study.tell(trial, [0.9, 0.1, 0.1])
    assert trials[0] == {"noise_mode": "none", "lr": 0.1}
    assert trials[1] == {"noise_mode": "gaussian", "noise_sigma": 0.5, "lr": 0.1}
    for params in trials:
        assert ("noise_sigma" in params) == (params["noise_mode"] != "none")
        assert ("shaping_clip_percentile" in params) == (params["noise_mode"] == "attribution")
        assert 0.02 <= params["lr"] <= 0.3
        if params["noise_mode"] == "attribution":
            assert 0 <= params["shaping_warmup_epochs"] <= 5 and 1 <= params["shaping_refresh_every"] <= 6
            assert 90 <= params["shaping_clip_percentile"] <= 100
            assert trial_config(TrialConfig(), params).shaping.energy == params["shaping_energy"]
    assert {p["noise_mode"] for p in trials} == {"none", "gaussian", "attribution", "input"}
    plain = trial_config(TrialConfig(), trials[0])
    assert plain.noise.mode == "none" and plain.noise.sigma == 0.0  # its logged params say "no noise"


@pytest.mark.parametrize("flags, message", [
    (["--arch", "resnet9000"], "arch='resnet9000' is not valid; choose one of: cifar_resnet8"),
    (["--dataset", "imagefolder", "--data-dir", "/no/such/dir"], "/no/such/dir"),
    (["--name", "never_ran", "--resume"], "no sweep named 'never_ran'"),
    (["--sigma-range", "-0.5", "1"], "goes below 0"),
    (["--sigma-range", "0.6", "1"], "must contain 0.5"),
    (["--eval-methods", "saliency"], "must include 'ig'"),
    (["--num-samples", "0"], "num_samples (--num-samples) must be an integer >= 1"),
    (["--cpus-per-worker", "0"], "cpus_per_worker (--cpus-per-worker) must be an integer >= 1"),
])
def test_bad_flags_fail_before_any_trial(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(main, flags + ["--storage", str(tmp_path / "ray"), "--tracking-uri",
                                      f"sqlite:///{tmp_path}/mlflow.db"], message, capsys)


def test_a_tracking_server_that_does_not_answer_fails_in_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(main, ["--storage", str(tmp_path / "ray"), "--tracking-uri", "http://127.0.0.1:9"],
                       "does not answer", capsys)


def test_an_existing_sweep_name_is_not_overwritten(tmp_path, capsys, monkeypatch):
    from nsde_ray.sweep import save_sweep_state

    monkeypatch.chdir(tmp_path)
    save_sweep_state(SweepConfig(name="taken", storage=str(tmp_path)), {})
    with pytest.raises(SystemExit):
        main(["--name", "taken", "--storage", str(tmp_path)])
    assert "pass --resume to continue it" in capsys.readouterr().err


def test_tracker_reopens_trial_runs_and_keeps_the_front_current(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker.start(uri, "exp", "sweep1", {"arch": "cifar_resnet8"})
    again = SweepTracker(**tracker.describe())
    runs = {}
    for trial_id, metrics in {"a": (0.95, 0.30, 0.10), "b": (0.90, 0.10, 0.20), "c": (0.85, 0.40, 0.05)}.items():
        run_id, status = again.open_trial(trial_id, {"noise_mode": "gaussian", "lr": 0.1})
        assert status == "running"
        assert again.open_trial(trial_id, {"noise_mode": "gaussian", "lr": 0.1}) == (run_id, "running")
        again.log_epoch(run_id, {"train_loss": 1.0, "val_accuracy": 0.5}, epoch=1)
        again.finish_trial(run_id, "finished", dict(zip(("val_accuracy", "sensitivity", "sic"), metrics), epoch=1))
        runs[trial_id] = run_id
        assert again.open_trial(trial_id, {}) == (run_id, "finished")
    rows = again.update_front().rows
    assert {r["trial_id"]: r["pareto_front"] for r in rows} == {"a": True, "b": True, "c": False}
    assert {r["trial_id"]: r["pareto_probability"] for r in rows} == {"a": 1.0, "b": 1.0, "c": 0.0}  # one seed: sure

    client = mlflow.MlflowClient(uri)
    children = client.search_runs([tracker.experiment_id], filter_string="tags.pareto_front = 'true'")
    assert sorted(r.data.tags["nsde.trial_id"] for r in children) == ["a", "b"]
    assert all(r.data.tags["nsde.role"] == "trial" and r.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
               for r in children)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.data.tags["nsde.role"] == "sweep"
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {a.path for a in client.list_artifacts(tracker.parent_run_id)} >= {FRONT_CSV, FRONT_HTML, FRONT_PNG}
    assert [m.step for m in client.get_metric_history(tracker.parent_run_id, "hypervolume")] == [3]
    assert {r.data.tags["pareto_confidence"] for r in children} == {"1.00"}
    assert parent.data.tags["front_objectives"] == "val_accuracy,sensitivity,sic"
    assert "| * | 1 | 0.95 | 0.3 | 0.1 | gaussian |" in parent.data.tags["mlflow.note.content"]  # as the description
    assert len(client.search_runs([tracker.experiment_id])) == 4  # the parent and three trials: no duplicates


def test_seed_runs_nest_under_their_configuration_and_reopen_by_index(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker.start(uri, "exp", "sweep1", {})
    config_run, _ = tracker.open_trial("t1", {"noise_mode": "gaussian", "seeds_per_config": 2})
    seed_runs = [tracker.open_seed(config_run, "t1", index, {"seed": index})[0] for index in range(2)]
    assert len(set(seed_runs)) == 2 and tracker.open_seed(config_run, "t1", 1, {}) == (seed_runs[1], "running")
    tracker.finish_trial(seed_runs[0], "finished", {"val_accuracy": 0.9})
    assert tracker.open_seed(config_run, "t1", 0, {}) == (seed_runs[0], "finished")
    assert [run.info.run_id for run in tracker.seed_runs(config_run)] == seed_runs
    assert [run.info.run_id for run in tracker.trial_runs()] == [config_run]  # seeds are not configurations
    client = mlflow.MlflowClient(uri)
    tags = client.get_run(seed_runs[1]).data.tags
    assert tags["mlflow.parentRunId"] == config_run and tags["nsde.role"] == "seed" and tags["nsde.seed_index"] == "1"


def test_seeds_aggregate_to_means_with_std_and_standard_error():
    from nsde_ray.tracking import aggregate_seeds

    per_seed = [{"val_accuracy": 0.90, "sensitivity": 0.2, "sensitivity_saliency": 0.5, "train_time_s": 10.0},
                {"val_accuracy": 0.80, "sensitivity": 0.4, "sensitivity_saliency": 0.7, "train_time_s": 30.0},
                {"val_accuracy": 0.85, "sensitivity": float("nan"), "sensitivity_saliency": 0.6, "train_time_s": 20.0}]
    aggregated = aggregate_seeds(per_seed)
    assert aggregated["seeds"] == 3 and aggregated["val_accuracy"] == pytest.approx(0.85)
    assert aggregated["val_accuracy_std"] == pytest.approx(0.05) and aggregated["val_accuracy_se"] == pytest.approx(
        0.05 / 3 ** 0.5)
    assert aggregated["sensitivity_saliency_se"] == pytest.approx(0.1 / 3 ** 0.5)
    assert math.isnan(aggregated["sensitivity"])  # one broken seed: the configuration's mean is not a number
    assert aggregated["train_time_s"] == 20.0 and "train_time_s_se" not in aggregated
