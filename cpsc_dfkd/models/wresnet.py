"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation, as in the CIFAR DFKD benchmarks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        return out + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[PreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(num_layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        features = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)
        logits = self.classify(features)
        return (logits, features) if return_features else logits

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from penultimate features (the last, linear layer)."""
        return self.fc(features)

    def attention_points(self) -> list[nn.Module]:
        return [self.block1, self.block2, self.block3]


def _register(depth: int, widen: int) -> None:
    @register_model(f"wrn_{depth}_{widen}")
    def build(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
        return WideResNet(depth, widen, num_classes, in_channels)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
