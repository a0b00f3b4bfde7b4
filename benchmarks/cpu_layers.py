"""The LeNets' CPU shortcuts (cpsc_dfkd/models/cpu_layers.py) against PyTorch's own layers, on this machine.

    python benchmarks/cpu_layers.py                 # batch 256, torch's default thread count
    python benchmarks/cpu_layers.py --batch 64 --repeats 50

Times each layer of LeNet-5-BN (teacher) and LeNet-5-half-BN (student) that the kit replaces, in the
situation where the loop uses it: the first convolution forward and backward to the image (the generator
step), and 2x2 max pooling without a gradient (the teacher's forward in every student step; with a gradient
the shortcut is ``nn.MaxPool2d`` itself). Prints a markdown table: ms per call for each layer, PyTorch's and
the shortcut's, and their ratio.
"""
from __future__ import annotations

import argparse

import torch
from throughput import timed  # benchmarks/throughput.py: seconds per call after two warm-up calls
from torch import nn

from cpsc_dfkd.models.cpu_layers import InputConv2d, MaxPool2x2

CPU = torch.device("cpu")


def ms_per_call(fn, repeats: int) -> float:
    return timed(fn, repeats, CPU) * 1000


def conv_backward_to_image(conv: nn.Module, images: torch.Tensor, upstream: torch.Tensor):
    def call():
        images.grad = None
        conv(images).backward(upstream)
    return call


def pool_without_gradient(layer: nn.Module, maps: torch.Tensor):
    def call():
        with torch.no_grad():
            layer(maps)
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
                      ms_per_call(conv_backward_to_image(theirs, images, upstream), repeats),
                      ms_per_call(conv_backward_to_image(ours, images, upstream), repeats)))
    for shape in ((6, 28, 28), (16, 10, 10), (3, 28, 28), (8, 10, 10)):
        maps = torch.relu(torch.randn(batch, *shape))
        table.append((f"max pool 2x2 of {'x'.join(map(str, shape))}, no gradient",
                      ms_per_call(pool_without_gradient(nn.MaxPool2d(2), maps), repeats),
                      ms_per_call(pool_without_gradient(MaxPool2x2(), maps), repeats)))
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}\n")
    print("| layer | nn (ms) | shortcut (ms) | nn / shortcut |")
    print("|---|---|---|---|")
    for label, nn_ms, shortcut_ms in rows(args.batch, args.repeats):
        print(f"| {label} | {nn_ms:.2f} | {shortcut_ms:.2f} | {nn_ms / shortcut_ms:.2f}x |")


if __name__ == "__main__":
    main()
