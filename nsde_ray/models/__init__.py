"""Stochastic ResNets by name: discretised neural SDEs with noise after every residual block.

``build_model("resnet50", num_classes=1000, noise=NoiseConfig("gaussian", 0.5))`` builds the
network with torchvision's own builder (so torchvision state dicts load into it, ``strict=True``),
then turns every residual block into a :class:`~nsde_ray.models.blocks.StochasticBasicBlock` or
:class:`~nsde_ray.models.blocks.StochasticBottleneck` carrying its own
:class:`~nsde_ray.models.noise.BlockNoise`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torchvision
from torch import nn

from nsde_ray.models.blocks import StochasticBasicBlock, StochasticBottleneck, make_stochastic
from nsde_ray.models.cifar import CifarResNet
from nsde_ray.models.noise import BlockNoise, noise_modules, set_fused_noise, set_noise_shape_maps
from nsde_ray.names import ARCHS, CIFAR_DEPTHS, TORCHVISION_ARCHS
from nsde_ray.registry import noise_mode

if TYPE_CHECKING:
    from nsde_ray.config import NoiseConfig

_STAGES = ("layer1", "layer2", "layer3", "layer4")

__all__ = [
    "BlockNoise",
    "StochasticBasicBlock",
    "StochasticBottleneck",
    "build_model",
    "build_plain_model",
    "noise_modules",
    "set_fused_noise",
    "set_noise_shape_maps",
]


def build_plain_model(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The deterministic network as its builder makes it (torchvision's or :class:`CifarResNet`)."""
    if arch in CIFAR_DEPTHS:
        return CifarResNet(CIFAR_DEPTHS[arch], num_classes=num_classes, in_channels=in_channels)
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(
            in_channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=False,
        )
    return model


def build_model(arch: str, num_classes: int, in_channels: int = 3, noise: NoiseConfig | None = None) -> nn.Module:
    """A stochastic ResNet: input (B, in_channels, H, W), output logits (B, num_classes).

    ``noise=None`` builds it with the noise off (mode ``none``); the result is then the plain
    network, with every ReLU a separate, not-in-place module. The mode's record
    (:data:`nsde_ray.registry.NOISE_MODES`) says where its noise goes: ``blocks``; ``input`` puts it on the
    input image instead of the blocks: ``model.input_noise``, a :class:`BlockNoise` applied by a
    forward pre-hook (no parameters, so state dicts are those of the plain network); ``none`` and
    ``loss`` (the robust-training baselines) build the plain network.
    """
    model = build_plain_model(arch, num_classes, in_channels)
    mode, sigma = ("none", 0.0) if noise is None else (noise.mode, noise.sigma)
    site = noise_mode(mode).site
    block_mode = mode if site == "blocks" else "none"
    model.relu = nn.ReLU()  # the stem's; torchvision's is in place
    for stage_name in _STAGES:
        stage = getattr(model, stage_name, None)
        if stage is None:
            continue
        for index, block in enumerate(stage):
            stage[index] = make_stochastic(block, BlockNoise(block_mode, sigma))
    if site == "input":
        model.input_noise = BlockNoise("gaussian", sigma)
        model.register_forward_pre_hook(_noisy_input)
    return model


def _noisy_input(model: nn.Module, args: tuple) -> tuple:
    return (model.input_noise(args[0]), *args[1:])
