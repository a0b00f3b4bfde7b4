"""Figures shared by the CLI, the notebooks and the dashboard."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def class_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int | None = None,
               padding: int = 2) -> torch.Tensor:
    """One row per class (classes with fewer images are padded with blank tiles), as a [C, H, W] image."""
    per_class = per_class or max(1, int(torch.bincount(labels, minlength=num_classes).max()))
    blank = torch.ones_like(images[0]) if len(images) else None
    tiles = []
    for c in range(num_classes):
        of_class = images[labels == c][:per_class]
        tiles.extend(list(of_class))
        tiles.extend([blank] * (per_class - len(of_class)))
    return make_grid(torch.stack(tiles), nrow=per_class, padding=padding, pad_value=1.0)


def save_class_grid(path: Path, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    per_class: int | None = None) -> None:
    """Write a per-class grid to a PNG (the directory is created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(class_grid(images, labels, num_classes, per_class), str(path))
