"""The main command end to end: real Ray (local and multi-node), real MLflow (SQLite and a server), SIGKILL."""

import signal

import mlflow
import pytest
import torch
from helpers import finish_sweep, seed_runs, start_sweep, trial_runs, wait_until
from torch.utils.data import DataLoader

from nsde_ray.data import build_datasets
from nsde_ray.explain import load_model
from nsde_ray.names import MODEL_FILE
from nsde_ray.replication import REASON_TAG
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
    seeds = [r for r in runs if r.data.tags.get("nsde.role") == "seed"]
    # 3 configurations x 2 seeds, then (--seeds-per-config auto) up to 2.5 seed runs per configuration in all
    assert len(parents) == 1 and len(children) == 3 and 6 <= len(seeds) <= 7
    parent_id = parents[0].info.run_id
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["nsde.status"] == "finished" and run.info.status == "FINISHED"
        assert {
            "noise_mode",
            "noise_sigma",
            "shaping_warmup_epochs",
            "shaping_refresh_every",
            "shaping_clip_percentile",
            "arch",
            "dataset",
            "lr",
            "epochs",
            "seed",
        } <= set(run.data.params)
        assert run.data.params["seeds_per_config"] == "2"  # the seeds the searcher saw
        metrics = run.data.metrics
        assert {
            "val_accuracy",
            "sensitivity",
            "sic",
            "sensitivity_saliency",
            "sic_saliency",
            "noise_energy",
            "randomisation_similarity_ig",
            "randomisation_passed_ig",
        } <= set(metrics)
        count = int(metrics["seeds"])
        for name_ in ("val_accuracy", "sensitivity", "sic", "sensitivity_saliency", "noise_energy"):
            assert metrics[f"{name_}_se"] == pytest.approx(metrics[f"{name_}_std"] / count**0.5)
        assert metrics["noise_energy"] == {"none": 0.0, "gaussian": 1.0, "input": 1.0}.get(
            run.data.params["noise_mode"], metrics["noise_energy"]
        )
        assert 0.0 <= float(run.data.tags["pareto_confidence"]) <= 1.0
        own = sorted(
            (s for s in seeds if s.data.tags["mlflow.parentRunId"] == run.info.run_id),
            key=lambda s: s.data.tags["nsde.seed_index"],
        )
        assert [s.data.tags["nsde.seed_index"] for s in own] == [str(k) for k in range(count)]
        assert [s.data.params["seed"] for s in own] == [str(int(run.data.params["seed"]) + k) for k in range(count)]
        assert metrics["val_accuracy"] == pytest.approx(sum(s.data.metrics["val_accuracy"] for s in own) / count)
        assert (count > 2) == (REASON_TAG in run.data.tags)  # an added seed says why it was added
        for seed in own:  # each seed's own run: per-epoch metrics, figures and model
            assert seed.data.tags["nsde.status"] == "finished" and seed.info.status == "FINISHED"
            assert sorted(m.step for m in client.get_metric_history(seed.info.run_id, "train_loss")) == [1, 2]
            artifacts = {a.path for a in client.list_artifacts(seed.info.run_id)}
            assert {"attributions.png", "sic_curve.png", "ig_saturation.png", "model"} <= artifacts
            assert [a.path for a in client.list_artifacts(seed.info.run_id, "model")] == [f"model/{MODEL_FILE}"]
    references = {(r.data.params["noise_mode"], r.data.params["noise_sigma"]) for r in children}
    assert {("none", "0.0"), ("gaussian", "0.5")} <= references
    assert any(r.data.tags["pareto_front"] == "true" for r in children)
    assert {a.path for a in client.list_artifacts(parent_id)} >= {FRONT_CSV, FRONT_HTML, FRONT_PNG}
    assert client.get_metric_history(parent_id, "hypervolume")[-1].step == 3
    assert "pareto_probability" in output and " ± " in output and "noise floors" in output
    assert "note: adaptive seeds: every configuration started with 2" in output
    header = next(line for line in output.splitlines() if "pareto_probability" in line and "noise_mode" in line)
    assert "  seeds  " in header  # how many seeds each configuration got; the notes say why

    # Each seed run holds its own model (the configuration's run holds the seeds' means, no model). It loads back
    # without unpickling code and predicts like the seed run's logged val_accuracy says: the final epoch's, measured
    # by the training loop as here (eval mode, so no noise; CPU without autocast; batches of 2 * batch_size in the
    # split's order), so the count of correct images is the same, not just close.
    assert all("model" not in {a.path for a in client.list_artifacts(r.info.run_id)} for r in children)
    for seed in seeds:
        bundle = load_model(client.download_artifacts(seed.info.run_id, "model", str(tmp_path / seed.info.run_id)))
        model, cfg = bundle.model, bundle.config
        assert cfg.data.dataset == "digits" and not model.training
        assert cfg.train.seed == int(seed.data.params["seed"])
        val = build_datasets(cfg.data).val
        correct = 0
        with torch.no_grad():
            for images, labels in DataLoader(val, batch_size=2 * cfg.train.batch_size):
                correct += int((model(images).argmax(dim=1) == labels).sum())
        assert correct / len(val) == seed.data.metrics["val_accuracy"]


def test_resume_after_sigkill_trains_every_seed_exactly_once(tmp_path):
    """Killed once a seed has finished (its configuration still has one to go), then again while an adaptive seed
    trains: each resume trains only the unfinished seeds, and every (configuration, seed) ends with exactly one
    finished run. The band 0 to 1 makes every configuration undecided, so the budget (7 seed runs: 3 x 2 and one
    more) buys exactly one added seed."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--smoke-test", "--storage", str(tmp_path / "ray"), "--name", "resumable", "--tracking-uri", uri]
    flags += ["--seeds-per-config", "auto", "--undecided-band", "0", "1", "--max-seeds", "3", "--seed-budget", "7"]
    client = mlflow.MlflowClient(uri)

    def kill_once(log: str, condition, what: str) -> dict:
        process = start_sweep(flags + (["--resume"] if log != "first.log" else []), tmp_path, log)
        try:
            wait_until(condition, process, tmp_path / log, 900, what, poll=2)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        return {r.info.run_id: r for r in seed_runs(uri, "resumable")}

    def finished(runs: dict) -> dict:
        return {k: r for k, r in runs.items() if r.data.tags["nsde.status"] == "finished"}

    before = kill_once(
        "first.log",
        lambda: any(r.data.tags.get("nsde.status") == "finished" for r in seed_runs(uri, "resumable")),
        "a finished seed",
    )
    assert finished(before) and len(before) < 6
    added = kill_once(
        "resume.log",
        lambda: any(r.data.tags.get("nsde.seed_index") == "2" for r in seed_runs(uri, "resumable")),
        "an added seed started",
    )
    added_run = next(k for k, r in added.items() if r.data.tags["nsde.seed_index"] == "2")
    assert added[added_run].data.tags["nsde.status"] != "finished" and len(finished(added)) == 6

    output = finish_sweep(start_sweep(flags + ["--resume"], tmp_path, "again.log"), tmp_path, "again.log", 1200)
    assert "3 trials, 3 evaluated, 0 failed" in output and "7 of 7 seed runs spent" in output
    trials = trial_runs(uri, "resumable")
    assert len(trials) == 3 and len({r.data.tags["nsde.trial_id"] for r in trials}) == 3  # no configuration twice
    after = seed_runs(uri, "resumable")
    keys = [(r.data.tags["mlflow.parentRunId"], r.data.tags["nsde.seed_index"]) for r in after]
    assert len(after) == 7 and len(set(keys)) == 7  # every seed of every configuration, once
    assert set(before) | set(added) <= {r.info.run_id for r in after}  # runs started before a kill are kept
    for run_id, run in {**finished(before), **finished(added)}.items():
        now = client.get_run(run_id)
        assert now.info.end_time == run.info.end_time  # not trained again
        assert len(client.get_metric_history(run_id, "train_loss")) == 2
    assert all(r.data.tags["nsde.status"] == "finished" for r in after + trials)
    grown = next(r for r in trials if r.info.run_id == added[added_run].data.tags["mlflow.parentRunId"])
    assert grown.data.metrics["seeds"] == 3 and REASON_TAG in grown.data.tags
    own = [r for r in after if r.data.tags["mlflow.parentRunId"] == grown.info.run_id]
    assert grown.data.metrics["val_accuracy"] == pytest.approx(sum(r.data.metrics["val_accuracy"] for r in own) / 3)


def test_node_loss_mid_trial_retries_from_the_checkpoint(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = [
        "--num-samples",
        "2",
        "--seeds-per-config",
        "1",
        "--epochs",
        "4",
        "--eval-images",
        "16",
        "--storage",
        str(tmp_path / "ray"),
        "--name",
        "nodeloss",
        "--tracking-uri",
        uri,
        "--address",
        cluster.address,
    ]
    process = start_sweep(flags, tmp_path, "nodeloss.log")
    client = mlflow.MlflowClient(uri)

    def one_epoch_done():
        return [
            r
            for r in trial_runs(uri, "nodeloss")
            if r.data.tags.get("nsde.train_nodes")
            and len(client.get_metric_history(r.info.run_id, "epoch")) >= 1
            and r.data.tags.get("nsde.status") == "running"
        ]

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
