"""Drop-in replacements for two LeNet layers that PyTorch runs slowly on CPUs with AVX-512.

PyTorch hands CPU convolutions and pooling to oneDNN, which on AVX-512 works in blocks of 16 channels.
LeNets on grey images have narrow layers, and two of their operations suffer from it (Intel Xeon, 2 threads,
batch 256 of 32x32 images, measured by ``benchmarks/cpu_layers.py``; what it does to a whole run is row FAST
of ``docs/fashion-mnist-tuning-log.md``):

- The gradient of the first convolution with respect to its one-channel input, which the generator step
  needs for the teacher and for the student, is computed on 16 channels of which 15 are thrown away:
  25 ms against 4 ms for the forward pass. That gradient is itself a convolution (the output gradient
  correlated with the flipped kernel), and run as one it takes 10 ms.
- 2x2 max pooling of a 256x6x28x28 map takes 7 ms; two element-wise maxima of strided views take 1 ms.
  The teacher's forward pass in every student step needs no gradient, and there the maxima serve.

Both layers compute the same values as the ones they replace: the pooling bit for bit, the convolution's
input gradient up to the order of its sums. Elsewhere (other devices, autocast, shapes the shortcuts do not
cover) they run PyTorch's own layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _on_plain_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


class _ConvWithInputGradAsConv(torch.autograd.Function):
    """conv2d (stride 1, no dilation, one group) whose input gradient is computed as a plain convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (pad_h, pad_w), (k_h, k_w) = ctx.padding, weight.shape[-2:]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(-2, -1).transpose(0, 1)
            grad_x = F.conv2d(grad, flipped, padding=(k_h - 1 - pad_h, k_w - 1 - pad_w))
        want_weight, want_bias = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if want_weight or want_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], list(ctx.padding), [1, 1],
                False, [0, 0], 1, [False, want_weight, want_bias])
        return grad_x, grad_weight, grad_bias, None


class InputConv2d(nn.Conv2d):
    """A network's first convolution. Same parameters and outputs as ``nn.Conv2d``; on CPU, when the image
    needs a gradient (the generator step), that gradient is computed as a convolution (see module doc)."""

    def _shortcut_applies(self, x: torch.Tensor) -> bool:
        return (x.requires_grad and _on_plain_cpu(x) and self.stride == (1, 1) and self.dilation == (1, 1)
                and self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and all(p < k for p, k in zip(self.padding, self.kernel_size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._shortcut_applies(x):
            return super().forward(x)
        return _ConvWithInputGradAsConv.apply(x, self.weight, self.bias, self.padding)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` that pools even-sized CPU maps by element-wise maxima when no gradient is needed
    (see module doc). With a gradient it is ``nn.MaxPool2d``: there the maxima save nothing, as the backward
    pass must then find where each maximum came from."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and torch.is_grad_enabled()) or x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2 \
                or not _on_plain_cpu(x):
            return super().forward(x)
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])
