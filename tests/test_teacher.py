"""Teacher training options: the crop shift, and the cache key that tells teachers apart."""
from __future__ import annotations

import pytest

from conftest import TINY
from cpsc_dfkd import teacher
from cpsc_dfkd.config import resolve
from cpsc_dfkd.errors import UserError


def test_teachers_cached_before_the_padding_option_keep_their_cache_key():
    # The hash of the fashion-mnist preset's seed-0 teacher, as cached (and quoted in the README) before
    # teacher.augment_padding existed; null must not change it, an explicit shift must.
    default = teacher.teacher_cache_path(resolve("fashion-mnist", ["seed=0", "teacher.augment_padding=null"]))
    assert default.name == "fashion-mnist-lenet5_bn-37e2397fe6.pt"
    shifted = teacher.teacher_cache_path(resolve("fashion-mnist", ["seed=0", "teacher.augment_padding=2"]))
    assert shifted != default


@pytest.mark.parametrize("padding, expected", [(None, 4), (0, 0), (2, 2)])  # digits are shown at 32x32: 32 // 8 = 4
def test_teacher_crops_shift_by_the_configured_padding(tmp_path, monkeypatch, padding, expected):
    seen = []

    def recording_crop_flip(images, padding, flip, generator=None, *, fill):
        seen.append(padding)
        return images

    monkeypatch.setattr(teacher, "random_crop_flip", recording_crop_flip)
    value = "null" if padding is None else str(padding)
    config = resolve("digits-demo", TINY + ["teacher.epochs=1", f"teacher.augment_padding={value}"])
    teacher.train_teacher(config, tmp_path / "t.pt", log=lambda message: None)
    assert seen and set(seen) == {expected}


def test_a_negative_teacher_padding_is_refused_with_the_field_named():
    with pytest.raises(UserError, match="teacher.augment_padding"):
        resolve("digits-demo", ["teacher.augment_padding=-1"])
