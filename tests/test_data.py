"""Data sets: the digits default, synthetic data, on-disk layouts and their error messages."""

import pytest
import torch

from helpers import write_images
from nsde_ray.config import DataConfig
from nsde_ray.data import DataError, build_datasets, check_data, loader_processes


def test_digits_is_a_seeded_stratified_split_upsampled_to_32px():
    splits = build_datasets(DataConfig())
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797 and sizes[1] == pytest.approx(0.15 * 1797, abs=2)
    image, label = splits.train[0]
    assert image.shape == (1, 32, 32) and splits.num_classes == 10 and splits.in_channels == 1
    train_images = splits.train.tensors[0]
    assert train_images.mean().abs() < 1e-4 and train_images.std() == pytest.approx(1.0, abs=1e-3)
    assert set(splits.test.tensors[1].tolist()) == set(range(10))
    again = build_datasets(DataConfig())
    assert torch.equal(again.val.tensors[0], splits.val.tensors[0])
    other = build_datasets(DataConfig(split_seed=1))
    assert not torch.equal(other.val.tensors[1], splits.val.tensors[1])
    pixels = train_images * torch.tensor(splits.std).view(1, -1, 1, 1) + torch.tensor(splits.mean).view(1, -1, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_synthetic_data_has_the_requested_shape():
    splits = build_datasets(DataConfig(dataset="synthetic", synthetic_samples=120, synthetic_classes=3, image_size=16))
    assert splits.train[0][0].shape == (3, 16, 16) and splits.num_classes == 3
    assert len(splits.train) + len(splits.val) + len(splits.test) == 120


def test_missing_cifar_names_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*--download"):
        build_datasets(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="does not exist"):
        check_data(DataConfig(dataset="cifar100", data_dir=str(tmp_path / "nope"), download=True))


def test_image_folder_layout(tmp_path):
    for split in ("train", "val"):
        write_images(tmp_path / split / "cat", 3, 10)
        write_images(tmp_path / split / "dog", 2, 200)
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=str(tmp_path), image_size=32))
    assert splits.class_names == ["cat", "dog"] and len(splits.train) == 5 and splits.test is splits.val
    assert splits.val[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("make_layout, message", [
    (lambda root: None, "does not exist"),
    (lambda root: write_images(root / "train" / "cat", 1, 0), "val'? is missing"),
    (lambda root: ((root / "train").mkdir(parents=True), (root / "val").mkdir()), "has no class folders"),
    (lambda root: (write_images(root / "train" / "cat", 1, 0), write_images(root / "val" / "dog", 1, 0)),
     "different class folders"),
])
def test_image_folder_errors_name_the_layout(tmp_path, make_layout, message):
    root = tmp_path / "data"
    make_layout(root)
    with pytest.raises(DataError, match=message) as info:
        build_datasets(DataConfig(dataset="imagenet", data_dir=str(root)))
    assert "train/<class>/<image>" in str(info.value)


def test_images_read_from_disk_decode_in_every_reserved_core_but_one():
    assert loader_processes("imagenet", cpus_per_worker=8) == 7 and loader_processes("cifar10", 1) == 0
    assert loader_processes("digits", cpus_per_worker=8) == 0  # in-memory tensors: indexed in-process
