"""LeNet-5 (LeCun et al. 1998) as used by DAFL and ZSKD on MNIST and Fashion-MNIST, 32x32 input.

``lenet5_half`` halves every width. The ``_bn`` variants add BatchNorm after each
convolution, which gives the BN-statistics loss something to match.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_model
from .cpu_layers import InputConv2d, MaxPool2x2


class LeNet5(nn.Module):
    plain_chain = True  # no skip connections: student.init=teacher can select channels layer by layer

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0, batch_norm: bool = False):
        super().__init__()
        c1, c2, c3, f1 = (max(1, int(round(c * width))) for c in (6, 16, 120, 84))
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(((in_channels, c1), (c1, c2), (c2, c3))):
            conv = InputConv2d if i == 0 else nn.Conv2d  # same layers, faster on CPU (see cpu_layers)
            layers.append(conv(cin, cout, kernel_size=5))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            if i < 2:
                layers.append(MaxPool2x2())
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c3, f1), nn.ReLU(inplace=True), nn.Linear(f1, num_classes))
        self.feature_dim = f1

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x = self.features(x).flatten(1)
        features = self.fc[1](self.fc[0](x))
        logits = self.classify(features)
        return (logits, features) if return_features else logits

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from penultimate features (the last, linear layer)."""
        return self.fc[2](features)

    def attention_points(self) -> list[nn.Module]:
        """Modules whose outputs feed attention transfer (after each pooling stage)."""
        return [m for m in self.features if isinstance(m, nn.MaxPool2d)]


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels)


@register_model("lenet5_half")
def lenet5_half(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels, width=0.5)


@register_model("lenet5_bn")
def lenet5_bn(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels, batch_norm=True)


@register_model("lenet5_half_bn")
def lenet5_half_bn(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels, width=0.5, batch_norm=True)
