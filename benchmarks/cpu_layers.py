"""The kit's faster layers against PyTorch's own, on this machine: the LeNets' CPU shortcuts
(cpsc_dfkd/models/cpu_layers.py) and the generators' up-sampling convolution (models/generator.py).

    python benchmarks/cpu_layers.py                 # batch 256, torch's default thread count
    python benchmarks/cpu_layers.py --batch 64 --repeats 50

Times each layer of LeNet-5-BN (teacher) and LeNet-5-half-BN (student) that the kit replaces, in the
situation where the loop uses it: the first convolution forward and backward to the image (the generator
step), and 2x2 max pooling without a gradient (the teacher's forward in every student step; with a gradient
the shortcut is ``nn.MaxPool2d`` itself). Also the generators' nearest x2 up-sampling + 3x3 convolution,
forward and backward to input and weights, as ``F.interpolate`` + ``nn.Conv2d`` and as ``UpsampleConv2d`` (one
generator of the Fashion-MNIST preset on the whole batch). Prints a markdown table: ms per call for each
layer, PyTorch's and the kit's, and their ratio.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from throughput import timed  # benchmarks/throughput.py: seconds per call after two warm-up calls
from torch import nn

from cpsc_dfkd.models.cpu_layers import InputConv2d, MaxPool2x2
from cpsc_dfkd.models.generator import UpsampleConv2d

CPU = torch.device("cpu")


def ms_per_call(fn, repeats: int) -> float:
    return timed(fn, repeats, CPU) * 1000


def pool_without_gradient(layer: nn.Module, maps: torch.Tensor):
    def call():
        with torch.no_grad():
            layer(maps)
    return call


def forward_backward(forward, layer: nn.Module, maps: torch.Tensor, upstream: torch.Tensor):
    """A call of ``forward`` on ``maps`` and its backward pass, with the gradients of both cleared first."""
    def call():
        maps.grad = None
        layer.zero_grad(set_to_none=True)
        forward(maps).backward(upstream)
    return call


def rows(batch: int, repeats: int) -> list[tuple[str, float, float]]:
    table = []
    for net, width in (("teacher", 6), ("student", 3)):
        torch.manual_seed(0)
        theirs = nn.Conv2d(1, width, 5).requires_grad_(False)  # the generator step trains no network weights
        ours = InputConv2d(1, width, 5).requires_grad_(False)
        ours.load_state_dict(theirs.state_dict())
        images = torch.randn(batch, 1, 32, 32, requires_grad=True)
        upstream = torch.randn(batch, width, 28, 28)
        table.append((f"{net} conv1 (1 -> {width}), forward + backward to the image",
                      ms_per_call(forward_backward(theirs, theirs, images, upstream), repeats),
                      ms_per_call(forward_backward(ours, ours, images, upstream), repeats)))
    for shape in ((6, 28, 28), (16, 10, 10), (3, 28, 28), (8, 10, 10)):
        maps = torch.relu(torch.randn(batch, *shape))
        table.append((f"max pool 2x2 of {'x'.join(map(str, shape))}, no gradient",
                      ms_per_call(pool_without_gradient(nn.MaxPool2d(2), maps), repeats),
                      ms_per_call(pool_without_gradient(MaxPool2x2(), maps), repeats)))
    for c_in, c_out, size in ((16, 16, 8), (16, 8, 16)):
        torch.manual_seed(0)
        ours = UpsampleConv2d(c_in, c_out)
        theirs = nn.Conv2d(c_in, c_out, 3, padding=1)
        theirs.load_state_dict(ours.state_dict())
        maps = torch.randn(batch, c_in, size, size, requires_grad=True)
        upstream = torch.randn(batch, c_out, 2 * size, 2 * size)
        table.append((f"generator up-sampling {size}x{size} -> {2 * size}x{2 * size} + conv3x3 ({c_in} -> {c_out}), "
                      "forward + backward",
                      ms_per_call(forward_backward(lambda x: theirs(F.interpolate(x, scale_factor=2)), theirs, maps,
                                                   upstream), repeats),
                      ms_per_call(forward_backward(ours, ours, maps, upstream), repeats)))
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}\n")
    print("| layer | nn (ms) | kit (ms) | nn / kit |")
    print("|---|---|---|---|")
    for label, nn_ms, kit_ms in rows(args.batch, args.repeats):
        print(f"| {label} | {nn_ms:.2f} | {kit_ms:.2f} | {nn_ms / kit_ms:.2f}x |")


if __name__ == "__main__":
    main()
