"""The sweep's parts without training (and, but for one Tune restore, without Ray): search space, reference
points, bad flags, the MLflow records."""

import math

import mlflow
import optuna
import pytest
from helpers import assert_usage_error

from nsde_ray import tracking
from nsde_ray.cli import main
from nsde_ray.config import SearchSpace, SweepConfig, TrialConfig
from nsde_ray.registry import injects_noise, noise_mode_names
from nsde_ray.sweep import DefineSpace, reference_points
from nsde_ray.tracking import FRONT_CSV, FRONT_HTML, FRONT_PNG, SweepTracker
from nsde_ray.trial import trial_config


def test_search_space_is_conditional_and_references_come_first():
    cfg = SweepConfig(name="s", storage="/tmp", num_samples=12)
    study = optuna.create_study(
        directions=["maximize", "minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
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
        assert ("noise_sigma" in params) == injects_noise(params["noise_mode"])
        assert ("shaping_clip_percentile" in params) == (params["noise_mode"] == "attribution")
        assert ("noise_fgsm_epsilon" in params) == ("noise_fgsm_step" in params) == (params["noise_mode"] == "fgsm")
        assert ("noise_gradreg_weight" in params) == (params["noise_mode"] == "gradreg")
        assert 0.02 <= params["lr"] <= 0.3
        if params["noise_mode"] == "fgsm":
            assert 0.005 <= params["noise_fgsm_epsilon"] <= 0.05 and 0.005 <= params["noise_fgsm_step"] <= 0.0625
            assert trial_config(TrialConfig(), params).noise.sigma == 0.0  # no noise: its params say so
        if params["noise_mode"] == "attribution":
            assert 0 <= params["shaping_warmup_epochs"] <= 5 and 1 <= params["shaping_refresh_every"] <= 6
            assert 90 <= params["shaping_clip_percentile"] <= 100
            assert trial_config(TrialConfig(), params).shaping.energy == params["shaping_energy"]
    assert {p["noise_mode"] for p in trials} == set(noise_mode_names())
    plain = trial_config(TrialConfig(), trials[0])
    assert plain.noise.mode == "none" and plain.noise.sigma == 0.0  # its logged params say "no noise"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--arch", "resnet9000"], "arch='resnet9000' is not valid; choose one of: cifar_resnet8"),
        (["--dataset", "imagefolder", "--data-dir", "/no/such/dir"], "/no/such/dir"),
        (["--name", "never_ran", "--resume"], "no sweep named 'never_ran'"),
        (["--sigma-range", "-0.5", "1"], "goes below 0"),
        (["--sigma-range", "0.6", "1"], "must contain 0.5"),
        (["--eval-methods", "saliency"], "must include 'ig'"),
        (["--num-samples", "0"], "num_samples (--num-samples) must be an integer >= 1"),
        (["--cpus-per-worker", "0"], "cpus_per_worker (--cpus-per-worker) must be an integer >= 1"),
    ],
)
def test_bad_flags_fail_before_any_trial(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(
        main,
        flags + ["--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        message,
        capsys,
    )


def test_a_tracking_server_that_does_not_answer_fails_in_seconds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(
        main, ["--storage", str(tmp_path / "ray"), "--tracking-uri", "http://127.0.0.1:9"], "does not answer", capsys
    )


def test_an_existing_sweep_name_is_not_overwritten(tmp_path, capsys, monkeypatch):
    from nsde_ray.lifecycle import save_state

    monkeypatch.chdir(tmp_path)
    save_state(SweepConfig(name="taken", storage=str(tmp_path)), {})
    with pytest.raises(SystemExit):
        main(["--name", "taken", "--storage", str(tmp_path)])
    assert "pass --resume to continue it" in capsys.readouterr().err


def test_tracker_reopens_trial_runs_and_keeps_the_front_current(tmp_path, monkeypatch):
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
    assert all(
        r.data.tags["nsde.role"] == "trial" and r.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
        for r in children
    )
    parent = client.get_run(tracker.parent_run_id)
    assert parent.data.tags["nsde.role"] == "sweep"
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {a.path for a in client.list_artifacts(tracker.parent_run_id)} >= {FRONT_CSV, FRONT_HTML, FRONT_PNG}
    assert [m.step for m in client.get_metric_history(tracker.parent_run_id, "hypervolume")] == [3]
    assert {r.data.tags["pareto_confidence"] for r in children} == {"1.00"}
    assert parent.data.tags["front_objectives"] == "val_accuracy,sensitivity,sic"
    description = parent.data.tags["mlflow.note.content"]
    assert "| * | 1 | 0.95 | 0.3 | 0.1 | 1 | gaussian |" in description  # the front table, seeds column included
    assert "### Noise modes compared by their fronts" in description
    # a description longer than MLflow keeps in a tag gives up the per-mode report, not the front's table or notes
    monkeypatch.setattr(tracking, "MAX_TAG_VAL_LENGTH", len(description) - 1)
    again.update_front(["a note of the sweep's own"])
    shorter = client.get_run(tracker.parent_run_id).data.tags["mlflow.note.content"]
    assert "| * | 1 | 0.95 | 0.3 | 0.1 | 1 | gaussian |" in shorter and "a note of the sweep's own" in shorter
    assert "### Noise modes" not in shorter and "mode_verdicts.csv" in shorter
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
    from nsde_ray.aggregate import aggregate_seeds

    per_seed = [
        {"val_accuracy": 0.90, "sensitivity": 0.2, "sensitivity_saliency": 0.5, "train_time_s": 10.0},
        {"val_accuracy": 0.80, "sensitivity": 0.4, "sensitivity_saliency": 0.7, "train_time_s": 30.0},
        {"val_accuracy": 0.85, "sensitivity": float("nan"), "sensitivity_saliency": 0.6, "train_time_s": 20.0},
    ]
    aggregated = aggregate_seeds(per_seed)
    assert aggregated["seeds"] == 3 and aggregated["val_accuracy"] == pytest.approx(0.85)
    assert aggregated["val_accuracy_std"] == pytest.approx(0.05) and aggregated["val_accuracy_se"] == pytest.approx(
        0.05 / 3**0.5
    )
    assert aggregated["sensitivity_saliency_se"] == pytest.approx(0.1 / 3**0.5)
    assert math.isnan(aggregated["sensitivity"])  # one broken seed: the configuration's mean is not a number
    assert aggregated["train_time_s"] == 20.0 and "train_time_s_se" not in aggregated


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: (root / "val" / "dog" / "x.jpg").write_bytes(b"\x13\x37\xbe\xef\x00\x42"), "dog/x.jpg"),
        (lambda root: ((root / "train" / "bird").mkdir(), (root / "val" / "bird").mkdir()), "hold no images"),
    ],
)
def test_bad_image_folders_fail_before_ray_starts(make, message, tmp_path, capsys, monkeypatch):
    from helpers import write_images

    data = tmp_path / "data"
    for split in ("train", "val"):
        write_images(data / split / "cat", 2, 0)
        write_images(data / split / "dog", 2, 200)
    make(data)
    monkeypatch.chdir(tmp_path)
    assert_usage_error(
        main,
        [
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(data),
            "--storage",
            str(tmp_path / "ray"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        message,
        capsys,
    )


def _epoch(epoch):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_accuracy": 0.1 * epoch, "node_id": f"node{epoch % 2}"}


def test_epoch_logger_survives_mlflow_errors_and_logs_the_waiting_epochs_later(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from nsde_ray import trial
    from nsde_ray.tracking import SweepTracker as Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker.start(uri, "e", "e", {})
    run_id, _ = tracker.open_trial("t1", {})
    down = {"now": True}
    log_epoch = Tracker.log_epoch

    def flaky(self, *args, **kwargs):
        if down["now"]:
            raise ConnectionError("MLflow server unreachable")
        return log_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Tracker, "log_epoch", flaky)
    logger = trial.EpochLogger(tracker.describe(), run_id, "trial t1", 6)
    logger.after_report(None, [_epoch(1)], None)  # raised before: the Train controller, which Ray does not retry
    logger.after_report(None, [_epoch(2)], None)
    assert logger.pending == [1, 2]
    assert capsys.readouterr().err.count("cannot log epoch metrics to MLflow") == 1  # once per run
    down["now"] = False
    logger.after_report(None, [_epoch(3)], None)
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3] and logger.pending == []
    assert mlflow.MlflowClient(uri).get_run(run_id).data.tags["nsde.train_nodes"] == "node1,node0"

    # what still waits when training ends is logged by the driver from the Train result's kept reports
    from nsde_ray.train import TrainOutcome

    down["now"] = True
    logger.after_report(None, [_epoch(4)], None)
    down["now"] = False
    result = SimpleNamespace(
        best_checkpoints=[(None, _epoch(3)), (None, _epoch(4))], metrics=_epoch(5), checkpoint=None
    )
    tracker.log_missing_epochs(run_id, TrainOutcome.from_result(result).reports)
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]  # none twice


def test_epoch_logger_keeps_a_bounded_buffer(monkeypatch):
    from nsde_ray import trial

    class Down:
        def __init__(self, **kwargs):
            raise ConnectionError("down")

    monkeypatch.setattr(trial, "SweepTracker", Down)
    logger = trial.EpochLogger({"tracking_uri": "http://x"}, "run", "trial t1", 100)
    for epoch in range(1, trial.PENDING_EPOCHS + 6):
        logger.after_report(None, [_epoch(epoch)], None)
    assert logger.pending == list(range(6, trial.PENDING_EPOCHS + 6))  # the newest are kept


def test_driver_callbacks_never_raise_on_mlflow_errors(monkeypatch, capsys):
    from types import SimpleNamespace

    from nsde_ray import sweep

    class Down:
        def __init__(self, **kwargs):
            raise ConnectionError("MLflow down at http://alice:s3cret@mlflow:5000")

    monkeypatch.setattr(sweep, "SweepTracker", Down)
    trial = SimpleNamespace(trial_id="t1", error_file=None, status="ERROR")
    tracker = {"tracking_uri": "http://alice:s3cret@mlflow:5000", "experiment_id": "1", "parent_run_id": "p"}
    sweep.ProgressCallback(tracker, 4).on_trial_error(0, [trial], trial)
    sweep.FrontCallback(tracker, 4).on_trial_error(0, [trial], trial)
    sweep.FrontCallback(tracker, 4).on_trial_complete(0, [trial], trial)
    out, err = capsys.readouterr()
    assert out.count("1/4 trials done") == 3 and "Pareto front not updated (MLflow error)" in out
    assert "cannot mark its MLflow run failed" in err and "cannot update MLflow" in err
    assert "s3cret" not in err and "alice:***@mlflow" in err


@pytest.fixture
def one_test_ray():
    """A local Ray for one test: the others here check that a bad flag is refused before Ray starts."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_resume_retries_errored_trials_unless_told_not_to(tmp_path, monkeypatch, one_test_ray):
    """A real Tune experiment on disk whose one trial errored, restored by ``build_tuner(resume=True)`` as
    ``--resume`` does: with ``--no-retry-errored`` the trial stays errored and nothing runs; without it the trial
    runs again and finishes. Only the training behind the trainable is a stand-in (it fails while a marker file
    exists, else reports the objectives), so the restore takes seconds."""
    from ray import tune

    from nsde_ray import sweep, trial
    from nsde_ray.cli import build_parser
    from nsde_ray.config import TrainConfig
    from nsde_ray.paper_tables import build_parser as tables_parser
    from nsde_ray.registry import objective_directions

    failing, attempts = tmp_path / "failing", tmp_path / "attempts"
    failing.touch()
    attempts.mkdir()
    objectives = [name for name, _ in objective_directions()]

    def run_trial(config, **parameters):  # run_trial's parameters, unused
        (attempts / str(len(list(attempts.iterdir())))).touch()
        if failing.exists():
            raise RuntimeError("the training failed")
        tune.report(dict.fromkeys(objectives, 0.5))

    monkeypatch.setattr(trial, "run_trial", run_trial)
    base = TrialConfig(train=TrainConfig(max_failures=0))  # no retry within the first run: the trial errors
    cfg = SweepConfig(name="s", storage=str(tmp_path / "ray"), base=base, num_samples=1, max_concurrent=1)
    tracker = SweepTracker.start(f"sqlite:///{tmp_path}/mlflow.db", "s", "s", {}).describe()

    def fit(resume: bool, retry_errored: bool = True):
        grid = sweep.build_tuner(cfg, tracker, resume=resume, retry_errored=retry_errored).fit()
        return len(grid), len(grid.errors), len(list(attempts.iterdir()))

    assert fit(resume=False) == (1, 1, 1)
    assert fit(resume=True, retry_errored=False) == (1, 1, 1)  # stays errored, not run again
    failing.unlink()
    assert fit(resume=True) == (1, 0, 2)  # run again, once, and finished
    for parser in (build_parser(), tables_parser()):
        assert parser.parse_args(["--resume", "--no-retry-errored"]).no_retry_errored is True
        assert parser.parse_args(["--resume"]).no_retry_errored is False


@pytest.mark.parametrize("name", ["..", ".", "a/b", " padded "])
def test_a_name_outside_the_storage_is_refused_before_anything_is_written(name, tmp_path, capsys, monkeypatch):
    storage = tmp_path / "ray"
    monkeypatch.chdir(tmp_path)
    for resume in ([], ["--resume"]):
        assert_usage_error(
            main,
            ["--name", name, "--storage", str(storage), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *resume],
            "sweep name (--name)",
            capsys,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no state, no MLflow store, not even the storage


def test_a_tracking_uri_mlflow_cannot_use_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(
        main,
        ["--storage", str(tmp_path / "ray"), "--tracking-uri", "foo://x"],
        "MLflow cannot use the tracking URI 'foo://x'",
        capsys,
    )


def test_the_state_is_replaced_atomically(tmp_path, monkeypatch):
    import os

    from nsde_ray import lifecycle

    old = SweepConfig(name="s", storage=str(tmp_path), num_samples=3)
    lifecycle.save_state(old, {"tracking_uri": "sqlite:///x.db"})
    for failure in ("serialise", "rename"):
        with monkeypatch.context() as patch:
            if failure == "serialise":
                patch.setattr(lifecycle.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
            else:  # a crash or a full disk between writing the new state and putting it in place
                patch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
            with pytest.raises((RuntimeError, OSError)):
                lifecycle.save_state(SweepConfig(name="s", storage=str(tmp_path), num_samples=9), {})
        assert SweepConfig.from_dict(lifecycle.load_state(str(tmp_path), "s", "sweep")[0]).num_samples == 3
        assert os.listdir(tmp_path / "s") == [lifecycle.SWEEP_FILE]  # no temporary file left behind
    lifecycle.save_state(SweepConfig(name="s", storage=str(tmp_path), num_samples=9), {})
    assert SweepConfig.from_dict(lifecycle.load_state(str(tmp_path), "s", "sweep")[0]).num_samples == 9


def test_a_storage_that_cannot_be_listed_is_not_read_as_empty(tmp_path):
    from nsde_ray.lifecycle import SweepError, list_sweeps
    from nsde_ray.lifecycle import save_state as save_sweep_state

    assert list_sweeps(str(tmp_path / "not-yet")) == []  # a storage not made yet holds no sweeps
    save_sweep_state(SweepConfig(name="s", storage=str(tmp_path / "ray")), {})
    assert list_sweeps(str(tmp_path / "ray")) == ["s"]
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SweepError, match="cannot list the sweeps in --storage .*file"):
        list_sweeps(str(tmp_path / "file"))


def test_resume_names_each_flag_that_differs_from_the_stored_settings(tmp_path, monkeypatch, capsys):
    from nsde_ray import cli
    from nsde_ray.lifecycle import save_state as save_sweep_state
    from nsde_ray.tracking import SweepTracker as Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker.start(uri, "s", "s", {})
    save_sweep_state(SweepConfig(name="s", storage=str(tmp_path), tracking_uri=uri), tracker.describe())
    args = cli.parse_args(
        cli.build_parser(),
        [
            "--name",
            "s",
            "--storage",
            str(tmp_path),
            "--resume",
            "--epochs",
            "10",
            "--num-samples",
            "20",
            "--lr",
            "0.1",
            "--sigma-range",
            "0",
            "2",
            "--set",
            "train.batch_size=64",
            "--set",
            "train.momentum=0.9",
            "--smoke-test",
            "--no-retry-errored",
        ],
    )
    cfg, _ = cli.open_run(
        args,
        command=cli.COMMAND,
        kind="sweep",
        from_args=cli.sweep_config_from_args,
        from_dict=SweepConfig.from_dict,
        resume_fields=cli.SWEEP_RESUME_FIELDS,
        sections={**cli.overrides.trial_sections(), cli.SPACE: SearchSpace},
    )
    err = capsys.readouterr().err
    assert "--resume continues 's' with its stored settings; these flags differ from them and are not applied" in err
    for text in (
        "--epochs (stored 6, given 10)",
        "--num-samples (stored 8, given 20: a resumed run cannot be extended)",
        "--sigma-range (stored 0.0 1.0, given 0.0 2.0)",
        "--set train.batch_size=64 (train.batch_size: stored 32, given 64)",
        "--smoke-test (not applied)",
    ):
        assert text in err
    for same in ("--lr", "train.momentum", "--no-retry-errored", "--storage", "--name"):
        assert same not in err  # equal to the stored value, or a flag that says where and how to run
    assert cfg.base.train.epochs == 6 and cfg.num_samples == 8


def test_tune_sees_the_objectives_first_and_nothing_it_does_not_need():
    from nsde_ray.trial import reported_metrics

    final = {
        "train_loss": 0.3,
        "sic": 0.4,
        "val_accuracy": 0.9,
        "sensitivity": 0.2,
        "sensitivity_se": 0.01,
        "seeds": 2.0,
        "eval_time_s": 5.0,
    }
    reported = reported_metrics(final, diverged=False)
    assert list(reported)[:3] == ["val_accuracy", "sensitivity", "sic"]  # the columns of Tune's progress table
    assert reported == {
        "val_accuracy": 0.9,
        "sensitivity": 0.2,
        "sic": 0.4,
        "sensitivity_se": 0.01,
        "seeds": 2.0,
        "diverged": 0.0,
    }
    diverged = reported_metrics({"val_accuracy": 0.1, "train_loss": math.inf}, diverged=True)
    assert diverged["val_accuracy"] == 0.1 and math.isnan(diverged["sensitivity"]) and math.isnan(diverged["sic"])
    assert diverged["diverged"] == 1.0 and diverged["seeds"] == 1.0


def test_a_run_created_twice_by_a_retried_request_is_kept_once(tmp_path, monkeypatch):
    """MLflow's client retries a timed-out create-run request, so a slow server may create the run twice:
    the oldest copy is the seed's run, the other is deleted."""
    tracker = SweepTracker.start(f"sqlite:///{tmp_path}/mlflow.db", "exp", "sweep1", {})
    config_run, _ = tracker.open_trial("t1", {})
    create_run = tracker.client.create_run

    def create_twice(*args, **kwargs):
        first = create_run(*args, **kwargs)  # the request that timed out, committed by the server
        create_run(*args, **kwargs)  # the retry, whose answer the client gets
        return first

    monkeypatch.setattr(tracker.client, "create_run", create_twice)
    seed_run, status = tracker.open_seed(config_run, "t1", 0, {"seed": 0})
    assert status == "running" and [run.info.run_id for run in tracker.seed_runs(config_run)] == [seed_run]
    assert tracker.client.get_run(seed_run).data.params == {"seed": "0"}
    monkeypatch.undo()
    assert tracker.open_seed(config_run, "t1", 0, {}) == (seed_run, "running")  # reopened, not created anew


def test_adaptive_seeds_leave_a_configuration_whose_search_trial_errored_to_its_trial(tmp_path):
    """A search trial that errored (its seed 0 unfinished, seed 1 never started) keeps its seeds for --resume's
    retry of the trial: replication neither finishes its seed nor marks it finished with one seed (which left it
    at one seed for good), and counts its first seeds as spent."""
    from nsde_ray.replication import _seed_runs, _spent, replicate

    tracker = SweepTracker.start(f"sqlite:///{tmp_path}/mlflow.db", "exp", "sweep1", {})
    done, _ = tracker.open_trial("done", {"noise_mode": "gaussian", "noise_sigma": 0.5, "lr": 0.1})
    for index, accuracy in enumerate((0.9, 0.92)):
        seed_run, _ = tracker.open_seed(done, "done", index, {"seed": index})
        tracker.finish_trial(seed_run, "finished", {"val_accuracy": accuracy, "sensitivity": 0.2, "sic": 0.1})
    tracker.finish_trial(done, "finished", {"val_accuracy": 0.91, "sensitivity": 0.2, "sic": 0.1, "seeds": 2})
    errored, _ = tracker.open_trial("t2", {"noise_mode": "none", "lr": 0.1})
    tracker.open_seed(errored, "t2", 0, {"seed": 0})
    cfg = SweepConfig(name="sweep1", storage=str(tmp_path / "ray"), seeds_per_config="auto", num_samples=2)

    assert list(_seed_runs(tracker)) == [done] and _spent(tracker) == 4
    notes = replicate(cfg, tracker)  # one finished configuration: decided, so no round (and no Ray) starts
    assert any("trials t2" in note and "--resume" in note for note in notes), notes
    assert tracker.client.get_run(errored).data.tags["nsde.status"] == "running"
    assert [run.data.tags["nsde.status"] for run in tracker.seed_runs(errored)] == ["running"]
