"""Teacher training options: the crop shift, weight averaging, and the cache key that tells teachers apart."""
from __future__ import annotations

import pytest
import torch

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


def test_weight_averaging_is_off_by_default_and_keeps_the_cache_key():
    preset = resolve("fashion-mnist", ["seed=0"])
    assert preset.teacher.swa_epochs is None
    assert teacher.teacher_cache_path(preset) == teacher.teacher_cache_path(
        resolve("fashion-mnist", ["seed=0", "teacher.swa_epochs=null", "teacher.swa_lr=null"]))
    assert teacher.teacher_cache_path(resolve("fashion-mnist", ["seed=0", "teacher.swa_epochs=8"])) != \
        teacher.teacher_cache_path(preset)


def test_with_weight_averaging_the_lr_decays_to_swa_lr_and_stays_there():
    tc = resolve("fashion-mnist", ["teacher.epochs=10", "teacher.swa_epochs=4", "teacher.lr=0.05"]).teacher
    steps_per_epoch = 100
    lrs = [teacher.teacher_lr(step, tc, steps_per_epoch) for step in range(10 * steps_per_epoch)]
    peak = max(lrs)
    assert peak == pytest.approx(0.05)
    assert lrs.index(peak) == steps_per_epoch // 2 - 1  # the end of the half-epoch warm-up
    decaying = lrs[steps_per_epoch // 2: 6 * steps_per_epoch]
    assert all(a >= b for a, b in zip(decaying, decaying[1:]))
    assert min(decaying) > 0.01  # the cosine ends at swa_lr = lr / 5, never below it
    assert lrs[6 * steps_per_epoch:] == [pytest.approx(0.01)] * (4 * steps_per_epoch)
    plain = resolve("fashion-mnist", ["teacher.epochs=10", "teacher.lr=0.05"]).teacher
    assert teacher.teacher_lr(10 * steps_per_epoch - 1, plain, steps_per_epoch) < 1e-4  # cosine to zero without


def test_weight_averaging_keeps_the_mean_of_the_last_epochs_weights(tmp_path, monkeypatch):
    epoch_ends = []
    original_update = teacher.AveragedModel.update_parameters

    def recording_update(self, model):
        epoch_ends.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return original_update(self, model)

    monkeypatch.setattr(teacher.AveragedModel, "update_parameters", recording_update)
    config = resolve("digits-demo", TINY + ["teacher.epochs=3", "teacher.swa_epochs=2"])
    messages = []
    state = teacher.train_teacher(config, tmp_path / "t.pt", log=messages.append)
    assert len(epoch_ends) == 2  # the ends of epochs 2 and 3
    for name, _ in teacher.create_model(config.teacher.arch, 10, 1).named_parameters():
        mean = (epoch_ends[0][name] + epoch_ends[1][name]) / 2
        assert torch.allclose(state["state_dict"][name], mean, atol=1e-6), name
    # The BatchNorm statistics are recomputed for the averaged weights, not left at the initial ones.
    running_mean = next(v for k, v in state["state_dict"].items() if k.endswith("running_mean"))
    assert running_mean.abs().sum() > 0
    assert any("averaged over the last 2 epochs" in m for m in messages)
    assert (tmp_path / "t.pt").exists()


def test_averaging_more_epochs_than_the_teacher_trains_is_refused():
    with pytest.raises(UserError, match=r"teacher.swa_epochs \(5\) must be smaller than teacher.epochs \(5\)"):
        resolve("digits-demo", ["teacher.epochs=5", "teacher.swa_epochs=5"])
    with pytest.raises(UserError, match="teacher.swa_lr"):
        resolve("digits-demo", ["teacher.swa_epochs=1", "teacher.swa_lr=0"])
