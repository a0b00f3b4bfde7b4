"""ResNet-18/34 for 32x32 inputs (3x3 stem, no max-pool), the CIFAR variant of the DFKD literature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: list[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._stage(64, blocks_per_stage[0], stride=1)
        self.layer2 = self._stage(128, blocks_per_stage[1], stride=2)
        self.layer3 = self._stage(256, blocks_per_stage[2], stride=2)
        self.layer4 = self._stage(512, blocks_per_stage[3], stride=2)
        self.linear = nn.Linear(512, num_classes)
        self.feature_dim = 512

    def _stage(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.classify(features)
        return (logits, features) if return_features else logits

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from penultimate features (the last, linear layer)."""
        return self.linear(features)

    def attention_points(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model("resnet34")
def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels)
