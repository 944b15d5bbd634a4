"""Data sets: train / val / test splits of images (C, H, W), normalised, with integer labels.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped with the package, no
  download), upsampled bilinearly to 32x32 so that blur-based SIC, perturbation radii and
  attribution maps mean what they mean on natural images. Stratified, seeded 70/15/15 split.
- ``cifar10`` / ``cifar100``: torchvision's readers over ``data_dir``; downloaded only with
  ``download=True``. Validation is a seeded slice of the official train set; test is the test set.
- ``imagenet`` / ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``
  (``data_dir/test/<class>/*`` too if present, else test = val), standard ImageNet transforms.
- ``synthetic``: seeded class prototypes plus noise, for tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from nsde_ray.config import DATASETS_ON_DISK, DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_LAYOUT = ("{data_dir}/{folder}/ as torchvision's {cls} reader expects it (the python version of the "
                 "archive, unpacked); pass --download to fetch it there")
_FOLDER_LAYOUT = ("{data_dir}/train/<class>/<image> and {data_dir}/val/<class>/<image> "
                  "(optionally {data_dir}/test/<class>/<image>), one folder per class, same class folders in each")


class DataError(ValueError):
    """A data set that is missing or laid out wrongly; the message names the expected layout."""


@dataclass
class DataSplits:
    """The three splits of one data set and what a model needs to know about it.

    Images are float tensors (in_channels, image_size, image_size) normalised per channel with
    ``mean`` and ``std`` (pixel = normalised * std + mean gives values in [0, 1]).
    ``train_plain`` is the train split with the evaluation transform (no augmentation), sample
    for sample aligned with ``train``; ``None`` where ``train`` has no augmentation.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_plain: Dataset | None = None

    @property
    def train_unaugmented(self) -> Dataset:
        """The train split as the model sees it at evaluation: what attribution maps are computed on."""
        return self.train if self.train_plain is None else self.train_plain


def default_image_size(dataset: str) -> int:
    """Side in pixels a data set is resized to unless the config says otherwise."""
    return 224 if dataset in ("imagenet", "imagefolder") else 32


def check_data(cfg: DataConfig) -> None:
    """Fail fast, on the driver, if the data set's files are not where the config says.

    Raises :class:`DataError` naming the expected layout. Cheap: looks at directories only.
    """
    if cfg.dataset in _CIFAR_FOLDERS:
        folder = os.path.join(cfg.data_dir, _CIFAR_FOLDERS[cfg.dataset])
        if cfg.download:
            if not os.path.isdir(cfg.data_dir):
                raise DataError(f"--data-dir {cfg.data_dir!r} does not exist; create it so CIFAR can be downloaded there")
            return
        if not os.path.isdir(folder):
            cls = "CIFAR10" if cfg.dataset == "cifar10" else "CIFAR100"
            raise DataError(f"{cfg.dataset} not found: expected "
                            + _CIFAR_LAYOUT.format(data_dir=cfg.data_dir, folder=_CIFAR_FOLDERS[cfg.dataset], cls=cls))
    elif cfg.dataset in ("imagenet", "imagefolder"):
        layout = _FOLDER_LAYOUT.format(data_dir=cfg.data_dir)
        if not os.path.isdir(cfg.data_dir):
            raise DataError(f"--data-dir {cfg.data_dir!r} does not exist; expected {layout}")
        classes = {}
        for split in ("train", "val"):
            split_dir = os.path.join(cfg.data_dir, split)
            if not os.path.isdir(split_dir):
                raise DataError(f"{cfg.dataset}: {split_dir!r} is missing; expected {layout}")
            classes[split] = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
            if not classes[split]:
                raise DataError(f"{cfg.dataset}: {split_dir!r} has no class folders; expected {layout}")
        if classes["train"] != classes["val"]:
            raise DataError(f"{cfg.dataset}: train/ and val/ have different class folders "
                            f"({len(classes['train'])} vs {len(classes['val'])}); expected {layout}")


def build_datasets(cfg: DataConfig) -> DataSplits:
    """Load and split the data set ``cfg`` names. Raises :class:`DataError` for missing files."""
    check_data(cfg)
    size = cfg.image_size or default_image_size(cfg.dataset)
    if cfg.dataset == "digits":
        return _digits(cfg, size)
    if cfg.dataset == "synthetic":
        return _synthetic(cfg, size)
    if cfg.dataset in _CIFAR_FOLDERS:
        return _cifar(cfg, size)
    return _image_folder(cfg, size)


def foreground_masks(splits: DataSplits, pixels: torch.Tensor) -> torch.Tensor | None:
    """Foreground (B, H, W) bool of images (B, C, H, W) in [0, 1], for data sets that define one.

    digits: the ink, pixels brighter than 0.5 after upsampling. Other data sets have no masks
    here (localisation AUC is then not computed).
    """
    if splits.name == "digits":
        return pixels.mean(dim=1) > 0.5
    return None


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _stratified_split(labels: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    rest, test = train_test_split(indices, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.split_seed)
    val_share = cfg.val_fraction / (1.0 - cfg.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=cfg.split_seed)
    return train, val, test


def _tensor_splits(images: torch.Tensor, labels: np.ndarray, cfg: DataConfig, class_names: list[str]) -> DataSplits:
    """Split (N, C, H, W) images in [0, 1]; normalise with the train split's per-channel statistics."""
    train, val, test = _stratified_split(labels, cfg)
    mean = images[train].mean(dim=(0, 2, 3))
    std = images[train].std(dim=(0, 2, 3)).clamp_min(1e-6)
    normalised = _normalise(images, mean, std)
    targets = torch.as_tensor(labels, dtype=torch.long)
    make = lambda idx: TensorDataset(normalised[idx], targets[idx])  # noqa: E731
    return DataSplits(cfg.dataset, make(train), make(val), make(test), num_classes=len(class_names), in_channels=images.shape[1],
                      image_size=images.shape[-1], class_names=class_names,
                      mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def _digits(cfg: DataConfig, size: int) -> DataSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return _tensor_splits(images, digits.target, cfg, [str(d) for d in range(10)])


def _synthetic(cfg: DataConfig, size: int) -> DataSplits:
    """Each class is a smooth random prototype (3, size, size); samples add pixel noise."""
    generator = torch.Generator().manual_seed(cfg.split_seed)
    coarse = torch.rand(cfg.synthetic_classes, 3, 4, 4, generator=generator)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.arange(cfg.synthetic_samples) % cfg.synthetic_classes
    noise = 0.15 * torch.randn(cfg.synthetic_samples, 3, size, size, generator=generator)
    images = (prototypes[labels] + noise).clamp(0.0, 1.0)
    return _tensor_splits(images, labels.numpy(), cfg, [f"class_{k}" for k in range(cfg.synthetic_classes)])


def _cifar(cfg: DataConfig, size: int) -> DataSplits:
    from torchvision import datasets, transforms

    reader = datasets.CIFAR10 if cfg.dataset == "cifar10" else datasets.CIFAR100
    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    resize = [transforms.Resize(size)] if size != 32 else []
    train_tf = transforms.Compose(resize + [transforms.RandomCrop(size, padding=size // 8),
                                            transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    eval_tf = transforms.Compose(resize + [transforms.ToTensor(), normalize])
    try:
        train_aug = reader(cfg.data_dir, train=True, transform=train_tf, download=cfg.download)
        train_eval = reader(cfg.data_dir, train=True, transform=eval_tf)
        test = reader(cfg.data_dir, train=False, transform=eval_tf)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataError(f"{cfg.dataset} in {cfg.data_dir!r} is unreadable ({err}); expected "
                        + _CIFAR_LAYOUT.format(data_dir=cfg.data_dir, folder=_CIFAR_FOLDERS[cfg.dataset],
                                               cls=reader.__name__)) from err
    order = np.random.default_rng(cfg.split_seed).permutation(len(train_aug))
    n_val = int(round(cfg.val_fraction * len(order)))
    train_indices, val_indices = order[n_val:].tolist(), order[:n_val].tolist()
    return DataSplits(cfg.dataset, Subset(train_aug, train_indices), Subset(train_eval, val_indices), test,
                      num_classes=len(train_aug.classes), in_channels=3, image_size=size,
                      class_names=list(train_aug.classes), mean=CIFAR_MEAN, std=CIFAR_STD,
                      train_plain=Subset(train_eval, train_indices))


def _image_folder(cfg: DataConfig, size: int) -> DataSplits:
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    eval_tf = transforms.Compose([transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size),
                                  transforms.ToTensor(), normalize])
    root = cfg.data_dir
    try:
        train = datasets.ImageFolder(os.path.join(root, "train"), transform=train_tf)
        train_plain = datasets.ImageFolder(os.path.join(root, "train"), transform=eval_tf)
        val = datasets.ImageFolder(os.path.join(root, "val"), transform=eval_tf)
        test_dir = os.path.join(root, "test")
        test = datasets.ImageFolder(test_dir, transform=eval_tf) if os.path.isdir(test_dir) else val
    except (FileNotFoundError, RuntimeError) as err:  # e.g. a class folder without images
        raise DataError(f"{cfg.dataset} in {root!r}: {err}; expected {_FOLDER_LAYOUT.format(data_dir=root)}") from err
    return DataSplits(cfg.dataset, train, val, test, num_classes=len(train.classes), in_channels=3, image_size=size,
                      class_names=list(train.classes), mean=IMAGENET_MEAN, std=IMAGENET_STD, train_plain=train_plain)


def loader_processes(dataset: str, cpus_per_worker: int) -> int:
    """DataLoader worker processes for one DDP worker holding ``cpus_per_worker`` CPU cores.

    Data sets read from disk decode and augment image by image, so they get every core but the
    training process's own; in-memory tensors (digits, synthetic) are cheaper to index in-process.
    """
    return cpus_per_worker - 1 if dataset in DATASETS_ON_DISK else 0


class IndexedDataset(Dataset):
    """Yields ``(image, label, index)``: the index keys per-sample state such as shaping maps."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class ShardSampler(torch.utils.data.Sampler[int]):
    """DDP sampling with a fixed shard per worker, reshuffled within the shard every epoch.

    The data set is permuted once (``seed``) and dealt out ``rank::world_size``, padded by wrapping
    so that every worker does the same number of steps (as ``DistributedSampler`` does). Unlike
    ``DistributedSampler``, a worker keeps its samples across epochs, so per-sample state computed
    on a worker (shaping maps) stays on the worker that needs it: no gather of the data set.
    """

    def __init__(self, length: int, rank: int, world_size: int, seed: int = 0) -> None:
        order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))
        per_worker = -(-length // world_size)
        padded = torch.cat([order, order[: per_worker * world_size - length]])
        self.indices = padded[rank::world_size]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        shuffle = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(self.seed + 1 + self.epoch))
        return iter(self.indices[shuffle].tolist())

    def __len__(self) -> int:
        return len(self.indices)
