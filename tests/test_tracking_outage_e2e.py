"""README "What survives what": a tracking server down for longer than MLflow's client retries, mid-sweep."""

import os
import time

import mlflow
import pytest
from helpers import (
    finish_sweep,
    seed_runs,
    start_in_group,
    start_mlflow_server,
    start_sweep,
    stop_group,
    trial_runs,
    wait_for_mlflow_server,
    wait_until,
)

# MLflow's client retries a failed call MAX_RETRIES times, sleeping 0, 2, 4 s (backoff factor 1, urllib3 2,
# no jitter): a call to a server that is down gives up after about 6 s instead of about 4 minutes.
SHORT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RETRY_WINDOW_S = 6
OUTAGE_S = 30
NAME = "outage"


def first_epoch_logged(uri: str) -> bool:
    client = mlflow.MlflowClient(uri)
    return any(client.get_metric_history(run.info.run_id, "train_loss") for run in trial_runs(uri, NAME))


def assert_one_finished_run_per_trial(uri: str) -> None:
    """3 configurations of one seed each, so no nested seed runs: one FINISHED run per configuration (no
    duplicate, none left RUNNING), each epoch logged once: a retried trial continues from its checkpoint, and the
    epochs that waited during the outage are not lost."""
    trials = trial_runs(uri, NAME)
    assert len(trials) == len({run.data.tags["nsde.trial_id"] for run in trials}) == 3
    assert seed_runs(uri, NAME) == []
    client = mlflow.MlflowClient(uri)
    for run in trials:
        assert (run.info.status, run.data.tags["nsde.status"]) == ("FINISHED", "finished"), run.data.tags
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]


@pytest.mark.slow
def test_sweep_completes_after_a_tracking_outage_longer_than_the_client_retries(tmp_path):
    """A real ``mlflow server`` (SQLite, local artifacts) is stopped once a trial has logged its first epoch and
    stays down for 30 s, five times the sweep's MLflow client retry window as configured here (about 6 s, through
    MLflow's MLFLOW_HTTP_REQUEST_* variables), then restarts on the same port and store. The smoke sweep either
    finishes by itself or, as README promises, ``--resume`` completes it: every configuration then has exactly
    one FINISHED run (no run left RUNNING, none duplicated) with all its epochs logged. One seed per
    configuration: test_sweep_e2e's SIGKILL test covers resuming nested seed runs.

    The trials train under a ``TorchTrainer`` (``train.single_process`` off): there the per-epoch logging runs
    on Ray Train's controller, which Ray does not retry, the harder of the two training paths."""
    server, uri = start_mlflow_server(
        f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", tmp_path / "server.log"
    )
    flags = [
        "--smoke-test",
        "--tracking-uri",
        uri,
        "--storage",
        str(tmp_path / "ray"),
        "--name",
        NAME,
        "--set",
        "train.single_process=false",
        "--seeds-per-config",
        "1",
    ]
    sweep = None
    try:
        wait_for_mlflow_server(server, uri, tmp_path / "server.log")
        sweep = start_sweep(flags, tmp_path, "sweep.log", env=SHORT_RETRIES)
        wait_until(
            lambda: first_epoch_logged(uri),
            sweep,
            tmp_path / "sweep.log",
            600,
            "a trial's first epoch in MLflow",
            poll=2,
        )

        stop_group(server)
        down_since = time.monotonic()
        time.sleep(OUTAGE_S)
        server = start_in_group(
            list(server.args),
            tmp_path / "server_restarted.log",
            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        )
        wait_for_mlflow_server(server, uri, tmp_path / "server_restarted.log")
        outage = time.monotonic() - down_since
        assert outage > 5 * RETRY_WINDOW_S

        sweep.wait(timeout=900)
        output = (tmp_path / "sweep.log").read_text()
        assert "Max retries exceeded" in output, "the outage never reached the sweep's MLflow calls"
        if sweep.returncode != 0 or "3 trials, 3 evaluated, 0 failed" not in output:
            sweep = start_sweep(flags + ["--resume"], tmp_path, "resume.log", env=SHORT_RETRIES)
            output = finish_sweep(sweep, tmp_path, "resume.log", 900)
        assert "3 trials, 3 evaluated, 0 failed" in output, output[-5000:]
        assert_one_finished_run_per_trial(uri)
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        stop_group(server)
