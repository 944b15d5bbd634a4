"""Recorded augmentation geometry: a map of the evaluation view, moved by a sample's params, covers its pixels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from nsde_ray.augment import IDENTITY_PARAMS, RandomCropFlip, apply_geometry, eval_view

to_tensor = transforms.ToTensor()


def _ramps(height: int, width: int) -> Image.Image:
    """RGB image: red rises left to right, green top to bottom, so any misplaced or mirrored box shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x + 0.5) / width, (y + 0.5) / height, np.full((height, width), 0.5)], axis=-1)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8))


def test_pad_and_crop_moves_a_map_exactly_as_the_pixels():
    """At the map's own resolution the crop offsets are whole pixels: the moved map is the augmented image."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    augment = RandomCropFlip("cifar", 32, to_tensor)
    view = to_tensor(image)[None]  # the cifar view of a 32 px image is the image
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        augmented, params = augment(image)
        flips.add(params[4].item())
        torch.testing.assert_close(apply_geometry(view, params[None])[0], augmented, atol=1e-5, rtol=0)
    assert flips == {0.0, 1.0}


@pytest.mark.parametrize("map_side", [32, 16])
def test_random_resized_crop_takes_the_same_box_of_the_map(map_side):
    """RandomResizedCrop of a 48x40 image vs the map of its 32 px evaluation view (at 32 or 16 px), moved by params:
    equal to quantisation wherever the box lies inside the view; a misplaced box or flip would be off by ~0.1-1."""
    image = _ramps(48, 40)
    augment = RandomCropFlip("imagenet", 32, to_tensor)
    view = F.interpolate(to_tensor(eval_view("imagenet", 32)(image))[None], size=map_side, mode="area")
    for seed in range(12):
        torch.manual_seed(seed)
        augmented, params = augment(image)
        expected = F.interpolate(augmented[None], size=map_side, mode="area")[0, :2]
        moved = apply_geometry(view, params[None])[0, :2]
        inside = apply_geometry(torch.ones(1, 1, map_side, map_side), params[None])[0, 0] > 0.999
        assert inside.float().mean() > 0.5
        assert (moved - expected).abs()[:, inside].max() < 0.012


def test_identity_params_leave_maps_unchanged_and_outside_the_view_takes_the_fill():
    maps = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(apply_geometry(maps, IDENTITY_PARAMS.expand(3, 5)), maps)
    shifted = torch.tensor([[0.25, -0.125, 1.0, 1.0, 0.0]])  # 2 rows down, 1 column of padding on the left
    moved = apply_geometry(maps[:1], shifted, fill=torch.tensor([-1.0]))
    torch.testing.assert_close(moved[0, 0, :6, 1:], maps[0, 0, 2:, :7])
    assert (moved[0, 0, :, 0] == -1).all() and (moved[0, 0, 6:] == -1).all()


def test_invert_geometry_puts_a_crop_s_map_back_where_its_box_lies():
    """Pad-and-crop shifts and flips invert exactly; a resized crop of a smooth map closely; coverage is the box."""
    from nsde_ray.augment import invert_geometry

    rows, cols = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    view = torch.stack([2 * cols + rows, torch.sin(3 * rows) * cols]).unsqueeze(1)  # (2, 1, 32, 32), smooth
    shifted = torch.tensor([[-4 / 32, 2 / 32, 1.0, 1.0, 1.0], [3 / 32, -1 / 32, 1.0, 1.0, 0.0]])
    back, coverage = invert_geometry(apply_geometry(view, shifted), shifted)
    assert back.shape == coverage.shape == view.shape
    seen = coverage > 0.999
    assert torch.equal(back[seen], view[seen])
    # the crop began 4 rows above the view (padding) and 2 columns into it: it saw rows 0-27, columns 2-31
    assert seen[0, 0, :28, 2:].all() and not seen[0, 0, 28:].any() and not seen[0, 0, :, :2].any()
    assert (coverage[~seen] < 1e-6).all()  # a whole-pixel shift: no partly covered pixels
    resized = torch.tensor([[0.1, 0.2, 0.5, 0.6, 1.0], [0.0, 0.0, 1.0, 1.0, 0.0]])
    back, coverage = invert_geometry(apply_geometry(view, resized), resized)
    inside = coverage[0] > 0.999
    assert 0.2 < inside.float().mean() < 0.35  # the box covers 0.5 x 0.6 of the view
    torch.testing.assert_close(back[0][inside], view[0][inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(back[1], view[1])  # identity
