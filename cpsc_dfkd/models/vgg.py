"""VGG-11 with BatchNorm for 32x32 inputs (five conv blocks, global average pool, one linear layer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model

VGG11_BLOCKS = [[64], [128], [256, 256], [512, 512], [512, 512]]


def _conv_block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    plain_chain = True  # no skip connections: student.init=teacher can select channels layer by layer

    def __init__(self, blocks: list[list[int]], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        for i, widths in enumerate(blocks):
            setattr(self, f"block{i}", _conv_block(widths, in_channels))
            in_channels = widths[-1]
        self.num_blocks = len(blocks)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.feature_dim = in_channels

    def forward(self, x: torch.Tensor, return_features: bool = False):
        size = x.shape[-1]
        for i in range(self.num_blocks):
            x = F.relu(getattr(self, f"block{i}")(x))
            # Down-sample after the first three blocks; a 64-px input gets a fourth pooling.
            if i < 3 or (i == 3 and size >= 64):
                x = F.max_pool2d(x, 2)
        features = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.classify(features)
        return (logits, features) if return_features else logits

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from penultimate features (the last, linear layer)."""
        return self.classifier(features)

    def attention_points(self) -> list[nn.Module]:
        return [getattr(self, f"block{i}") for i in range(self.num_blocks)]


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(VGG11_BLOCKS, num_classes, in_channels)
