"""Data sets: the bundled digits, the documented search order, IDX parsing and helpful errors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from cpsc_dfkd import data
from cpsc_dfkd.errors import UserError


def write_idx(path, array: np.ndarray, compress: bool = True, truncate: int = 0) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if truncate:
        payload = payload[:-truncate]
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def make_fake_mnist(root, split="test", n=12, compress=True):
    stem_images, stem_labels = data._IDX_FILES[split]
    suffix = ".gz" if compress else ""
    rng = np.random.default_rng(0)
    write_idx(root / f"{stem_images}{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
    write_idx(root / f"{stem_labels}{suffix}", np.arange(n) % 10, compress)


def test_digits_needs_no_files_and_is_normalised_at_32px():
    train, test = data.load_split("digits", "train"), data.load_split("digits", "test")
    assert len(train) + len(test) == 1797
    assert test.images.shape[1:] == (1, 32, 32)
    assert abs(float(train.images.mean())) < 0.1 and abs(float(train.images.std()) - 1) < 0.1
    assert set(test.labels.tolist()) == set(range(10))


def test_idx_files_are_read_and_padded_to_32(tmp_path):
    make_fake_mnist(tmp_path)
    test = data.load_split("fashion-mnist", "test", root=str(tmp_path))
    assert test.images.shape == (12, 1, 32, 32) and test.labels.tolist()[:3] == [0, 1, 2]


def test_uncompressed_and_torchvision_layouts_are_found(tmp_path):
    make_fake_mnist(tmp_path / "FashionMNIST" / "raw", compress=False)
    assert data.locate("fashion-mnist", "test", str(tmp_path)) == tmp_path / "FashionMNIST" / "raw"


def test_search_order_explicit_root_then_environment(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    make_fake_mnist(explicit)
    make_fake_mnist(env / "fashion-mnist")
    monkeypatch.setenv("CPSC_DFKD_DATA", str(env))
    assert data.locate("fashion-mnist", "test", str(explicit)) == explicit
    assert data.locate("fashion-mnist", "test", None) == env / "fashion-mnist"
    roots = data.candidate_roots(str(explicit))
    assert roots[:2] == [explicit, env] and roots[-1] == data.DEBIAN_DATASETS


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CPSC_DFKD_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "debian")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        data.load_split("fashion-mnist", "test", root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "apt-get install dataset-fashion-mnist" in message


def test_truncated_idx_file_is_a_user_error(tmp_path):
    make_fake_mnist(tmp_path)
    stem = data._IDX_FILES["test"][0]
    write_idx(tmp_path / f"{stem}.gz", np.zeros((12, 28, 28)), truncate=100)
    with pytest.raises(UserError, match="truncated"):
        data.load_split("fashion-mnist", "test", root=str(tmp_path))


def test_garbage_idx_file_is_a_user_error(tmp_path):
    make_fake_mnist(tmp_path, compress=False)
    (tmp_path / data._IDX_FILES["test"][0]).write_bytes(b"hello world, not an idx file")
    with pytest.raises(UserError, match="not an IDX file"):
        data.load_split("fashion-mnist", "test", root=str(tmp_path))


def test_unknown_data_set_lists_the_valid_ones():
    with pytest.raises(UserError, match="valid data sets are: .*cifar10"):
        data.load_split("svhn", "test")


def test_random_crop_flip_keeps_shape_and_moves_content():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    out = data.random_crop_flip(images, padding=2, flip=True, generator=torch.Generator().manual_seed(1), fill=(0.0,))
    assert out.shape == images.shape
    assert not torch.equal(out, images)


def test_crop_flip_moves_each_image_by_its_own_offset_and_mirrors_the_flipped_ones():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    dy, dx, flips = torch.tensor([1, 0]), torch.tensor([0, 2]), torch.tensor([False, True])
    out = data.apply_crop_flip(images, 1, dy, dx, flips, fill=(0.0,))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 1:5, 0:4])  # shifted right by one pixel: a zero column enters
    assert torch.equal(out[1], padded[1, :, 0:4, 2:6].flip(-1))
    assert torch.equal(data.apply_crop_flip(images, 1, torch.ones(2, dtype=torch.long), torch.ones(2, dtype=torch.long),
                                            torch.zeros(2, dtype=torch.bool), fill=(0.0,)), images)  # centred crop: unchanged


def test_affine_draws_leave_the_other_rows_as_the_identity_and_stay_in_range():
    theta, moved = data.draw_affine(400, 0.5, 0.2, 10.0, torch.Generator().manual_seed(0))
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    unchanged = (theta == identity).flatten(1).all(1)
    assert torch.equal(unchanged, ~moved)
    assert 120 < unchanged.sum() < 280  # about half the rows
    maps = theta[moved]
    assert torch.all(maps[:, :, 2] == 0)  # no shift: the crops do that
    # each row is R(angle) divided by its stretch: row norms are 1 / stretch, angle from the entries
    stretch = 1 / maps[:, :, :2].norm(dim=2)
    assert torch.all((stretch >= 0.8 - 1e-6) & (stretch <= 1.2 + 1e-6))
    angle = torch.rad2deg(torch.atan2(maps[:, 1, 0], maps[:, 1, 1]))
    assert torch.all(angle.abs() <= 10 + 1e-4) and angle.abs().max() > 5


def test_affine_warp_keeps_identity_rows_and_fills_from_outside_with_black():
    info = data.dataset_info("fashion-mnist")
    images = torch.randn(2, 1, 8, 8)
    shrink = torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[2.0, 0, 0], [0, 2, 0]]])  # row 2: content at half size
    out = data.apply_affine(images, shrink, fill=info.black)
    assert torch.allclose(out[0], images[0], atol=1e-5)
    assert torch.allclose(out[1, 0, 0], torch.full((8,), info.black[0]))  # the border comes from outside
    assert torch.allclose(out[1, 0, :, 0], torch.full((8,), info.black[0]))
    assert not torch.allclose(out[1, 0, 2:6, 2:6], torch.full((4, 4), info.black[0]))  # the image, smaller


def test_crops_pad_with_black_as_torchvision_pads_before_normalising():
    info = data.dataset_info("fashion-mnist")
    black = info.black[0]
    assert black == pytest.approx((0 - 0.2860) / 0.3530)
    images = torch.full((1, 1, 4, 4), 1.5)
    out = data.apply_crop_flip(images, 1, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), fill=info.black)
    assert torch.equal(out[0, 0, 0], torch.full((4,), black))  # the row that enters from above is black
    assert torch.equal(out[0, 0, :, 0], torch.full((4,), black))
    assert torch.equal(out[0, 0, 1:, 1:], torch.full((3, 3), 1.5))  # the image itself is copied exactly
    colour = data.dataset_info("cifar10")
    rgb = data.apply_crop_flip(torch.zeros(1, 3, 4, 4), 1, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]),
                               fill=colour.black)
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor(colour.black))


def test_debian_fashion_mnist_when_installed():
    folder = data.locate("fashion-mnist", "test")
    if folder is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    test = data.load_split("fashion-mnist", "test")
    assert len(test) == 10000 and test.images.shape[1:] == (1, 32, 32)
