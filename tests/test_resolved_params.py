"""The data values a trial resolves (image size, recipe, normalisation) are logged as params of its runs.

:func:`nsde_ray.trial.run_trial` runs without Ray: Tune's context and report and the training of a seed
(:func:`nsde_ray.trial.run_seed`) are stubbed, and the runs go to a SQLite MLflow store.
"""

from types import SimpleNamespace

import pytest
from helpers import write_images

from nsde_ray import trial
from nsde_ray.config import DataConfig, TrialConfig
from nsde_ray.data import build_datasets
from nsde_ray.lifecycle import SweepError
from nsde_ray.tracking import SweepTracker

RESOLVED = ("resolved_image_size", "resolved_recipe", "resolved_augmentation", "resolved_mean", "resolved_std")


@pytest.fixture
def tracker(tmp_path):
    return SweepTracker.start(f"sqlite:///{tmp_path}/mlflow.db", "exp", "sweep1", {})


@pytest.fixture
def no_ray(monkeypatch):
    """Tune's context and report stubbed; each seed "trains" by ``no_ray.train`` (a finished run by default)."""
    stub = SimpleNamespace(train=lambda *args: ("finished", {}))
    context = SimpleNamespace(get_trial_id=lambda: "t1")
    monkeypatch.setattr(trial, "tune", SimpleNamespace(get_context=lambda: context, report=lambda metrics: None))
    monkeypatch.setattr(trial, "run_seed", lambda *args: stub.train(*args))
    return stub


def image_folder(root) -> DataConfig:
    """An image folder of 40x30 (height x width) images, two classes, train and val."""
    for split in ("train", "val"):
        for label, colour in enumerate((40, 200)):
            write_images(root / split / f"class{label}", 3, colour)
    return DataConfig(dataset="imagefolder", data_dir=str(root))


def run(tracker, data: DataConfig, seeds: int) -> None:
    """run_trial of the default trial on ``data`` with ``seeds`` seeds per configuration."""
    base = TrialConfig(data=data).to_dict()
    trial.run_trial({}, base, "unused", tracker.describe(), 1, seeds)


def logged(tracker) -> list[dict[str, str]]:
    """The params of every run under the sweep (the configuration's and its seeds'), configuration first."""
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`nsde.role` != 'sweep'")
    return [run.data.params for run in sorted(runs, key=lambda run: run.info.run_name)]


def channels(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


def assert_resolved_as_built(params: dict[str, str], data: DataConfig, recipe: str) -> None:
    """The run's resolved params are the values build_datasets trains with."""
    splits = build_datasets(data)
    assert params["resolved_image_size"] == str(splits.image_size)
    assert params["resolved_augmentation"] == splits.augmentation
    assert params["resolved_recipe"] == recipe
    assert channels(params["resolved_mean"]) == pytest.approx(splits.mean, rel=1e-5)
    assert channels(params["resolved_std"]) == pytest.approx(splits.std, rel=1e-5)


def test_digits_runs_log_32_px_without_augmentation_and_their_train_statistics(tracker, no_ray):
    data = DataConfig()
    run(tracker, data, seeds=2)
    runs = logged(tracker)
    assert len(runs) == 3  # the configuration and its two seeds
    for params in runs:
        assert params["image_size"] == "None" and params["augmentation"] == "auto"  # as requested
        assert params["resolved_image_size"] == "32" and params["resolved_augmentation"] == "none"
        assert_resolved_as_built(params, data, recipe="none")


def test_a_folder_of_small_images_logs_its_own_side_and_the_cifar_recipe(tracker, no_ray, tmp_path):
    data = image_folder(tmp_path / "images")
    run(tracker, data, seeds=1)
    (params,) = logged(tracker)
    assert params["resolved_image_size"] == "30" and params["resolved_augmentation"] == "cifar"
    assert_resolved_as_built(params, data, recipe="cifar")


def test_a_resumed_trial_reopens_its_runs_without_logging_params_again(tracker, no_ray, tmp_path):
    """Params cannot change: images replaced between attempts resolve another size, and the runs keep the first."""
    data = image_folder(tmp_path / "images")
    attempts = []

    def killed_in_the_second_seed(*args):
        attempts.append(args)
        if len(attempts) == 2:
            raise SweepError("killed")
        return "finished", {}

    no_ray.train = killed_in_the_second_seed
    with pytest.raises(SweepError):
        run(tracker, data, seeds=2)
    for label in (0, 1):
        for path in (tmp_path / "images" / "train" / f"class{label}").iterdir():
            path.unlink()
        (tmp_path / "images" / "train" / f"class{label}").rmdir()
        write_images(tmp_path / "images" / "train" / f"class{label}", 3, 100, size=(20, 20))
    assert trial.resolved_params(data)["resolved_image_size"] == 20
    run(tracker, data, seeds=2)
    runs = logged(tracker)
    assert len(runs) == 3 and all(params["resolved_image_size"] == "30" for params in runs)
    assert all(set(RESOLVED) <= set(params) for params in runs)
