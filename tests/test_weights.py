"""--init-from: initial weights read as plain tensors, checked before Ray starts, loaded by every worker of a new
run."""

import os

import pytest
import torch
import torchvision
from helpers import assert_usage_error

from nsde_ray import cli, paper_tables
from nsde_ray.config import DataConfig, NoiseConfig, TrainConfig, TrialConfig
from nsde_ray.models import build_model
from nsde_ray.names import CHECKPOINT_FILE
from nsde_ray.weights import WeightsError, load_init_weights, read_weights


def _digits_model(seed: int, num_classes: int = 10, arch: str = "cifar_resnet8") -> torch.nn.Module:
    """A freshly initialised model for digits (1 channel), its weights drawn with ``seed``."""
    torch.manual_seed(seed)
    return build_model(arch, num_classes, 1, NoiseConfig("gaussian", 0.5))


def _same_weights(state: dict, model: torch.nn.Module) -> bool:
    return state.keys() == model.state_dict().keys() and all(
        torch.equal(state[key], value) for key, value in model.state_dict().items()
    )


def test_loading_replaces_every_weight(tmp_path):
    source, target = _digits_model(1), _digits_model(2)
    assert not _same_weights(source.state_dict(), target)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    load_init_weights(str(tmp_path / "w.pt"), target)
    assert _same_weights(source.state_dict(), target)


def test_torchvision_state_dicts_load_unchanged(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "resnet18.pt")
    model = build_model("resnet18", 10, 3, NoiseConfig("gaussian", 0.5))
    load_init_weights(str(tmp_path / "resnet18.pt"), model)
    assert _same_weights(torch.load(tmp_path / "resnet18.pt", weights_only=True), model)


def test_our_checkpoints_load_as_a_directory_or_a_file(tmp_path):
    """A training checkpoint ({"model": ..., "optimizer": ..., "config": ...}) and an exported model, by file or
    folder."""
    weights = _digits_model(1).state_dict()
    for folder, extra in (("trial", {"optimizer": {}, "epoch": 3}), ("export", {"class_names": ["0"], "mean": [0.5]})):
        os.makedirs(tmp_path / folder)
        torch.save({"model": weights, "config": TrialConfig().to_dict(), **extra}, tmp_path / folder / CHECKPOINT_FILE)
        for path in (tmp_path / folder, tmp_path / folder / CHECKPOINT_FILE):
            assert _same_weights(read_weights(str(path)), _digits_model(1))


@pytest.mark.parametrize(
    "content, message",
    [
        (
            lambda: _digits_model(1),
            "cannot be read as plain tensors with torch.load(weights_only=True) (save "
            "model.state_dict(), not the model): WeightsUnpickler error: Unsupported global",
        ),
        (lambda: {"epoch": 2, "diverged": True}, "hold no state dict (it marks a diverged run"),
        (lambda: [1, 2], "hold no state dict: expected {name: tensor}"),
    ],
)
def test_files_that_are_not_plain_weights_are_refused(tmp_path, content, message):
    torch.save(content(), tmp_path / "w.pt")
    with pytest.raises(WeightsError) as error:
        read_weights(str(tmp_path / "w.pt"))
    assert message in str(error.value)
    with pytest.raises(WeightsError, match="not found"):
        read_weights(str(tmp_path / "missing.pt"))


def _run(main, argv, tmp_path):
    return main(argv + ["--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])


def test_matching_weights_pass_the_check_and_the_path_becomes_absolute(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(_digits_model(1).state_dict(), "w.pt")
    args = cli.parse_args(cli.build_parser(), ["--init-from", "w.pt"])
    assert cli.sweep_config_from_args(args, "s", str(tmp_path)).base.train.init_from == str(tmp_path / "w.pt")
    args = cli.parse_args(paper_tables.build_parser(), ["--init-from", "w.pt", "--seeds", "4"])
    assert paper_tables.config_from_args(args, "t", str(tmp_path)).base.train.init_from == str(tmp_path / "w.pt")
    # Through main: past the weights check, up to the tracking server that does not answer; no Ray.
    assert_usage_error(
        cli.main,
        ["--init-from", "w.pt", "--storage", str(tmp_path / "ray"), "--tracking-uri", "http://127.0.0.1:9"],
        "does not answer",
        capsys,
    )


@pytest.mark.parametrize(
    "main, flags, weights, message",
    [
        (
            cli.main,
            [],
            lambda: torchvision.models.resnet18(num_classes=10),
            "(cifar_resnet8 on digits: 10 classes, 1-channel images) do not fit the model: shapes differ: conv1.weight "
            "(64, 3, 7, 7) where the model has (16, 1, 3, 3)",
        ),
        (
            cli.main,
            [],
            lambda: _digits_model(1, num_classes=4),
            "do not fit the model: shapes differ: fc.weight (4, 64) where the model has (10, 64), fc.bias (4,) "
            "where the model has (10,)",
        ),
        (
            paper_tables.main,
            ["--arch", "cifar_resnet8", "cifar_resnet14"],
            lambda: _digits_model(1),
            "(cifar_resnet14 on digits: 10 classes, 1-channel images) do not fit the model: missing keys: "
            "layer1.1.conv1.weight",
        ),
        (
            paper_tables.main,
            ["--set", "data.synthetic_classes=3", "--dataset", "synthetic"],
            lambda: _digits_model(1),
            "(cifar_resnet8 on synthetic: 3 classes, 3-channel images) do not fit the model: shapes differ: "
            "conv1.weight (16, 1, 3, 3) where the model has (16, 3, 3, 3)",
        ),
    ],
)
def test_weights_that_do_not_fit_exit_2_before_ray_starts(main, flags, weights, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(weights().state_dict(), tmp_path / "w.pt")
    assert_usage_error(
        main,
        flags
        + [
            "--init-from",
            str(tmp_path / "w.pt"),
            "--storage",
            str(tmp_path / "ray"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ],
        message,
        capsys,
    )


def test_a_new_run_starts_from_the_weights_and_a_resumed_one_from_its_checkpoint(tmp_path):
    from nsde_ray.train import fit_single_worker, load_checkpoint

    data = DataConfig(dataset="synthetic", synthetic_samples=40, image_size=8)
    first, other = (build_model("cifar_resnet8", 4, 3, NoiseConfig("gaussian", 0.5)) for _ in range(2))
    torch.save(first.state_dict(), tmp_path / "first.pt")
    torch.save(other.state_dict(), tmp_path / "other.pt")
    train_cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-12, init_from=str(tmp_path / "first.pt"))  # lr: no change

    def trained_like(checkpoint, model):
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(folder)
        params = dict(model.named_parameters())
        return all(torch.allclose(state["model"][key], value, atol=1e-6) for key, value in params.items())

    new = fit_single_worker(TrialConfig(data=data, train=train_cfg), name="run", storage_path=str(tmp_path / "ray"))
    assert trained_like(new.checkpoint, first) and not trained_like(new.checkpoint, other)

    resumed = TrainConfig(epochs=2, batch_size=16, lr=1e-12, init_from=str(tmp_path / "other.pt"))
    again = fit_single_worker(TrialConfig(data=data, train=resumed), name="run", storage_path=str(tmp_path / "ray"))
    assert again.metrics["epoch"] == 2 and again.metrics["resumed_from_epoch"] == 1
    assert trained_like(again.checkpoint, first)  # its own checkpoint, not the other initial weights
