"""The main command end to end: real Ray (local and multi-node), real MLflow (SQLite and a server), SIGKILL."""

import signal
import subprocess

import mlflow
import pytest

from helpers import finish_sweep, start_sweep, trial_runs, wait_until
from nsde_ray.tracking import FRONT_CSV, FRONT_HTML, FRONT_PNG

pytestmark = pytest.mark.slow


def test_smoke_sweep_logs_the_contract_to_an_mlflow_server(tmp_path, smoke_sweep):
    """The session's smoke sweep (tests/conftest.py), run against a real ``mlflow server`` on 127.0.0.1."""
    mlflow_server, name, output = smoke_sweep.uri, smoke_sweep.name, smoke_sweep.output
    assert "mlflow ui" in output or mlflow_server in output
    assert "tags.pareto_front = 'true'" in output

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("nsde.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("nsde.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent_id = parents[0].info.run_id
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["nsde.status"] == "finished" and run.info.status == "FINISHED"
        assert {"noise_mode", "noise_sigma", "shaping_warmup_epochs", "shaping_refresh_every",
                "shaping_clip_percentile", "arch", "dataset", "lr", "epochs", "seed"} <= set(run.data.params)
        assert {"val_accuracy", "sensitivity", "sic", "sensitivity_saliency", "sic_saliency",
                "train_loss"} <= set(run.data.metrics)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"attributions.png", "sic_curve.png", "ig_saturation.png", "model"} <= artifacts
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/checkpoint.pt"]
    references = {(r.data.params["noise_mode"], r.data.params["noise_sigma"]) for r in children}
    assert {("none", "0.0"), ("gaussian", "0.5")} <= references
    assert any(r.data.tags["pareto_front"] == "true" for r in children)
    assert {a.path for a in client.list_artifacts(parent_id)} >= {FRONT_CSV, FRONT_HTML, FRONT_PNG}
    assert client.get_metric_history(parent_id, "hypervolume")[-1].step == 3

    # the logged model loads back without unpickling code and predicts like the logged accuracy says
    from nsde_ray.train import load_trained_model

    model_dir = client.download_artifacts(children[0].info.run_id, "model", str(tmp_path / "download"))
    model, cfg = load_trained_model(model_dir)
    assert cfg.data.dataset == "digits" and not model.training


def test_resume_after_sigkill_keeps_finished_trials_and_duplicates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--smoke-test", "--storage", str(tmp_path / "ray"), "--name", "resumable", "--tracking-uri", uri]
    process = start_sweep(flags, tmp_path, "first.log")
    try:
        wait_until(lambda: any(r.data.tags.get("nsde.status") == "finished" for r in trial_runs(uri, "resumable")),
                   process, tmp_path / "first.log", 600, "a finished trial", poll=2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = {r.data.tags["nsde.trial_id"]: r for r in trial_runs(uri, "resumable")}
    finished_before = {t: r for t, r in before.items() if r.data.tags["nsde.status"] == "finished"}
    assert finished_before and len(before) < 3 + 1

    resumed = start_sweep(flags + ["--resume"], tmp_path, "resume.log")
    output = finish_sweep(resumed, tmp_path, "resume.log", timeout=900)
    assert "3 trials, 3 evaluated, 0 failed" in output
    after = trial_runs(uri, "resumable")
    trial_ids = [r.data.tags["nsde.trial_id"] for r in after]
    assert len(after) == 3 and len(set(trial_ids)) == 3  # num_samples trials, no run duplicated
    assert set(before) <= set(trial_ids)  # runs of trials started before the kill are kept
    client = mlflow.MlflowClient(uri)
    for trial_id, run in finished_before.items():
        now = next(r for r in after if r.data.tags["nsde.trial_id"] == trial_id)
        assert now.info.end_time == run.info.end_time  # not run again
        assert len(client.get_metric_history(now.info.run_id, "train_loss")) == 2
    assert all(r.data.tags["nsde.status"] == "finished" for r in after)


def test_node_loss_mid_trial_retries_from_the_checkpoint(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--num-samples", "2", "--epochs", "4", "--eval-images", "16", "--storage", str(tmp_path / "ray"),
             "--name", "nodeloss", "--tracking-uri", uri, "--address", cluster.address]
    process = start_sweep(flags, tmp_path, "nodeloss.log")
    client = mlflow.MlflowClient(uri)

    def one_epoch_done():
        return [r for r in trial_runs(uri, "nodeloss")
                if r.data.tags.get("nsde.train_nodes") and len(client.get_metric_history(r.info.run_id, "epoch")) >= 1
                and r.data.tags.get("nsde.status") == "running"]

    try:
        wait_until(lambda: one_epoch_done(), process, tmp_path / "nodeloss.log", 600, "a trial's first epoch", poll=2)
        victim_run = one_epoch_done()[0]
        victim_node = victim_run.data.tags["nsde.train_nodes"].split(",")[0]
        cluster.remove_node(next(n for n in nodes if n.node_id == victim_node))
        cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would bring
        output = finish_sweep(process, tmp_path, "nodeloss.log", timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
        cluster.shutdown()
    assert "2 trials, 2 evaluated, 0 failed" in output
    runs = trial_runs(uri, "nodeloss")
    assert len(runs) == 2 and all(r.data.tags["nsde.status"] == "finished" for r in runs)
    victim = client.get_run(victim_run.info.run_id)
    assert max(m.value for m in client.get_metric_history(victim.info.run_id, "resumed_from_epoch")) >= 1
    assert len({node for r in runs for node in r.data.tags["nsde.train_nodes"].split(",")}) >= 2
