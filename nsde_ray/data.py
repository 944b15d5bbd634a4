"""Data sets: train / val / test splits of images (C, H, W), normalised, with integer labels.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped with the package, no
  download), upsampled bilinearly to 32x32 so that blur-based SIC, perturbation radii and
  attribution maps mean what they mean on natural images. Stratified, seeded 70/15/15 split.
- ``cifar10`` / ``cifar100``: torchvision's readers over ``data_dir``; downloaded only with
  ``download=True``. Validation is a seeded slice of the official train set; test is the test set.
- ``imagenet`` / ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``
  (``data_dir/test/<class>/*`` too if present, else test = val).
- ``synthetic``: seeded class prototypes plus noise, for tests.

Images read from disk train with one of the recipes of :mod:`nsde_ray.augment`
(``DataConfig.augmentation``; ``auto`` chooses). ``cifar`` (pad-and-crop by ``size // 8``, flip;
evaluation: resized only if needed) for CIFAR and for folders of small images: a folder whose
first images (the first of each of up to 16 classes, sizes read from the file headers) are all at
most 64 px on their longer side; such a folder keeps its own size (the smallest shorter side
seen) unless ``image_size`` is set. ``imagenet`` (RandomResizedCrop, flip; evaluation: resize to
``size * 256 / 224``, centre crop) for folders of larger images, at 224 px by default.
Normalisation goes with the recipe: CIFAR's per-channel mean and std for ``cifar``, ImageNet's for
``imagenet``, whatever the folder holds (no statistics are computed). ``none`` trains on the
evaluation view of the recipe ``auto`` would choose. Each augmented training sample also yields
where its crop lies in its evaluation view (see :class:`IndexedDataset`).
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from nsde_ray.augment import IDENTITY_PARAMS, RandomCropFlip, eval_view
from nsde_ray.config import DATASETS_ON_DISK, DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
RECIPE_STATS = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
SMALL_IMAGE_SIDE = 64
DECODE_ALL, DECODE_SAMPLE = 2000, 200  # check_images: decode every image of a split this small, else a sample
_PROBED_CLASSES = 16
_FOLDER_SETS = ("imagenet", "imagefolder")
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_LAYOUT = (
    "{data_dir}/{folder}/ as torchvision's {cls} reader expects it (the python version of the "
    "archive, unpacked); pass --download to fetch it there"
)
_FOLDER_LAYOUT = (
    "{data_dir}/train/<class>/<image> and {data_dir}/val/<class>/<image> "
    "(optionally {data_dir}/test/<class>/<image>), one folder per class, same class folders in each"
)


class DataError(ValueError):
    """A data set that is missing or laid out wrongly; the message names the expected layout."""


@dataclass
class DataSplits:
    """The three splits of one data set and what a model needs to know about it.

    Images are float tensors (in_channels, image_size, image_size) normalised per channel with
    ``mean`` and ``std`` (pixel = normalised * std + mean gives values in [0, 1]).
    ``train_plain`` is the train split with the evaluation transform (no augmentation), sample
    for sample aligned with ``train``; ``None`` where ``train`` has no augmentation.
    ``augmentation``: the training recipe in use, ``cifar``, ``imagenet`` or ``none``; an
    augmented ``train`` yields ``((image, params), label)`` (:class:`nsde_ray.augment.RandomCropFlip`).
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
    augmentation: str = "none"

    @property
    def train_unaugmented(self) -> Dataset:
        """The train split as the model sees it at evaluation: what attribution maps are computed on."""
        return self.train if self.train_plain is None else self.train_plain


def default_image_size(dataset: str) -> int:
    """Side in pixels a data set is resized to unless the config says otherwise (folders of small images: their own)."""
    return 224 if dataset in _FOLDER_SETS else 32


def check_data(cfg: DataConfig, images: bool = True) -> None:
    """Fail fast, on the driver, if the data set's files are not where the config says or cannot be read.

    Raises :class:`DataError` naming the expected layout, or the bad folders and files. CIFAR:
    looks at directories only. Image folders: every class folder of every split holds an image,
    and a sample of the images decodes (:func:`check_images`: all of a split of at most 2,000
    files, else 200 drawn with ``split_seed``); ``images=False`` skips that (the workers, after the driver).
    """
    if cfg.dataset in _CIFAR_FOLDERS:
        folder = os.path.join(cfg.data_dir, _CIFAR_FOLDERS[cfg.dataset])
        if cfg.download:
            if not os.path.isdir(cfg.data_dir):
                raise DataError(
                    f"--data-dir {cfg.data_dir!r} does not exist; create it so CIFAR can be downloaded there"
                )
            return
        if not os.path.isdir(folder):
            cls = "CIFAR10" if cfg.dataset == "cifar10" else "CIFAR100"
            raise DataError(
                f"{cfg.dataset} not found: expected "
                + _CIFAR_LAYOUT.format(data_dir=cfg.data_dir, folder=_CIFAR_FOLDERS[cfg.dataset], cls=cls)
            )
    elif cfg.dataset in _FOLDER_SETS:
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
            raise DataError(
                f"{cfg.dataset}: train/ and val/ have different class folders "
                f"({len(classes['train'])} vs {len(classes['val'])}); expected {layout}"
            )
        splits = ["train", "val"] + (["test"] if os.path.isdir(os.path.join(cfg.data_dir, "test")) else [])
        for split in splits if images else []:
            check_images(os.path.join(cfg.data_dir, split), cfg.dataset, seed=cfg.split_seed)


def _image_files(folder: str):
    """The image files under ``folder`` as ``ImageFolder`` finds them (extensions, symlinks followed), lazily."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            if name.lower().endswith(IMG_EXTENSIONS):
                yield os.path.join(root, name)


def _bad_image(path: str) -> str | None:
    """Why ``path`` cannot be decoded, or None: it is opened and fully loaded, as training will."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError, bombs...
        return f"{path} ({type(err).__name__}: {err})"
    return None


def check_images(split_dir: str, dataset: str = "imagefolder", seed: int = 0) -> None:
    """Every class folder of ``split_dir`` holds an image, and its images decode; raises :class:`DataError`.

    Decoded: every image when the split has at most :data:`DECODE_ALL` files, else a seeded sample
    of :data:`DECODE_SAMPLE` (a class, then one of its files, drawn with ``seed``). The message
    names the first few bad folders or files.
    """
    import random

    empty, files, listed = [], [], {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if next(_image_files(entry.path), None) is None:
            empty.append(entry.path)
        elif len(files) <= DECODE_ALL:
            listed[entry.path] = list(_image_files(entry.path))
            files.extend(listed[entry.path])
    if empty:
        raise DataError(
            f"{dataset}: {len(empty)} class folder(s) in {split_dir!r} hold no images "
            f"(extensions as torchvision's ImageFolder reads them): {_first(empty)}; add images or remove "
            "the folders (from every split)"
        )
    if len(files) > DECODE_ALL:
        rng = random.Random(seed)
        folders = sorted(e.path for e in os.scandir(split_dir) if e.is_dir())
        sample: set[str] = set()
        for _ in range(DECODE_SAMPLE * 4):
            if len(sample) == DECODE_SAMPLE:
                break
            folder = rng.choice(folders)
            if folder not in listed:
                listed[folder] = list(_image_files(folder))
            sample.add(rng.choice(listed[folder]))
        files = sorted(sample)
    bad = [reason for reason in map(_bad_image, files) if reason is not None]
    if bad:
        raise DataError(
            f"{dataset}: {len(bad)} of {len(files)} images checked in {split_dir!r} cannot be decoded: "
            f"{_first(bad)}; remove or replace them"
        )


def _first(items: list[str], count: int = 5) -> str:
    return ", ".join(items[:count]) + (f" and {len(items) - count} more" if len(items) > count else "")


def build_datasets(cfg: DataConfig) -> DataSplits:
    """Load and split the data set ``cfg`` names. Raises :class:`DataError` for missing files."""
    check_data(cfg, images=False)  # the driver decoded a sample before Ray started
    if cfg.dataset in _FOLDER_SETS:
        return _image_folder(cfg, resolve_data(cfg))
    if cfg.dataset in _CIFAR_FOLDERS:
        return _cifar(cfg, resolve_data(cfg))
    return _in_memory(cfg)


@dataclass(frozen=True)
class DataResolution:
    """What a :class:`DataConfig`'s ``None`` and ``auto`` resolve to: the values :class:`DataSplits` gets.

    image_size: side in pixels. recipe: the evaluation view and normalisation of images read from
    disk, ``cifar`` or ``imagenet`` (``none`` for the in-memory tensors of digits and synthetic).
    augmentation: the training recipe in use, ``cifar``, ``imagenet`` or ``none``. mean, std: the
    per-channel normalisation (the recipe's, or the in-memory train split's own statistics).
    """

    image_size: int
    recipe: str
    augmentation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_data(cfg: DataConfig) -> DataResolution:
    """What :func:`build_datasets` resolves ``cfg`` to, without reading the data set from disk.

    Image folders: the headers of the first image of up to 16 training classes (:func:`probe_sides`);
    CIFAR: the config alone; digits and synthetic, normalised with their train split's statistics:
    built (small in-memory tensors, nothing decoded).
    """
    if cfg.dataset in _FOLDER_SETS:
        shorter, longer = probe_sides(_first_images(os.path.join(cfg.data_dir, "train")))
        small = longer <= SMALL_IMAGE_SIDE
        size = cfg.image_size or (shorter if small else default_image_size(cfg.dataset))
        return _recipe_resolution(cfg.augmentation, "cifar" if small else "imagenet", size)
    if cfg.dataset in _CIFAR_FOLDERS:
        return _recipe_resolution(cfg.augmentation, "cifar", cfg.image_size or default_image_size(cfg.dataset))
    splits = _in_memory(cfg)
    return DataResolution(splits.image_size, "none", splits.augmentation, splits.mean, splits.std)


def _recipe_resolution(augmentation: str, auto: str, size: int) -> DataResolution:
    """The resolution of images read from disk at ``size`` px, ``auto`` being the recipe ``auto`` picks."""
    recipe, augmentation = resolve_recipe(augmentation, auto)
    return DataResolution(size, recipe, augmentation, *RECIPE_STATS[recipe])


def _in_memory(cfg: DataConfig) -> DataSplits:
    """The splits of digits or synthetic, at ``image_size`` or the default side."""
    size = cfg.image_size or default_image_size(cfg.dataset)
    return _digits(cfg, size) if cfg.dataset == "digits" else _synthetic(cfg, size)


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
    return DataSplits(
        cfg.dataset,
        make(train),
        make(val),
        make(test),
        num_classes=len(class_names),
        in_channels=images.shape[1],
        image_size=images.shape[-1],
        class_names=class_names,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )


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


def resolve_recipe(augmentation: str, auto: str) -> tuple[str, str]:
    """(recipe, training augmentation) for ``DataConfig.augmentation`` where ``auto`` would pick recipe ``auto``.

    The recipe sets the evaluation view and the normalisation; the training augmentation is the
    recipe's, or ``none`` (training on the evaluation view).
    """
    recipe = auto if augmentation in ("auto", "none") else augmentation
    return recipe, "none" if augmentation == "none" else recipe


def recipe_transforms(recipe: str, augmentation: str, size: int):
    """(train transform, evaluation transform) of ``recipe`` at ``size`` px, normalised with its ``RECIPE_STATS``.

    ``augmentation`` ``none`` trains on the evaluation transform; otherwise training is
    :class:`~nsde_ray.augment.RandomCropFlip` of ``recipe``, which also returns its params.
    """
    from torchvision import transforms

    finish = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*RECIPE_STATS[recipe])])
    eval_tf = transforms.Compose([eval_view(recipe, size), finish])
    return (eval_tf if augmentation == "none" else RandomCropFlip(recipe, size, finish)), eval_tf


def _cifar(cfg: DataConfig, resolved: DataResolution) -> DataSplits:
    from torchvision import datasets

    reader = datasets.CIFAR10 if cfg.dataset == "cifar10" else datasets.CIFAR100
    train_tf, eval_tf = recipe_transforms(resolved.recipe, resolved.augmentation, resolved.image_size)
    try:
        train_aug = reader(cfg.data_dir, train=True, transform=train_tf, download=cfg.download)
        train_eval = reader(cfg.data_dir, train=True, transform=eval_tf)
        test = reader(cfg.data_dir, train=False, transform=eval_tf)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataError(
            f"{cfg.dataset} in {cfg.data_dir!r} is unreadable ({err}); expected "
            + _CIFAR_LAYOUT.format(data_dir=cfg.data_dir, folder=_CIFAR_FOLDERS[cfg.dataset], cls=reader.__name__)
        ) from err
    order = np.random.default_rng(cfg.split_seed).permutation(len(train_aug))
    n_val = int(round(cfg.val_fraction * len(order)))
    train_indices, val_indices = order[n_val:].tolist(), order[:n_val].tolist()
    return _rgb_splits(
        cfg,
        resolved,
        Subset(train_aug, train_indices),
        Subset(train_eval, val_indices),
        test,
        Subset(train_eval, train_indices),
        list(train_aug.classes),
    )


def _rgb_splits(
    cfg: DataConfig,
    resolved: DataResolution,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    train_plain: Dataset,
    class_names: list[str],
) -> DataSplits:
    """The splits of an RGB image data set at ``resolved``'s size, normalisation and augmentation."""
    return DataSplits(
        cfg.dataset,
        train,
        val,
        test,
        num_classes=len(class_names),
        in_channels=3,
        image_size=resolved.image_size,
        class_names=class_names,
        mean=resolved.mean,
        std=resolved.std,
        train_plain=train_plain,
        augmentation=resolved.augmentation,
    )


def _first_images(split_dir: str) -> list[str]:
    """The first image file (as :func:`_image_files` orders them) of each of the first 16 classes of ``split_dir``."""
    classes = sorted(entry.path for entry in os.scandir(split_dir) if entry.is_dir())
    firsts = (next(_image_files(folder), None) for folder in classes)
    return list(itertools.islice((path for path in firsts if path is not None), _PROBED_CLASSES))


def probe_sides(paths: list[str]) -> tuple[int, int]:
    """(smallest shorter side, largest longer side) in pixels of the images at ``paths``.

    Sizes come from the file headers (PIL opens lazily), so this costs a few small reads, not decodes.
    """
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return min(min(size) for size in sizes), max(max(size) for size in sizes)


def _image_folder(cfg: DataConfig, resolved: DataResolution) -> DataSplits:
    from torchvision import datasets

    root = cfg.data_dir
    try:
        train = datasets.ImageFolder(os.path.join(root, "train"))
        train_plain = copy.copy(train)  # the same file list, its own transform
        val = datasets.ImageFolder(os.path.join(root, "val"))
        test_dir = os.path.join(root, "test")
        test = datasets.ImageFolder(test_dir) if os.path.isdir(test_dir) else val
    except (FileNotFoundError, RuntimeError) as err:  # e.g. a class folder without images
        raise DataError(f"{cfg.dataset} in {root!r}: {err}; expected {_FOLDER_LAYOUT.format(data_dir=root)}") from err
    train.transform, eval_tf = recipe_transforms(resolved.recipe, resolved.augmentation, resolved.image_size)
    for split in (train_plain, val, test):
        split.transform = eval_tf
    return _rgb_splits(cfg, resolved, train, val, test, train_plain, list(train.classes))


def loader_processes(dataset: str, cpus_per_worker: int) -> int:
    """DataLoader worker processes for one DDP worker holding ``cpus_per_worker`` CPU cores.

    Data sets read from disk decode and augment image by image, so they get every core but the
    training process's own; in-memory tensors (digits, synthetic) are cheaper to index in-process.
    """
    return cpus_per_worker - 1 if dataset in DATASETS_ON_DISK else 0


class IndexedDataset(Dataset):
    """Yields ``(image, label, index, params)``: the index keys per-sample state such as shaping maps.

    params, float32 (5,): where the sample's augmented crop lies in its evaluation view
    (:mod:`nsde_ray.augment`), taken from data sets that yield ``((image, params), label)``;
    :data:`~nsde_ray.augment.IDENTITY_PARAMS` for data sets without augmentation.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample, label = self.dataset[index]
        image, params = sample if isinstance(sample, tuple) else (sample, IDENTITY_PARAMS)
        return image, label, index, params


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
