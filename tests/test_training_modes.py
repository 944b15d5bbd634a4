"""The training loop's modes: the robust-training baselines as the loop runs them, and repeatable shaped training."""

import dataclasses

import pytest
import torch

from nsde_ray import robust_training
from nsde_ray.config import DataConfig, NoiseConfig, ShapingConfig, TrainConfig, TrialConfig
from nsde_ray.train import fit_single_worker, load_checkpoint

CFG = TrialConfig(
    noise=NoiseConfig("none", 0.0),
    data=DataConfig(dataset="synthetic", synthetic_samples=160),
    train=TrainConfig(epochs=2, batch_size=16),
)


def _weights(outcome) -> dict[str, torch.Tensor]:
    with outcome.checkpoint.as_directory() as folder:
        return load_checkpoint(folder)["model"]


def _with_noise(**noise) -> TrialConfig:
    return dataclasses.replace(CFG, noise=NoiseConfig(**noise))


def _same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_fgsm_at_radius_0_and_the_penalty_at_weight_0_are_plain_training(tmp_path):
    plain = fit_single_worker(CFG, name="plain", storage_path=str(tmp_path))
    fgsm = fit_single_worker(
        _with_noise(mode="fgsm", sigma=0.0, fgsm_epsilon=0.0), name="fgsm", storage_path=str(tmp_path)
    )
    gradreg = fit_single_worker(
        _with_noise(mode="gradreg", sigma=0.0, gradreg_weight=0.0), name="gradreg", storage_path=str(tmp_path)
    )
    assert _same(_weights(fgsm), _weights(plain)) and _same(_weights(gradreg), _weights(plain))
    assert fgsm.metrics["noise_energy"] == gradreg.metrics["noise_energy"] == 0.0


def test_the_baselines_train_a_different_model_than_plain_training(tmp_path):
    plain = _weights(fit_single_worker(CFG, name="plain", storage_path=str(tmp_path)))
    for name, cfg in {
        "fgsm": _with_noise(mode="fgsm", sigma=0.0, fgsm_epsilon=0.03, fgsm_step=0.0375),
        "gradreg": _with_noise(mode="gradreg", sigma=0.0, gradreg_weight=1.0),
    }.items():
        outcome = fit_single_worker(cfg, name=name, storage_path=str(tmp_path))
        assert [m["epoch"] for m in outcome.reports] == [1, 2], name
        assert torch.isfinite(torch.tensor(outcome.metrics["train_loss"])) and 0 <= outcome.metrics["val_accuracy"] <= 1
        assert not _same(_weights(outcome), plain), name


def test_fgsm_stops_at_catastrophic_overfitting_with_the_last_weights_that_passed(tmp_path, monkeypatch):
    checks = []

    def collapse_at_epoch_3(self, model, images, labels, autocast=None):
        checks.append(len(images))
        return len(checks) == 3

    monkeypatch.setattr(robust_training.OverfitGuard, "check", collapse_at_epoch_3)
    cfg = dataclasses.replace(
        _with_noise(mode="fgsm", sigma=0.0, fgsm_epsilon=0.03), train=dataclasses.replace(CFG.train, epochs=4)
    )
    outcome = fit_single_worker(cfg, name="fgsm", storage_path=str(tmp_path))
    assert [m["epoch"] for m in outcome.reports] == [1, 2, 3]
    last = outcome.reports[-1]
    assert last["fgsm_collapsed_epoch"] == 3 and last["val_accuracy"] == outcome.reports[1]["val_accuracy"]
    with outcome.checkpoint.as_directory() as folder:
        state = load_checkpoint(folder)
    assert state["stopped"] and state["epoch"] == 3
    # a restore ends at the stopped run instead of training on from the collapsed epoch
    again = fit_single_worker(cfg, name="fgsm", storage_path=str(tmp_path))
    assert len(checks) == 3 and again.metrics["fgsm_collapsed_epoch"] == 3


@pytest.mark.parametrize("method", ["ig", "training_gradient"])
def test_shaped_training_with_one_seed_gives_one_model(method, tmp_path):
    """Shaping maps come from the model itself; a repeated run of the same seed must not drift from the first."""
    cfg = dataclasses.replace(
        CFG,
        noise=NoiseConfig("attribution", 0.5),
        shaping=ShapingConfig(method=method, warmup_epochs=1, refresh_every=1),
        train=dataclasses.replace(CFG.train, epochs=3),
    )
    first = fit_single_worker(cfg, name="first", storage_path=str(tmp_path))
    second = fit_single_worker(cfg, name="second", storage_path=str(tmp_path))
    assert [m["noise_energy_epoch"] < 1.0 for m in first.reports] == [False, True, True]  # shaped from epoch 2
    assert _same(_weights(first), _weights(second))
    assert [m["val_accuracy"] for m in first.reports] == [m["val_accuracy"] for m in second.reports]
