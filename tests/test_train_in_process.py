"""A one-worker run in this process (fit_single_worker): checkpoints in the run's storage, resumed after a crash."""

import dataclasses
import os

import pytest
import torch

from nsde_ray.config import DataConfig, NoiseConfig, ShapingConfig, TrainConfig, TrialConfig
from nsde_ray.storage import CheckpointStore
from nsde_ray.train import fit_single_worker, last_checkpoint, load_checkpoint

CFG = TrialConfig(
    noise=NoiseConfig("gaussian", 0.5),
    data=DataConfig(dataset="synthetic", synthetic_samples=160),
    train=TrainConfig(epochs=3, batch_size=16),
)


class Crash(RuntimeError):
    pass


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    with checkpoint.as_directory() as folder:
        return load_checkpoint(folder)["model"]


# Gaussian noise, and shaping from training gradients, whose maps can only come back from the checkpoint
SHAPED = dataclasses.replace(
    CFG, noise=NoiseConfig("attribution", 0.5), shaping=ShapingConfig(method="training_gradient", warmup_epochs=1)
)


@pytest.mark.parametrize("cfg", [CFG, SHAPED], ids=["gaussian", "training_gradient"])
def test_a_run_resumed_after_a_crash_ends_as_the_uninterrupted_run(cfg, tmp_path):
    straight = fit_single_worker(cfg, name="straight", storage_path=str(tmp_path))
    assert [m["epoch"] for m in straight.reports] == [1, 2, 3] and straight.metrics["resumed_from_epoch"] == 0
    if cfg is SHAPED:  # shaped noise from epoch 2, from the maps of epoch 1's gradients
        assert [m["noise_energy_epoch"] < 0.5 for m in straight.reports] == [False, True, True]

    def crash_after_two(metrics):
        if metrics["epoch"] == 2:  # after the epoch's checkpoint is written, as a kill would land
            raise Crash

    with pytest.raises(Crash):
        fit_single_worker(cfg, name="crashed", storage_path=str(tmp_path), on_report=crash_after_two)
    seen = []
    resumed = fit_single_worker(cfg, name="crashed", storage_path=str(tmp_path), on_report=seen.append)
    assert [m["epoch"] for m in seen] == [3] and resumed.metrics["resumed_from_epoch"] == 2
    for key in ("train_loss", "val_loss", "val_accuracy", "noise_energy"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], rel=1e-5, abs=1e-7)
    ours, theirs = _weights(resumed.checkpoint), _weights(straight.checkpoint)
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-5) for k in ours)

    # the newest two are kept; a finished run trains nothing and returns its last report and checkpoint
    assert sorted(os.listdir(tmp_path / "crashed")) == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]
    again = fit_single_worker(cfg, name="crashed", storage_path=str(tmp_path), on_report=seen.append)
    assert len(seen) == 1 and again.metrics == resumed.metrics and again.checkpoint.path == resumed.checkpoint.path
    assert last_checkpoint(str(tmp_path), "crashed").path == resumed.checkpoint.path


def test_a_checkpoint_cut_off_mid_write_is_never_the_latest(tmp_path):
    store = CheckpointStore(str(tmp_path), "run")
    assert store.latest() is None and store.latest_metrics() == {}
    store.save({"epoch": 1}, {"epoch": 1, "val_accuracy": 0.5})
    cut_off = tmp_path / "run" / "checkpoint_epoch_000002"  # a crash after the weights, before the metrics
    cut_off.mkdir()
    torch.save({"epoch": 2}, cut_off / "checkpoint.pt")
    assert store.latest().path.endswith("checkpoint_epoch_000001")
    assert store.latest_metrics() == {"epoch": 1, "val_accuracy": 0.5}
    store.save({"epoch": 2}, {"epoch": 2, "val_accuracy": 0.6})  # the resumed epoch writes it anew
    store.save({"epoch": 3}, {"epoch": 3, "val_accuracy": 0.7})
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint_epoch_000002", "checkpoint_epoch_000003"]
    assert store.latest_metrics()["val_accuracy"] == 0.7


def test_checkpoints_on_a_file_system_that_is_not_local():
    """Object stores publish whole files and cannot rename folders: pyarrow's in-memory test file system."""
    from pyarrow._fs import _MockFileSystem

    store = CheckpointStore("bucket/sweeps", "run", filesystem=_MockFileSystem())
    for epoch in (1, 2, 3):
        checkpoint = store.save({"epoch": epoch, "weights": torch.ones(2) * epoch}, {"epoch": epoch})
    assert checkpoint.path == "bucket/sweeps/run/checkpoint_epoch_000003" and store.latest_metrics() == {"epoch": 3}
    with checkpoint.as_directory() as folder:  # downloaded by Ray's Checkpoint
        assert torch.equal(load_checkpoint(folder)["weights"], torch.full((2,), 3.0))
    assert [epoch for epoch, _ in store._checkpoints()] == [2, 3]


def test_only_one_worker_trains_in_process_and_a_run_without_checkpoints_is_named(tmp_path):
    two = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, num_workers=2))
    assert CFG.train.in_trial_process and not two.train.in_trial_process
    assert not dataclasses.replace(CFG.train, single_process=False).in_trial_process
    with pytest.raises(ValueError, match="one worker"):
        fit_single_worker(two, name="two", storage_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'none'"):
        last_checkpoint(str(tmp_path), "none")
