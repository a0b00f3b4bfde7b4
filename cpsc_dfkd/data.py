"""Real data sets: used to train teachers and to evaluate students, never inside distillation.

Where files are looked for, first match wins:

1. an explicit root (``--data-root DIR`` / ``data.root``);
2. ``$CPSC_DFKD_DATA``;
3. ``./data``;
4. Debian's ``/usr/share/datasets/<name>`` (``apt-get install dataset-fashion-mnist``);
5. torchvision's download into ``./data``, only when the user allows it (``data.download=true``).

Inside a root, a data set may sit at the root itself, in ``<root>/<name>`` or in torchvision's own
layout (``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``, ...). Digits needs no files:
scikit-learn ships it.
"""
from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

DEBIAN_DATASETS = Path("/usr/share/datasets")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int  # the size models see (MNIST-like data is padded from 28 to 32)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips are a valid augmentation
    how_to_get: str
    class_names: tuple[str, ...] = ()

    @property
    def crop_padding(self) -> int:
        """Padding of the random-crop augmentation (teacher training, student steps, generator jitter)."""
        return self.image_size // 8

    def padding_or_default(self, padding: int | None) -> int:
        """A configured crop padding, where null means the data set's (``crop_padding``)."""
        return self.crop_padding if padding is None else padding

    @property
    def white(self) -> tuple[float, ...]:
        """A white pixel (value 1) after normalisation, per channel."""
        return tuple((1 - m) / s for m, s in zip(self.mean, self.std))

    @property
    def black(self) -> tuple[float, ...]:
        """A black pixel (value 0) after normalisation, per channel: what crops pad with, as torchvision's
        RandomCrop does before Normalize. (The normalised zero would be a grey of the data's mean.)"""
        return tuple(-m / s for m, s in zip(self.mean, self.std))


_DIGIT_NAMES = tuple(str(i) for i in range(10))
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", 10, 1, 32, (0.3053,), (0.3236,), False,
        "digits ships with scikit-learn: pip install scikit-learn", _DIGIT_NAMES,
    ),
    "mnist": DatasetInfo(
        "mnist", 10, 1, 32, (0.1307,), (0.3081,), False,
        "cpsc-dfkd eval ... --set data.download=true (torchvision downloads MNIST into ./data)", _DIGIT_NAMES,
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, 1, 32, (0.2860,), (0.3530,), True,
        "sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu), or add --set data.download=true",
        ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"),
    ),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
        "add --set data.download=true (torchvision downloads CIFAR-10 into ./data)",
        ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
        "add --set data.download=true (torchvision downloads CIFAR-100 into ./data)",
    ),
    "tiny-imagenet": DatasetInfo(
        "tiny-imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), True,
        "download tiny-imagenet-200.zip from the Stanford CS231n site, unzip it into ./data, and run "
        "python -m cpsc_dfkd.data prepare-tiny-imagenet ./data/tiny-imagenet-200 (sorts val/ into class folders)",
    ),
}

# File names that identify each data set inside a candidate folder: (train, test).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_DIRS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; valid data sets are: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def candidate_roots(explicit_root: str | None = None) -> list[Path]:
    """The folders searched, in order (see the module docstring)."""
    roots = []
    if explicit_root:
        roots.append(Path(explicit_root).expanduser())
    if os.environ.get("CPSC_DFKD_DATA"):
        roots.append(Path(os.environ["CPSC_DFKD_DATA"]).expanduser())
    roots.append(Path("data"))
    roots.append(DEBIAN_DATASETS)
    return roots


def _folders_in(root: Path, name: str) -> list[Path]:
    folders = [root, root / name]
    if name in _TORCHVISION_DIRS:
        folders.append(root / _TORCHVISION_DIRS[name])
    if name in _CIFAR_DIRS:
        folders.append(root / _CIFAR_DIRS[name])
    if name == "tiny-imagenet":
        folders.append(root / "tiny-imagenet-200")
    return folders


def _has_split(folder: Path, name: str, split: str) -> bool:
    if name in _TORCHVISION_DIRS:
        return all(_idx_path(folder, f) is not None for f in _IDX_FILES[split])
    if name in _CIFAR_DIRS:
        return (folder / ("test_batch" if name == "cifar10" else "test")).exists() if split == "test" else (
            (folder / "data_batch_1").exists() if name == "cifar10" else (folder / "train").exists()
        )
    if name == "tiny-imagenet":
        return (folder / ("val" if split == "test" else "train")).is_dir()
    return False


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, split: str, explicit_root: str | None = None) -> Path | None:
    """The first folder, in search order, that holds ``split`` of ``name``; None if there is none."""
    for root in candidate_roots(explicit_root):
        for folder in _folders_in(root, name):
            try:
                if _has_split(folder, name, split):
                    return folder
            except PermissionError:
                raise UserError(f"cannot read data folder {folder}: permission denied; fix its permissions") from None
    return None


def _missing_error(name: str, split: str, explicit_root: str | None) -> UserError:
    looked = "\n".join(f"  - {r}" for r in candidate_roots(explicit_root))
    return UserError(
        f"the {split} split of {name!r} was not found. Looked in, in order:\n{looked}\n"
        f"To get it: {DATASETS[name].how_to_get}"
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}. The file may be truncated; fetch it again.") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise UserError(f"{path} is not an IDX file (bad magic number); fetch it again")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated ({data.size} of {int(np.prod(dims))} values); fetch it again")
    return data.reshape(dims)


class TensorImages(torch.utils.data.Dataset):
    """Normalised images held in memory as one tensor, with labels; batches are slices, not per-item work."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo):
        self.images, self.labels, self.info = images, labels.long(), info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]


def _normalise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images - mean) / std


def _load_digits(split: str, info: DatasetInfo) -> TensorImages:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.25, stratify=digits.target, random_state=0
    )
    idx = train_idx if split == "train" else test_idx
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    x = F.interpolate(x, size=info.image_size, mode="bilinear", align_corners=False).clamp(0, 1)
    return TensorImages(_normalise(x, info), torch.from_numpy(digits.target[idx]), info)


def _load_idx(folder: Path, split: str, info: DatasetInfo) -> TensorImages:
    image_file, label_file = (_idx_path(folder, stem) for stem in _IDX_FILES[split])
    images = torch.from_numpy(_read_idx(image_file).copy()).float().div_(255).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(label_file).astype(np.int64))
    if len(images) != len(labels):
        raise UserError(f"{image_file} and {label_file} disagree on the number of samples; fetch them again")
    pad = (info.image_size - images.shape[-1]) // 2
    images = F.pad(images, (pad, pad, pad, pad))
    return TensorImages(_normalise(images, info), labels, info)


def _load_cifar(folder: Path, split: str, info: DatasetInfo) -> TensorImages:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if info.name == "cifar10" else CIFAR100
    dataset = cls(str(folder.parent), train=split == "train", download=False)
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float().div_(255)
    return TensorImages(_normalise(images, info), torch.tensor(dataset.targets), info)


def _load_image_folder(folder: Path, split: str, info: DatasetInfo) -> torch.utils.data.Dataset:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize(info.image_size), transforms.ToTensor(), transforms.Normalize(info.mean, info.std)
    ])
    dataset = datasets.ImageFolder(str(folder / ("val" if split == "test" else "train")), transform=transform)
    dataset.info = info
    return dataset


def _download(name: str, split: str) -> None:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}.get(name)
    if cls is None:
        raise UserError(f"{name!r} cannot be downloaded automatically. To get it: {DATASETS[name].how_to_get}")
    try:
        cls("data", train=split == "train", download=True)
    except Exception as exc:  # network errors come in many types
        raise UserError(f"downloading {name!r} failed ({exc}). To get it: {DATASETS[name].how_to_get}") from None


def load_split(name: str, split: str, root: str | None = None, download: bool = False) -> torch.utils.data.Dataset:
    """Load the ``train`` or ``test`` split of a data set, normalised, at the size models expect."""
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return _load_digits(split, info)
    folder = locate(name, split, root)
    if folder is None and download:
        _download(name, split)
        folder = locate(name, split, root)
    if folder is None:
        raise _missing_error(name, split, root)
    if name in _TORCHVISION_DIRS:
        return _load_idx(folder, split, info)
    if name in _CIFAR_DIRS:
        return _load_cifar(folder, split, info)
    return _load_image_folder(folder, split, info)


def iterate_batches(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool = False,
                    generator: torch.Generator | None = None, num_workers: int = 0, pin_memory: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from an in-memory data set by slicing, or from a DataLoader for image folders."""
    if isinstance(dataset, TensorImages):
        yield from dataset.batches(batch_size, shuffle, generator)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                         num_workers=num_workers, pin_memory=pin_memory)
    yield from loader


def draw_crop_flip(n: int, padding: int, flip: bool, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random crop offsets (dy, dx in [0, 2 * padding]) and flip decisions, on the CPU."""
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flips


def apply_crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor,
                    *, fill: tuple[float, ...]) -> torch.Tensor:
    """Crop each padded image at its offsets and flip those marked: one gather picks each image's rows, a
    second its columns (half the time of one four-index lookup on CPU). The padding is ``fill`` per channel:
    ``DatasetInfo.black`` for normalised images (their 0 is the data's mean grey)."""
    n, channels, h, w = images.shape
    device = images.device
    value = torch.tensor(fill, dtype=images.dtype, device=device).view(1, channels, 1, 1)
    padded = value.expand(n, channels, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = images
    rows = dy.to(device)[:, None] + torch.arange(h, device=device)
    cols = dx.to(device)[:, None] + torch.arange(w, device=device)
    cols = torch.where(flips.to(device)[:, None], cols.flip(1), cols)
    cropped_rows = padded.gather(2, rows[:, None, :, None].expand(n, channels, h, w + 2 * padding))
    return cropped_rows.gather(3, cols[:, None, None, :].expand(n, channels, h, w))


def draw_affine(n: int, share: float, scale: float, degrees: float, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample affine maps (n x 2 x 3, for ``F.affine_grid``) on the CPU, and which rows they move: a
    ``share`` of the rows stretch each axis by its own factor in [1 - scale, 1 + scale] and turn by up
    to ``degrees``; the other rows are the identity."""
    on = (torch.rand(n, generator=generator) < share).float()
    stretch = 1 + on[:, None] * scale * (2 * torch.rand(n, 2, generator=generator) - 1)
    angle = on * math.radians(degrees) * (2 * torch.rand(n, generator=generator) - 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates: content stretched by s is read at 1 / s.
    sx, sy, zero = stretch[:, 0], stretch[:, 1], torch.zeros(n)
    theta = torch.stack([torch.stack([cos / sx, -sin / sx, zero], 1), torch.stack([sin / sy, cos / sy, zero], 1)], 1)
    return theta, on.bool()


def apply_affine(images: torch.Tensor, theta: torch.Tensor, *, fill: tuple[float, ...]) -> torch.Tensor:
    """Warp each image by its own map (bilinear); pixels from outside the image take ``fill`` per channel."""
    value = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images - value, grid, align_corners=False) + value


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None,
                     *, fill: tuple[float, ...]) -> torch.Tensor:
    """Per-sample random crops (padded with ``fill`` per channel) and optional horizontal flips of a whole batch."""
    return apply_crop_flip(images, padding, *draw_crop_flip(images.shape[0], padding, flip, generator), fill=fill)


def denormalise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Back to [0, 1] for display."""
    mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)


def _prepare_tiny_imagenet(folder: Path) -> None:
    """Move Tiny-ImageNet's val images into one folder per class, as ImageFolder expects."""
    val = folder / "val"
    annotations = val / "val_annotations.txt"
    if not annotations.exists():
        raise UserError(f"{annotations} not found: is {folder} an unzipped tiny-imagenet-200?")
    for line in annotations.read_text().splitlines():
        image, wnid = line.split("\t")[:2]
        source = val / "images" / image
        if source.exists():
            (val / wnid).mkdir(exist_ok=True)
            source.rename(val / wnid / image)
    if (val / "images").is_dir() and not any((val / "images").iterdir()):
        (val / "images").rmdir()


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "prepare-tiny-imagenet":
        _prepare_tiny_imagenet(Path(sys.argv[2]))
    else:
        print("usage: python -m cpsc_dfkd.data prepare-tiny-imagenet DIR")
