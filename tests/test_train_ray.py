"""Real Ray Train runs on a local Ray: DDP on digits, recovery from a killed worker, divergence."""

import glob
import os
import signal
import threading
import time

import psutil
import pytest
import torch

from nsde_ray.config import NoiseConfig, TrainConfig, TrialConfig
from nsde_ray.train import build_trainer, load_checkpoint

pytestmark = pytest.mark.slow


def test_digits_with_two_ddp_workers_reaches_90_percent(local_ray, tmp_path):
    cfg = TrialConfig(noise=NoiseConfig("gaussian", 0.5), train=TrainConfig(epochs=8, num_workers=2))
    result = build_trainer(cfg, name="digits_ddp", storage_path=str(tmp_path)).fit()
    assert result.error is None
    assert result.metrics["epoch"] == 8 and not result.metrics["diverged"]
    assert result.metrics["val_accuracy"] >= 0.90
    assert result.metrics["train_loss"] < 0.5 and result.metrics["train_time_s"] > 0
    with result.checkpoint.as_directory() as checkpoint_dir:
        state = load_checkpoint(checkpoint_dir)
    assert state["epoch"] == 8 and TrialConfig.from_dict(state["config"]) == cfg
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _train_workers() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in (process.info["cmdline"] or [])):
            found.append(process)
    return found


@pytest.mark.parametrize("noise_mode", ["gaussian", "attribution"])
def test_killed_worker_resumes_from_the_last_checkpoint(local_ray, tmp_path, noise_mode):
    """For attribution noise the kill lands between refreshes (epochs 1, 3, 5): maps come back from the checkpoint."""
    cfg = TrialConfig(noise=NoiseConfig(noise_mode, 0.5), train=TrainConfig(epochs=6, num_workers=2, max_failures=2))
    trainer = build_trainer(cfg, name="killed", storage_path=str(tmp_path))
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except Exception as err:  # surfaced by the assertion below
            outcome["error"] = err

    runner = threading.Thread(target=fit)
    runner.start()
    deadline = time.monotonic() + 240
    # Two checkpoint folders: the first one's report has surely reached the controller by then.
    while len(glob.glob(str(tmp_path / "killed" / "checkpoint_*"))) < 2:
        assert time.monotonic() < deadline and runner.is_alive(), "no checkpoint was written"
        time.sleep(0.2)
    workers = _train_workers()
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.error is None
    assert result.metrics["epoch"] == 6 and not result.metrics["diverged"]
    assert result.metrics["resumed_from_epoch"] >= 1  # the restarted group continued, it did not start over
    assert result.metrics["val_accuracy"] >= 0.85
    assert (result.metrics["shaping_time_s"] > 0) == (noise_mode == "attribution")


def test_non_finite_loss_ends_the_run_cleanly(local_ray, tmp_path):
    cfg = TrialConfig(train=TrainConfig(epochs=4, lr=1e30, momentum=0.0, weight_decay=0.0))
    result = build_trainer(cfg, name="diverged", storage_path=str(tmp_path)).fit()
    assert result.error is None
    assert result.metrics["diverged"] and result.metrics["epoch"] < 4
