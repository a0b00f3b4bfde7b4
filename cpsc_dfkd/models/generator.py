"""Generators that turn noise (and, for CPSC-DFKD, a class label) into synthetic images.

``ConditionalGenerator`` is CPSC-DFKD's class-conditional generator: every normalisation layer
is a categorical conditional batch norm, i.e. a BatchNorm without affine parameters followed by
a per-class scale and shift looked up in two embedding tables (the paper's categorical feature
embedding, CFE). ``UnconditionalGenerator`` is the DAFL/DFAD generator with plain BatchNorm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are chosen by the class label (CFE)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.scale = nn.Embedding(num_classes, num_features)
        self.shift = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma = self.scale(y)[:, :, None, None]
        beta = self.shift(y)[:, :, None, None]
        return self.bn(x) * gamma + beta


class _UnconditionalNorm(nn.Module):
    """BatchNorm with the conditional norm's call signature, so both generators share one body."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.bn(x)


# Nearest x2 up-sampling followed by a 3-tap kernel w (padding 1) is a transposed convolution of stride 2 with
# the 4-tap kernel (w2, w1 + w2, w0 + w1, w0) (padding 1): row r says which taps of w add up to tap r.
_UPSAMPLE_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


class UpsampleConv2d(nn.Conv2d):
    """Nearest x2 up-sampling followed by this 3x3 convolution (padding 1), as one transposed convolution.

    After nearest up-sampling, the 3x3 window of an output pixel covers a 2x2 block of input pixels, with
    some taps summed onto the same input pixel. A transposed convolution of stride 2 with a 4x4 kernel built
    from the 3x3 one (``_UPSAMPLE_TAPS``) computes exactly that: the same parameters and values as
    ``interpolate`` + ``nn.Conv2d`` (up to the order of float sums), with 16 instead of 36 multiply-adds per
    input pixel and channel pair, and no up-sampled map to store.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = _UPSAMPLE_TAPS.to(self.weight)
        # kernel[i, o, r, s] = sum over u, v of taps[r, u] * weight[o, i, u, v] * taps[s, v]
        kernel = torch.einsum("ru,oiuv,sv->iors", taps, self.weight, taps)
        return F.conv_transpose2d(x, kernel, self.bias, stride=2, padding=1)


def _num_upsamplings(image_size: int) -> int:
    if image_size not in (16, 32, 64):
        raise UserError(f"generator image_size must be 16, 32 or 64, got {image_size}")
    return 3 if image_size == 64 else 2


class _Generator(nn.Module):
    """Linear -> norm -> (upsample, conv3x3, norm, LeakyReLU) x k -> conv3x3 -> tanh -> norm.
    Each upsample + conv3x3 pair is one ``UpsampleConv2d``.

    With ``pixel_range=(low, high)`` (per channel, normalised units) the output is instead
    ``low + (high - low) * sigmoid(conv)``: every pixel is a valid one, and black is easy to make.
    """

    norm_layer: type[nn.Module]
    conditional: bool

    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3, num_classes: int = 10,
                 pixel_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
        super().__init__()
        ups = _num_upsamplings(image_size)
        self.nz, self.num_classes, self.image_size, self.channels = nz, num_classes, image_size, channels
        self.init_size = image_size // 2**ups
        self.project = nn.Linear(nz, 2 * ngf * self.init_size**2)
        self.norm0 = self.norm_layer(2 * ngf, num_classes)
        # The first up-sampling keeps 2*ngf channels; the last one drops to ngf (method.md layout).
        widths = [2 * ngf] * ups + [ngf]
        self.convs = nn.ModuleList(UpsampleConv2d(widths[i], widths[i + 1]) for i in range(ups))
        self.norms = nn.ModuleList(self.norm_layer(widths[i + 1], num_classes) for i in range(ups))
        self.to_image = nn.Conv2d(ngf, channels, 3, padding=1)
        if pixel_range is None:  # the paper's output: tanh, then a (conditional) batch norm
            self.norm_out = self.norm_layer(channels, num_classes)
        else:  # a sigmoid onto the data's valid range, black to white in normalised units
            low, high = (torch.tensor(v, dtype=torch.float32).view(1, channels, 1, 1) for v in pixel_range)
            self.register_buffer("low", low)
            self.register_buffer("span", high - low)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional and y is None:
            raise ValueError("the conditional generator needs class labels y")
        x = self.project(z).view(z.shape[0], -1, self.init_size, self.init_size)
        x = self.norm0(x, y)
        for upsample_conv, norm in zip(self.convs, self.norms):
            x = F.leaky_relu(norm(upsample_conv(x), y), 0.2)
        if hasattr(self, "norm_out"):
            return self.norm_out(torch.tanh(self.to_image(x)), y)
        return self.low + self.span * torch.sigmoid(self.to_image(x))

    def class_embedding_parameters(self) -> list[nn.Parameter]:
        """The per-class scale and shift tables (empty for the unconditional generator)."""
        return [p for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()]


class ConditionalGenerator(_Generator):
    """G(z, y): CPSC-DFKD's class-conditional generator with per-class conditional batch norm."""

    norm_layer = ConditionalBatchNorm2d
    conditional = True


class UnconditionalGenerator(_Generator):
    """G(z): the DAFL / DFAD generator; same body, plain BatchNorm, no label."""

    norm_layer = _UnconditionalNorm
    conditional = False


class GeneratorEnsemble(nn.Module):
    """K generators of one kind, each with its own initialisation, sharing every batch.

    Row i goes to member ``r % K``, where r counts the earlier rows of i's class (of the batch, for an
    unconditional ensemble): every member makes an equal share of every class, whatever order the labels
    come in. Each member normalises over its own rows. One generator tends to settle on one look per class;
    K generators settle on K looks, which the student then sees side by side.
    """

    def __init__(self, members: list[_Generator]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least 2 generators")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.conditional = first.conditional
        self.nz, self.num_classes, self.image_size, self.channels = (first.nz, first.num_classes,
                                                                     first.image_size, first.channels)

    def assign(self, batch_size: int, y: torch.Tensor | None) -> torch.Tensor:
        """The member that makes each row."""
        if y is None:
            rank = torch.arange(batch_size)
        else:
            one_hot = F.one_hot(y.cpu(), self.num_classes)
            rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
        return (rank % len(self.members)).to(y.device if y is not None else "cpu")

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional and y is None:
            raise ValueError("the conditional generator needs class labels y")
        owner = self.assign(z.shape[0], y).to(z.device)
        parts, rows = [], []
        for k, member in enumerate(self.members):
            mine = (owner == k).nonzero().squeeze(1)
            if mine.numel():
                parts.append(member(z[mine], None if y is None else y[mine]))
                rows.append(mine)
        images = torch.cat(parts)
        return torch.empty_like(images).index_copy_(0, torch.cat(rows), images)

    def class_embedding_parameters(self) -> list[nn.Parameter]:
        return [p for member in self.members for p in member.class_embedding_parameters()]


def create_generator(
    conditional: bool, nz: int, ngf: int, image_size: int, channels: int, num_classes: int, members: int = 1,
    pixel_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> _Generator | GeneratorEnsemble:
    """One generator, or ``members`` > 1 of them (each with its own initialisation) as a GeneratorEnsemble.
    ``pixel_range`` (low, high per channel) swaps the tanh + batch-norm output for a sigmoid onto that range."""
    if members < 1:
        raise UserError(f"generator.members must be an integer >= 1, got {members}")
    cls = ConditionalGenerator if conditional else UnconditionalGenerator
    made = [cls(nz=nz, ngf=ngf, image_size=image_size, channels=channels, num_classes=num_classes,
                pixel_range=pixel_range) for _ in range(members)]
    return made[0] if members == 1 else GeneratorEnsemble(made)
