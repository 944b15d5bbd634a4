"""Stochastic ResNets: the registry, noise semantics and equality with torchvision."""

import pytest
import torch
import torchvision
from torch import nn

from nsde_ray.config import NoiseConfig
from nsde_ray.models import (BlockNoise, available_archs, build_model, noise_modules, set_noise_shape_maps)
from nsde_ray.models import TORCHVISION_ARCHS


@pytest.mark.parametrize("arch", available_archs())
def test_forward_backward_every_arch(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, in_channels=3, noise=NoiseConfig("gaussian", 0.5))
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits = model(images)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert len(noise_modules(model)) >= 3


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="unknown arch 'resnet9000'; choose one of: cifar_resnet8.*resnet50"):
        build_model("resnet9000", num_classes=10)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
@pytest.mark.parametrize("noise", [NoiseConfig("gaussian", 0.0), NoiseConfig("none", 0.7)])
def test_no_noise_is_exactly_torchvision(arch, noise):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    model = build_model(arch, num_classes=10, noise=noise)
    model.load_state_dict(reference.state_dict(), strict=True)  # torchvision state dicts load unchanged
    images = torch.randn(3, 3, 64, 64)
    for mode in ("train", "eval"):  # train mode too: batch statistics, and no noise drawn
        getattr(reference, mode)()
        getattr(model, mode)()
        with torch.no_grad():
            assert torch.equal(model(images), reference(images)), mode


def test_state_dict_keys_match_torchvision_for_every_torchvision_arch():
    for arch in TORCHVISION_ARCHS:
        ours = build_model(arch, num_classes=3).state_dict().keys()
        theirs = getattr(torchvision.models, arch)(weights=None, num_classes=3).state_dict().keys()
        assert list(ours) == list(theirs), arch


@pytest.mark.parametrize("arch", ["cifar_resnet8", "resnet18", "resnet50"])
def test_noise_is_off_in_eval_and_fresh_in_training(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=4, noise=NoiseConfig("gaussian", 0.5))
    plain = build_model(arch, num_classes=4)
    plain.load_state_dict(model.state_dict())
    images = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
        assert torch.equal(model(images), plain(images))
        model.train()
        first, second = model(images), model(images)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
def test_injected_noise_scale_matches_sigma(sigma):
    """Per block, std(noise) / std(block output) == sigma within 3% (statistical tolerance)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, noise=NoiseConfig("gaussian", sigma)).train()
    ratios = []

    def measure(module, inputs, output):
        clean = inputs[0]
        ratios.append(((output - clean).std(dim=(1, 2, 3)) / clean.std(dim=(1, 2, 3))).mean().item())

    for module in noise_modules(model):
        module.register_forward_hook(measure)
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    assert len(ratios) == 8
    for ratio in ratios:
        assert ratio == pytest.approx(sigma, rel=0.03)


def test_attribution_mode_scales_noise_by_the_map():
    """A map of 1 on the left half and 0 on the right: noise only on the left, at full scale."""
    torch.manual_seed(0)
    noise = BlockNoise("attribution", 0.5).train()
    x = torch.randn(4, 8, 16, 16)
    assert (noise(x) - x).abs().min() > 0  # no map yet: plain Gaussian everywhere
    shape_map = torch.zeros(4, 1, 4, 4)
    shape_map[..., :2] = 1.0
    noise.set_shape_map(shape_map)
    delta = noise(x) - x
    assert torch.equal(delta[..., 10:], torch.zeros_like(delta[..., 10:]))
    expected = 0.5 * x.std(dim=(1, 2, 3))
    assert delta[..., :6].std(dim=(1, 2, 3)) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("mode", ["gaussian", "attribution"])
def test_noise_keeps_channels_last(mode):
    """A block output that switched to contiguous layout would make every later conv convert it (GPU cost)."""
    noise = BlockNoise(mode, 0.5).train()
    noise.set_shape_map(torch.rand(2, 1, 4, 4))
    x = torch.randn(2, 8, 16, 16).to(memory_format=torch.channels_last)
    assert noise(x).is_contiguous(memory_format=torch.channels_last)


def test_shape_maps_reach_every_block_and_are_validated():
    model = build_model("cifar_resnet8", num_classes=3, noise=NoiseConfig("attribution", 0.5)).train()
    set_noise_shape_maps(model, torch.ones(2, 1, 32, 32))
    assert all(m.shape_map is not None for m in noise_modules(model))
    model(torch.randn(2, 3, 32, 32))  # each block resizes the 32x32 map to its own size
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        set_noise_shape_maps(model, torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match="for 2 samples, batch has 5"):
        model(torch.randn(5, 3, 32, 32))


@pytest.mark.parametrize("arch", ["cifar_resnet14", "resnet34", "resnext50_32x4d"])
def test_every_relu_is_its_own_module_used_once_and_not_in_place(arch):
    """What Captum's DeepLIFT / DeepSHAP need (torchvision's blocks reuse one in-place ReLU)."""
    model = build_model(arch, num_classes=3).eval()
    calls: dict[nn.Module, int] = {}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for relu in relus:
        assert not relu.inplace
        relu.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(relus) and set(calls.values()) == {1}


def test_grey_input_channels():
    model = build_model("resnet18", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
