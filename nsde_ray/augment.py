"""Image transforms of the two training recipes, with the geometry of each augmentation recorded.

A recipe is an evaluation view and a random training crop of the same image:

- ``cifar`` (images of at most 64 px, CIFAR): view = the image resized (shorter side) to ``size``
  and centre-cropped square, a no-op for ``size`` x ``size`` images; training = the view
  zero-padded by ``size // 8``, a random ``size`` x ``size`` crop of it and a horizontal flip.
- ``imagenet``: view = shorter side resized to ``size * 256 / 224``, centre crop ``size``;
  training = ``RandomResizedCrop(size)`` of the original image and a horizontal flip.

Boxes are drawn with torchvision's own ``get_params``, so the images are torchvision's. Every
training sample also returns its params, float32 (5,): ``(top, left, height, width, flip)``, the
crop box in the evaluation view's coordinates as fractions of its side (it may extend beyond the
view: the padding, or a large RandomResizedCrop box), and ``flip`` 1.0 if the crop was mirrored.
:data:`IDENTITY_PARAMS` is the view itself. :func:`apply_geometry` applies params to per-sample
maps of the view (shaping maps) at any resolution, so a map follows its sample's pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.transforms import functional as TF

RECIPES = ("cifar", "imagenet")
IDENTITY_PARAMS = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])


def _resize_side(recipe: str, size: int) -> int:
    """The shorter side the evaluation view resizes to before its centre crop of ``size``."""
    return size if recipe == "cifar" else int(round(size * 256 / 224))


def eval_view(recipe: str, size: int) -> transforms.Compose:
    """PIL image -> PIL image (size x size): the evaluation view of ``recipe``."""
    return transforms.Compose([transforms.Resize(_resize_side(recipe, size)), transforms.CenterCrop(size)])


def _view_box(height: int, width: int, side: int, size: int) -> tuple[float, float, float, float]:
    """(top, left, height, width), in pixels of a (height, width) image, of what Resize(side) + CenterCrop(size)
    shows."""
    if width <= height:  # torchvision's Resize(int): the shorter side becomes ``side``, the longer one is truncated
        new_width, new_height = side, int(side * height / width)
    else:
        new_width, new_height = int(side * width / height), side
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    scale_y, scale_x = height / new_height, width / new_width
    return top * scale_y, left * scale_x, size * scale_y, size * scale_x


def cifar_padding(size: int) -> int:
    """Pixels the ``cifar`` recipe pads a ``size`` x ``size`` view by before its random crop."""
    return size // 8


class RandomCropFlip:
    """Training transform: PIL image -> (``finish(crop)``, params float32 (5,)), a random crop of ``recipe`` and a flip.

    ``finish`` turns the cropped PIL image into the model's input (e.g. ToTensor + Normalize).
    """

    def __init__(self, recipe: str, size: int, finish: Callable) -> None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
        self.recipe, self.size, self.finish = recipe, size, finish
        self.padding = cifar_padding(size)
        self.view = eval_view(recipe, size)
        self.resized_crop = transforms.RandomResizedCrop(size)

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.size
        if self.recipe == "cifar":
            padded = TF.pad(self.view(image), self.padding)
            top, left, height, width = transforms.RandomCrop.get_params(padded, (size, size))
            image = TF.crop(padded, top, left, height, width)
            box = ((top - self.padding) / size, (left - self.padding) / size, 1.0, 1.0)
        else:
            _, full_height, full_width = TF.get_dimensions(image)
            top, left, height, width = transforms.RandomResizedCrop.get_params(
                image, self.resized_crop.scale, self.resized_crop.ratio
            )
            image = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
            view_top, view_left, view_height, view_width = _view_box(
                full_height, full_width, _resize_side("imagenet", size), size
            )
            box = (
                (top - view_top) / view_height,
                (left - view_left) / view_width,
                height / view_height,
                width / view_width,
            )
        flip = bool(torch.rand(1) < 0.5)
        if flip:
            image = TF.hflip(image)
        return self.finish(image), torch.tensor([*box, float(flip)], dtype=torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(recipe={self.recipe!r}, size={self.size}, padding={self.padding})"


def apply_geometry(maps: torch.Tensor, params: torch.Tensor, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Maps (B, C, h, w) of the evaluation view -> the same crops and flips as params (B, 5) gave the images.

    One bilinear ``grid_sample`` over the batch; h, w need not be the image size (the box is in
    fractions of the view). Where a box leaves the view the maps take ``fill`` (a number or (B,)).
    For a crop whose offsets are whole map pixels (pad-and-crop at the map's resolution) the result
    is an exact shift.
    """
    params = params.to(device=maps.device, dtype=torch.float32)
    top, left, height, width, flip = params.unbind(1)
    zero = torch.zeros_like(top)
    # Output x in [-1, 1] reads the view at 2 * (left + width * (x + 1) / 2) - 1, mirrored when flipped.
    theta = torch.stack(
        [
            torch.stack([width * (1.0 - 2.0 * flip), zero, 2.0 * left + width - 1.0], dim=1),
            torch.stack([zero, height, 2.0 * top + height - 1.0], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(maps.shape), align_corners=False)
    fill = torch.as_tensor(fill, dtype=torch.float32, device=maps.device).reshape(-1, 1, 1, 1)
    moved = F.grid_sample(maps.float() - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + fill


def invert_geometry(maps: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (B, C, h, w) of augmented crops -> (maps in the evaluation view's coordinates, coverage (B, 1, h, w)).

    The inverse of :func:`apply_geometry`: a crop's map is flipped back and placed where its box lies
    in the view. ``coverage`` in [0, 1] is the share of each view pixel that the crop saw (0 outside
    the box, fractional on its edges); there the returned maps hold ``coverage`` times the crop's values.
    """
    params = params.to(device=maps.device, dtype=torch.float32)
    top, left, height, width, flip = params.unbind(1)
    unflipped = torch.where(flip.view(-1, 1, 1, 1) > 0.5, maps.float().flip(-1), maps.float())
    inverse = torch.stack([-top / height, -left / width, 1.0 / height, 1.0 / width, torch.zeros_like(top)], dim=1)
    coverage = apply_geometry(torch.ones_like(unflipped[:, :1]), inverse)
    return apply_geometry(unflipped, inverse), coverage
