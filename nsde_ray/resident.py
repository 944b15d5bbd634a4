"""Training data held on the training device: decoded once, then batched and augmented there.

A :class:`ResidentLoader` replaces the ``DataLoader`` of a training split whose recipe can be
applied to a whole batch at once: no augmentation (digits, synthetic, ``--set
data.augmentation=none``) or the ``cifar`` recipe (pad by ``size // 8``, random crop, horizontal
flip). The split's evaluation view is decoded once (:func:`decode`, with the DataLoader's worker
processes), only the samples of this worker's shard, and kept as normalised float32 tensors on the
device: 45,000 CIFAR-10 images are 553 MB. Each epoch then costs a gather and an indexed crop per
batch instead of decoding and augmenting every image in the loader's processes; attribution
shaping's refreshes read the same views (:meth:`ResidentLoader.view_batches`).

The crops are those of :class:`nsde_ray.augment.RandomCropFlip`: the offsets uniform over the
``2 * size // 8 + 1`` positions and the flip with probability 1/2, drawn from the global torch
RNG (so a seeded epoch draws the same crops again on resume), padding the value a black pixel
normalises to. For the same offsets and flip the batch equals torchvision's, value for value, and
its params are the same (tested). Without augmentation the batches equal the ``DataLoader``'s, and
so does a seeded run's training, noise draws included.

:func:`resident_loader` decides: ``resident_data="auto"`` (``TrainConfig``) makes a split resident
when its recipe allows and the tensors take at most :data:`MEMORY_SHARE` of the device's free memory
(host RAM on a CPU), else it returns ``None`` and training keeps its ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import psutil
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nsde_ray.augment import IDENTITY_PARAMS, cifar_padding

MEMORY_SHARE = 0.25  # of the device's free memory that resident tensors may take
RESIDENT_RECIPES = ("none", "cifar")  # augmentations applied to whole batches on the device


class ResidentLoader:
    """Batches ``(images (B, C, H, W), labels (B,), indices (B,), params (B, 5))`` as the training loop reads them.

    images: the view samples of ``indices`` (sorted, the data set's own index space) decoded into
    ``device`` memory; ``order`` yields, each epoch, the indices to visit (a sampler; each must be
    one of ``indices``). ``padding`` > 0 applies the ``cifar`` recipe's random crop and flip; 0
    yields the view as it is. ``mean``, ``std``: the per-channel normalisation, for the padding's value.
    Images and labels come on ``device``; indices and params on the CPU, as a ``DataLoader`` gives them.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        order: Sequence[int],
        batch_size: int,
        padding: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.images, self.labels, self.order, self.batch_size, self.padding = images, labels, order, batch_size, padding
        self.position = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
        self.position[indices] = torch.arange(len(indices))
        black = -torch.as_tensor(mean, dtype=torch.float32) / torch.as_tensor(std, dtype=torch.float32)
        self.black = black.to(images.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        # A DataLoader draws its workers' base seed here; drawing it too keeps the noise of a seeded run as it was.
        torch.empty((), dtype=torch.int64).random_()
        visit = torch.as_tensor(list(iter(self.order)), dtype=torch.long)
        for indices in visit.split(self.batch_size):
            images, labels = self._gather(indices)
            if self.padding:
                images, params = self.crop_and_flip(images, *self.draw(len(indices)))
            else:
                params = IDENTITY_PARAMS.expand(len(indices), -1).clone()
            yield images, labels, indices, params

    def view_batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images (b, C, H, W), labels (b,)) of the evaluation views of ``indices``, in order, ``batch_size`` at a
        time."""
        for chunk in indices.split(batch_size):
            yield self._gather(chunk)

    def _gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The views (b, C, H, W) and labels (b,) of the samples ``indices`` (the data set's index space)."""
        rows = self.position[indices].to(self.images.device)
        return self.images[rows], self.labels[rows]

    def draw(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tops, lefts, flips) of ``count`` crops from the global torch RNG: offsets in [0, 2 * padding], flips
        bool."""
        offsets = torch.randint(0, 2 * self.padding + 1, (2, count))
        return offsets[0], offsets[1], torch.rand(count) < 0.5

    def crop_and_flip(
        self, images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops (B, C, H, W) of ``images`` zero-padded (black) by ``padding``, at (tops, lefts) of the padded
        image, mirrored where ``flips``; and their params (B, 5) as :class:`~nsde_ray.augment.RandomCropFlip` gives
        them."""
        batch, channels, height, width = images.shape
        pad = self.padding
        padded = self.black.expand(batch, channels, height + 2 * pad, width + 2 * pad).clone()
        padded[:, :, pad : pad + height, pad : pad + width] = images
        device = images.device
        row = tops.to(device).view(-1, 1) + torch.arange(height, device=device)
        columns = torch.arange(width, device=device)
        col = lefts.to(device).view(-1, 1) + torch.where(flips.to(device).view(-1, 1), columns.flip(0), columns)
        sample = torch.arange(batch, device=device).view(-1, 1, 1)
        crops = padded.permute(0, 2, 3, 1)[sample, row.unsqueeze(2), col.unsqueeze(1)].permute(0, 3, 1, 2)
        ones = torch.ones(batch)
        params = torch.stack([(tops - pad) / height, (lefts - pad) / width, ones, ones, flips.float()], dim=1)
        return crops.contiguous(), params


def resident_loader(
    view: Dataset,
    augmentation: str,
    indices: torch.Tensor,
    order: Sequence[int],
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    mode: str = "auto",
    processes: int = 0,
) -> ResidentLoader | None:
    """A :class:`ResidentLoader` of ``view``'s samples ``indices`` on ``device``, or None where training keeps a
    DataLoader.

    view: the split as the model sees it at evaluation, yielding (image (C, H, W), label);
    augmentation: the split's training recipe (``DataSplits.augmentation``); None when ``mode`` is
    ``off``, the recipe is not in :data:`RESIDENT_RECIPES`, or the tensors would take more than
    :data:`MEMORY_SHARE` of the device's free memory. ``processes``: DataLoader workers for the one decoding pass.
    """
    if mode == "off" or augmentation not in RESIDENT_RECIPES or len(indices) == 0:
        return None
    image = view[int(indices[0])][0]
    needed = len(indices) * image.numel() * 4
    if needed > MEMORY_SHARE * free_memory(device):
        return None
    images, labels = decode(Subset(view, indices.tolist()), processes)
    padding = cifar_padding(image.shape[-1]) if augmentation == "cifar" else 0
    return ResidentLoader(images.to(device), labels.to(device), indices, order, batch_size, padding, mean, std)


def decode(dataset: Dataset, processes: int = 0, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of ``dataset``, in order: (images (N, C, H, W) float32, labels (N,) int64), on the CPU."""
    images, labels = [], []
    for batch_images, batch_labels in DataLoader(dataset, batch_size=batch_size, num_workers=processes):
        images.append(batch_images.float())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, or the host's available RAM for a CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available
