"""A torchvision-style ResNet for 8×8 digits, small enough for a test: its blocks reuse one ``self.relu``."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity shortcut; ``relu`` runs twice per forward pass.

    Parameters
    ----------
    channels : int
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, C, H, W)."""
        out = self.relu(self.bn1(self.conv1(x)))  # call 0 of self.relu
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)  # call 1


class TinyResNet(nn.Module):
    """Stem, ``blocks`` basic blocks, global average pooling and a linear classifier.

    Parameters
    ----------
    in_channels : int, default 1
    width : int, default 8
        Channels of every convolution.
    num_classes : int, default 10
    blocks : int, default 1
    """

    def __init__(self, in_channels: int = 1, width: int = 8, num_classes: int = 10, blocks: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*[BasicBlock(width) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) → (N, num_classes) logits."""
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_net(in_channels: int = 1, width: int = 8, num_classes: int = 10, blocks: int = 1) -> TinyResNet:
    """The factory a study names: ``architecture: {factory: "mynets.nets:make_net", kwargs: {...}}``.

    Returns
    -------
    TinyResNet
        Freshly initialised from the global RNG.
    """
    return TinyResNet(in_channels=in_channels, width=width, num_classes=num_classes, blocks=blocks)
