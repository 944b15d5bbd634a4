"""Real Ray Train runs on a local Ray: DDP on digits, recovery from a killed worker, divergence."""

import glob
import os
import signal
import threading
import time

import psutil
import pytest
import torch
from helpers import write_images

from nsde_ray.config import DataConfig, NoiseConfig, ShapingConfig, TrainConfig, TrialConfig
from nsde_ray.train import build_trainer, fit_single_worker, load_checkpoint

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


@pytest.mark.parametrize(
    "noise", [NoiseConfig("gaussian", 0.5), NoiseConfig("attribution", 0.5)], ids=["gaussian", "shaped"]
)
def test_one_worker_trains_the_same_in_process_as_under_a_torch_trainer(noise, local_ray, tmp_path):
    """The sweep's default path (a one-worker trial trains in its own process) is the TorchTrainer's run; shaped
    training too, whose maps come from the model being trained (warm-up 1 epoch, then an IG refresh)."""
    cfg = TrialConfig(noise=noise, shaping=ShapingConfig(warmup_epochs=1, refresh_every=1), train=TrainConfig(epochs=2))
    result = build_trainer(cfg, name="trainer", storage_path=str(tmp_path)).fit()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer's one-CPU worker
    try:
        outcome = fit_single_worker(cfg, name="in_process", storage_path=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "noise_energy"):
        assert outcome.metrics[key] == pytest.approx(result.metrics[key], rel=1e-4), key
    with result.checkpoint.as_directory() as trainer_dir, outcome.checkpoint.as_directory() as own_dir:
        theirs, ours = load_checkpoint(trainer_dir), load_checkpoint(own_dir)
    assert ours.keys() == theirs.keys() and ours["config"] == theirs["config"]
    assert all(torch.allclose(ours["model"][k].float(), theirs["model"][k].float(), atol=1e-4) for k in ours["model"])

    # a run begun under a TorchTrainer (a sweep from before, resumed) continues in process from its checkpoint
    assert fit_single_worker(cfg, name="trainer", storage_path=str(tmp_path)).metrics == result.metrics
    longer = TrialConfig(noise=cfg.noise, train=TrainConfig(epochs=3))
    continued = fit_single_worker(longer, name="trainer", storage_path=str(tmp_path))
    assert continued.metrics["epoch"] == 3 and continued.metrics["resumed_from_epoch"] == 2


def _train_workers() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in (process.info["cmdline"] or [])):
            found.append(process)
    return found


def test_killed_worker_resumes_from_the_last_checkpoint(local_ray, tmp_path):
    """Attribution noise, the superset of Gaussian's state: the kill lands between refreshes (epochs 1, 3, 5),
    so the weights, the optimiser and the noise maps must all come back from the checkpoint."""
    cfg = TrialConfig(noise=NoiseConfig("attribution", 0.5), train=TrainConfig(epochs=6, num_workers=2, max_failures=2))
    trainer = build_trainer(cfg, name="killed", storage_path=str(tmp_path))
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except Exception as err:  # surfaced by the assertion below
            outcome["error"] = err

    others = {w.pid for w in _train_workers()}
    runner = threading.Thread(target=fit)
    runner.start()
    deadline = time.monotonic() + 240
    # Two checkpoint folders: the first one's report has surely reached the controller by then.
    while len(glob.glob(str(tmp_path / "killed" / "checkpoint_*"))) < 2:
        assert time.monotonic() < deadline and runner.is_alive(), "no checkpoint was written"
        time.sleep(0.2)
    workers = [w for w in _train_workers() if w.pid not in others]  # this run's, not another Ray's on the machine
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.error is None
    assert result.metrics["epoch"] == 6 and not result.metrics["diverged"]
    assert result.metrics["resumed_from_epoch"] >= 1  # the restarted group continued, it did not start over
    assert result.metrics["val_accuracy"] >= 0.85
    assert result.metrics["shaping_time_s"] > 0
    # Gaussian warm-up (energy 1) in epoch 1, raw shaped maps after: the average over all 6 epochs, with the
    # sum carried through the restart, holds the warm-up's 1/6; all-reduced over both workers
    assert 1 / 6 < result.metrics["noise_energy"] < 1 and result.metrics["noise_energy_epoch"] < 0.5


@pytest.mark.parametrize("resident_data", ["off", "auto"])
def test_an_image_folder_trains_with_loader_processes_and_shaping(resident_data, local_ray, tmp_path):
    """Images from disk: 2 reserved cores give the training loop and the shaping refresh one DataLoader process
    (``off``), or the one decoding pass of resident data (``auto``). 32 px images train at their own size (no
    image_size given), pad-and-cropped and flipped, and each batch's shaping maps are cropped and flipped with it."""
    for split in ("train", "val"):
        write_images(tmp_path / "data" / split / "dark", 12, 20, size=(32, 32))
        write_images(tmp_path / "data" / split / "light", 12, 230, size=(32, 32))
    cfg = TrialConfig(
        noise=NoiseConfig("attribution", 0.5),
        shaping=ShapingConfig(warmup_epochs=0, refresh_every=1, method="saliency"),
        data=DataConfig(dataset="imagefolder", data_dir=str(tmp_path / "data")),
        train=TrainConfig(epochs=2, batch_size=8, cpus_per_worker=2, resident_data=resident_data),
    )
    result = build_trainer(cfg, name="folder", storage_path=str(tmp_path / "ray")).fit()
    assert result.error is None
    assert result.metrics["epoch"] == 2 and not result.metrics["diverged"] and result.metrics["shaping_time_s"] > 0
    with result.checkpoint.as_directory() as checkpoint_dir:
        assert load_checkpoint(checkpoint_dir)["image_size"] == 32


def test_non_finite_loss_ends_the_run_cleanly(local_ray, tmp_path):
    cfg = TrialConfig(train=TrainConfig(epochs=4, lr=1e30, momentum=0.0, weight_decay=0.0))
    result = build_trainer(cfg, name="diverged", storage_path=str(tmp_path)).fit()
    assert result.error is None
    assert result.metrics["diverged"] and result.metrics["epoch"] < 4


@pytest.mark.parametrize("noise_mode", ["gaussian", "attribution"])
def test_compiled_training_steps_run_and_keep_the_state_dict(noise_mode):
    """TrainConfig.compile: the loop's module is torch.compile'd (CPU here, tiny sizes); weights are shared."""
    from nsde_ray.models import build_model, set_noise_shape_maps
    from nsde_ray.train import build_optimizer, compile_for_training

    torch.manual_seed(0)
    model = build_model("cifar_resnet8", 3, 1, NoiseConfig(noise_mode, 0.5))
    cfg = TrainConfig(compile=True)
    assert compile_for_training(model, TrainConfig()) is model
    compiled = compile_for_training(model, cfg)
    optimizer = build_optimizer(model, cfg)
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    if noise_mode == "attribution":
        set_noise_shape_maps(model, torch.rand(4, 1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(compiled(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and list(model.state_dict()) == list(before)
    assert not torch.equal(model.state_dict()["fc.weight"], before["fc.weight"])
    first, second = compiled(images), compiled(images)
    assert not torch.equal(first, second)  # the noise is still drawn fresh inside the compiled graph
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(images), model(images)
        )  # eval: no noise, same network (Inductor's rounding)
