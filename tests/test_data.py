"""Data sets: the digits default, synthetic data, on-disk layouts and their error messages."""

import pytest
import torch
from helpers import write_images

from nsde_ray.augment import IDENTITY_PARAMS, RandomCropFlip
from nsde_ray.config import ConfigError, DataConfig
from nsde_ray.data import (
    CIFAR_MEAN,
    IMAGENET_MEAN,
    DataError,
    IndexedDataset,
    build_datasets,
    check_data,
    loader_processes,
)


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


def _folder(root, size):
    for split in ("train", "val"):
        write_images(root / split / "cat", 3, 10, size=size)
        write_images(root / split / "dog", 2, 200, size=size)
    return str(root)


def test_a_folder_of_small_images_trains_at_its_own_size_with_the_cifar_recipe(tmp_path):
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=_folder(tmp_path, (32, 32))))
    assert splits.image_size == 32 and splits.augmentation == "cifar" and splits.mean == CIFAR_MEAN
    transform = splits.train.transform
    assert isinstance(transform, RandomCropFlip) and transform.recipe == "cifar" and transform.padding == 4
    torch.manual_seed(0)
    draws = [splits.train[0][0] for _ in range(40)]
    assert all(image.shape == (3, 32, 32) for image, _ in draws)
    params = torch.stack([p for _, p in draws])  # (top, left, height, width, flip), fractions of the 32 px view
    assert (params[:, 2:4] == 1.0).all()  # pad-and-crop: never rescaled, unlike RandomResizedCrop
    offsets = params[:, :2] * 32
    assert torch.equal(offsets, offsets.round()) and offsets.abs().max() <= 4 and offsets.abs().max() > 0
    assert set(params[:, 4].tolist()) == {0.0, 1.0}
    assert splits.val[0][0].shape == splits.train_unaugmented[0][0].shape == (3, 32, 32)


def test_a_folder_of_large_images_keeps_the_imagenet_recipe(tmp_path):
    splits = build_datasets(DataConfig(dataset="imagefolder", data_dir=_folder(tmp_path, (100, 80))))
    assert splits.image_size == 224 and splits.augmentation == "imagenet" and splits.mean == IMAGENET_MEAN
    (image, params), _ = splits.train[0]
    assert image.shape == (3, 224, 224) and splits.val[0][0].shape == (3, 224, 224)


def test_the_augmentation_can_be_overridden(tmp_path):
    root = _folder(tmp_path, (32, 32))
    resized = build_datasets(DataConfig(dataset="imagefolder", data_dir=root, augmentation="imagenet"))
    assert resized.augmentation == "imagenet" and resized.image_size == 32 and resized.mean == IMAGENET_MEAN
    torch.manual_seed(0)
    boxes = torch.stack([resized.train[0][0][1] for _ in range(20)])
    assert resized.train[0][0][0].shape == (3, 32, 32) and boxes[:, 2].std() > 0  # RandomResizedCrop: varied scales
    plain = build_datasets(DataConfig(dataset="imagefolder", data_dir=root, augmentation="none", image_size=16))
    assert plain.augmentation == "none" and plain.mean == CIFAR_MEAN
    image, label, index, params = IndexedDataset(plain.train)[1]
    assert image.shape == (3, 16, 16) and index == 1 and torch.equal(params, IDENTITY_PARAMS)
    assert torch.equal(image, plain.train_unaugmented[1][0])


def test_augmentation_is_validated():
    with pytest.raises(ConfigError, match="augmentation='crop' is not valid; choose one of: auto, cifar"):
        DataConfig(dataset="imagefolder", data_dir="x", augmentation="crop")
    with pytest.raises(ConfigError, match="applies to images read from disk.*leave augmentation at 'auto'"):
        DataConfig(dataset="digits", augmentation="cifar")
    assert DataConfig(augmentation="none").augmentation == "none"


@pytest.mark.parametrize(
    "make_layout, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: write_images(root / "train" / "cat", 1, 0), "val'? is missing"),
        (lambda root: ((root / "train").mkdir(parents=True), (root / "val").mkdir()), "has no class folders"),
        (
            lambda root: (write_images(root / "train" / "cat", 1, 0), write_images(root / "val" / "dog", 1, 0)),
            "different class folders",
        ),
    ],
)
def test_image_folder_errors_name_the_layout(tmp_path, make_layout, message):
    root = tmp_path / "data"
    make_layout(root)
    with pytest.raises(DataError, match=message) as info:
        build_datasets(DataConfig(dataset="imagenet", data_dir=str(root)))
    assert "train/<class>/<image>" in str(info.value)


def test_images_read_from_disk_decode_in_every_reserved_core_but_one():
    assert loader_processes("imagenet", cpus_per_worker=8) == 7 and loader_processes("cifar10", 1) == 0
    assert loader_processes("digits", cpus_per_worker=8) == 0  # in-memory tensors: indexed in-process


def _class_folders(root, classes=("cat", "dog"), n=2):
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            write_images(root / split / name, n, 60 * k)


def test_a_corrupt_image_is_refused_naming_the_file(tmp_path):
    _class_folders(tmp_path)
    (tmp_path / "val" / "dog" / "x.jpg").write_bytes(b"\x13\x37\xbe\xef\x00\x42")
    with pytest.raises(DataError, match=r"1 of 5 images checked in .*val.* cannot be decoded: .*dog/x\.jpg"):
        check_data(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))


def test_a_class_folder_without_images_is_refused_naming_the_folder(tmp_path):
    _class_folders(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "train" / "bird" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder\(s\) in .*train.* hold no images.*train/bird"):
        check_data(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)))


def test_large_splits_decode_a_seeded_sample(tmp_path, monkeypatch):
    import nsde_ray.data as data

    _class_folders(tmp_path, classes=("a", "b", "c"), n=4)
    monkeypatch.setattr(data, "DECODE_ALL", 5)
    monkeypatch.setattr(data, "DECODE_SAMPLE", 3)
    decoded = []
    monkeypatch.setattr(data, "_bad_image", lambda path: decoded.append(path))
    data.check_images(str(tmp_path / "train"), seed=1)
    first = list(decoded)
    decoded.clear()
    data.check_images(str(tmp_path / "train"), seed=1)
    assert len(first) == 3 and decoded == first  # 3 of the 12, the same 3 for the same seed
