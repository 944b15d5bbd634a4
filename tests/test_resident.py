"""Resident training data: torchvision's crops and flips, the DataLoader's batches, resume, and when it stays off."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nsde_ray import resident
from nsde_ray.config import DataConfig, NoiseConfig, ShapingConfig, TrainConfig, TrialConfig
from nsde_ray.data import IndexedDataset, ShardSampler, build_datasets
from nsde_ray.models import build_model
from nsde_ray.resident import ResidentLoader, resident_loader
from nsde_ray.shaping import NoiseShaper
from nsde_ray.train import fit_single_worker, load_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """An image folder of 32 px noise images in 3 classes (24 train, 6 val): the cifar recipe, padding 4."""
    root = tmp_path_factory.mktemp("small_images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for name in ("a", "b", "c"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(root)


def _loader(splits, indices, order, batch_size=5, mode="auto"):
    return resident_loader(
        splits.train_unaugmented,
        splits.augmentation,
        indices,
        order,
        batch_size,
        splits.mean,
        splits.std,
        CPU,
        mode=mode,
    )


def test_crops_and_flips_are_torchvisions_value_for_value(small_images):
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=small_images))
    assert splits.augmentation == "cifar"
    indices = torch.arange(len(splits.train))
    loader = _loader(splits, indices, indices.tolist())
    assert loader.padding == 4
    seen_offsets, seen_flips = set(), set()
    torch.manual_seed(0)
    for index in range(len(splits.train)):
        for _ in range(6):
            (expected, expected_params), _ = splits.train[index]  # torchvision's RandomCropFlip
            top = (expected_params[0:1] * 32 + 4).round().long()
            left = (expected_params[1:2] * 32 + 4).round().long()
            flip = expected_params[4:5] > 0.5
            crops, params = loader.crop_and_flip(loader.images[index : index + 1], top, left, flip)
            assert torch.equal(crops[0], expected) and torch.equal(params[0], expected_params)
            seen_offsets.update(top.tolist() + left.tolist())
            seen_flips.update(flip.tolist())
    assert seen_flips == {False, True} and {0, 8} <= seen_offsets  # the padding's black shows too


def test_an_epoch_visits_the_samplers_order_with_crops_of_each_sample(small_images):
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=small_images))
    sampler = ShardSampler(len(splits.train), rank=1, world_size=2, seed=3)  # half the split, in its own order
    loader = _loader(splits, sampler.indices.unique(), sampler, batch_size=5)
    assert len(loader.images) == len(sampler.indices.unique()) < len(splits.train)
    sampler.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert torch.cat([b[2] for b in batches]).tolist() == list(sampler)
    draws = []
    for images, labels, indices, params in batches:
        assert images.shape == (len(indices), 3, 32, 32) and params.shape == (len(indices), 5)
        for image, label, index, param in zip(images, labels, indices, params):
            view, expected_label = splits.train_unaugmented[int(index)]
            assert int(label) == expected_label
            top, left = int(round(float(param[0]) * 32)) + 4, int(round(float(param[1]) * 32)) + 4
            crop, _ = loader.crop_and_flip(
                view.unsqueeze(0), torch.tensor([top]), torch.tensor([left]), param[4:5] > 0.5
            )
            assert torch.equal(image, crop[0])
            draws.append((top, left))
    assert len(set(draws)) > 1


def test_without_augmentation_the_batches_are_the_dataloaders():
    splits = build_datasets(DataConfig())  # digits: tensors, no augmentation
    sampler = ShardSampler(len(splits.train), rank=0, world_size=1, seed=0)
    loader = _loader(splits, sampler.indices.unique(), sampler, batch_size=64)
    reference = DataLoader(IndexedDataset(splits.train), batch_size=64, sampler=sampler)
    assert len(loader) == len(reference)
    for ours, theirs in zip(loader, reference, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_training_on_resident_digits_equals_training_through_a_dataloader(tmp_path):
    cfg = TrialConfig(noise=NoiseConfig("gaussian", 0.5), train=TrainConfig(epochs=2, batch_size=64))
    runs = {
        mode: fit_single_worker(
            dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resident_data=mode)),
            name=mode,
            storage_path=str(tmp_path),
        )
        for mode in ("auto", "off")
    }
    assert runs["auto"].metrics["val_accuracy"] == runs["off"].metrics["val_accuracy"]
    with runs["auto"].checkpoint.as_directory() as ours, runs["off"].checkpoint.as_directory() as theirs:
        ours, theirs = load_checkpoint(ours)["model"], load_checkpoint(theirs)["model"]
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["training_gradient", "ig"])
def test_a_resident_augmented_run_resumed_after_a_crash_ends_as_the_uninterrupted_run(method, small_images, tmp_path):
    """Crops are drawn in the seeded epoch, so the resumed epoch draws the crops it replaces; shaping maps follow
    them (from training gradients), or come from refreshes over the resident views (IG)."""
    cfg = TrialConfig(
        noise=NoiseConfig("attribution", 0.5),
        shaping=ShapingConfig(method=method, warmup_epochs=1, refresh_every=1, ig_steps=2),
        data=DataConfig(dataset="imagefolder", data_dir=small_images),
        train=TrainConfig(epochs=3, batch_size=8),
    )
    straight = fit_single_worker(cfg, name="straight", storage_path=str(tmp_path))

    def crash_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        fit_single_worker(cfg, name="crashed", storage_path=str(tmp_path), on_report=crash_after_two)
    resumed = fit_single_worker(cfg, name="crashed", storage_path=str(tmp_path))
    assert resumed.metrics["resumed_from_epoch"] == 2
    for key in ("train_loss", "val_loss", "val_accuracy", "noise_energy"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], rel=1e-5, abs=1e-7)


def test_it_stays_off_when_asked_for_a_recipe_it_cannot_batch_or_memory_it_would_crowd(small_images, monkeypatch):
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=small_images))
    indices = torch.arange(len(splits.train))
    assert isinstance(_loader(splits, indices, indices.tolist()), ResidentLoader)
    assert _loader(splits, indices, indices.tolist(), mode="off") is None
    assert (
        resident_loader(
            splits.train_unaugmented, "imagenet", indices, indices.tolist(), 5, splits.mean, splits.std, CPU
        )
        is None
    )  # RandomResizedCrop is left to the DataLoader
    needed = len(indices) * 3 * 32 * 32 * 4
    monkeypatch.setattr(resident, "free_memory", lambda device: int(needed / resident.MEMORY_SHARE) - 1)
    assert _loader(splits, indices, indices.tolist()) is None
    monkeypatch.setattr(resident, "free_memory", lambda device: int(needed / resident.MEMORY_SHARE) + 1)
    assert isinstance(_loader(splits, indices, indices.tolist()), ResidentLoader)


def test_shaping_refreshes_read_the_resident_views_as_they_read_the_data_set(small_images):
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=small_images))
    shard = torch.tensor([7, 3, 20, 11, 0, 15, 3])  # a shard as ShardSampler deals it: any order, wrapped repeats
    loader = _loader(splits, shard.unique(), shard.tolist())
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", splits.num_classes, 3, NoiseConfig("gaussian", 0.5)).eval()
    cfg = ShapingConfig(method="ig", ig_steps=2, batch_size=4)
    maps = {}
    for name, source in (("resident", loader), ("data set", None)):
        shaper = NoiseShaper(cfg, splits.train_unaugmented, shard, 2, CPU, resident=source)
        shaper.refresh(model, 0)
        maps[name] = shaper.maps
    assert maps["resident"].shape == (6, 1, 32, 32) and torch.equal(maps["resident"], maps["data set"])
