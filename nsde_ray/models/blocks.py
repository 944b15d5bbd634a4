"""Residual blocks of torchvision's ResNet family, as steps of a discretised neural SDE.

Each block wraps the convolutions and batch norms of a torchvision ``BasicBlock`` or
``Bottleneck`` under the same attribute names, so torchvision state dicts load unchanged, and
computes the same function, plus the noise term after the residual sum:
``X(i+1) = relu(X(i) + R(X(i))) + N(i)``. The tail ``relu(. + identity) + N`` is
:meth:`BlockNoise.residual_out`, one fused kernel pair in GPU training.

Unlike torchvision's blocks, each ReLU is its own module, used once and not in place: Captum's
DeepLIFT and DeepSHAP attach their rescale rule to ReLU modules and go wrong on a reused one.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from nsde_ray.models.noise import BlockNoise


class StochasticBasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34, CIFAR ResNets). Input and output (B, C, H, W)."""

    def __init__(self, block: BasicBlock, noise: BlockNoise) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.downsample = block.downsample
        self.stride = block.stride
        self.relu1, self.relu_out = nn.ReLU(), nn.ReLU()
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.noise.residual_out(out, identity, self.relu_out)


class StochasticBottleneck(nn.Module):
    """1x1, 3x3 (grouped for ResNeXt, wide for WideResNet), 1x1 convolutions. Input and output (B, C, H, W)."""

    def __init__(self, block: Bottleneck, noise: BlockNoise) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.downsample = block.downsample
        self.stride = block.stride
        self.relu1, self.relu2, self.relu_out = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.noise.residual_out(out, identity, self.relu_out)


def make_stochastic(block: nn.Module, noise: BlockNoise) -> nn.Module:
    """The stochastic version of a torchvision residual block, sharing its parameters."""
    if isinstance(block, Bottleneck):
        return StochasticBottleneck(block, noise)
    if isinstance(block, BasicBlock):
        return StochasticBasicBlock(block, noise)
    raise TypeError(f"not a torchvision residual block: {type(block).__name__}")
