"""Teachers: train one on real data, evaluate any classifier, load checkpoints safely, cache teachers.

A teacher checkpoint records what it is (architecture, data set, class count, test accuracy) next to
its weights, so ``distill`` can refuse a teacher that does not fit the data set. Checkpoints published
by other DFKD code bases (a bare state dict, or one under ``state_dict``/``model``) load too, with
the architecture taken from ``teacher.arch``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from . import distributed
from .config import Config, TeacherConfig, to_dict
from .data import dataset_info, iterate_batches, load_split, random_crop_flip
from .errors import UserError
from .models import create_model
from .runs import check_state_dict, load_checkpoint, save_checkpoint
from .runtime import lr_at, seed_everything, select_device, select_precision, set_lr

TEACHER_FORMAT = 1


@torch.no_grad()
def evaluate(model: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device, batch_size: int = 1024,
             autocast: Callable[[], Any] | None = None) -> float:
    """Top-1 accuracy (%) on ``dataset``; under torchrun each rank scores a shard and the counts are summed."""
    was_training = model.training
    model.eval()
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1:
        dataset = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    pin = device.type == "cuda"
    for images, labels in iterate_batches(dataset, batch_size, pin_memory=pin):
        images = images.to(device, non_blocking=pin)
        labels = labels.to(device, non_blocking=pin)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits = model(images)
        counts[0] += (logits.argmax(1) == labels).sum()
        counts[1] += labels.numel()
    counts = distributed.all_reduce_sum(counts)
    model.train(was_training)
    return float(100.0 * counts[0] / counts[1].clamp(min=1))


def teacher_cache_path(config: Config) -> Path:
    """Where a teacher trained with this config is cached: ``$CPSC_DFKD_CACHE`` or ``~/.cache/cpsc-dfkd``."""
    base = Path(os.environ.get("CPSC_DFKD_CACHE", Path.home() / ".cache" / "cpsc-dfkd")).expanduser()
    # Unset optional fields (None) are left out, so adding one keeps the keys of teachers cached before it.
    training = {key: value for key, value in to_dict(config)["teacher"].items()
                if key != "checkpoint" and value is not None}
    # "crop_fill": teachers cached before crops padded with black (they padded with the data's mean grey) are
    # not reused.
    recipe = {"teacher": training, "data": config.data.name, "seed": config.seed, "crop_fill": "black"}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return base / "teachers" / f"{config.data.name}-{config.teacher.arch}-{digest}.pt"


def teacher_lr(step: int, tc: TeacherConfig, steps_per_epoch: int) -> float:
    """The teacher's learning rate at ``step``: a half-epoch warm-up, then cosine decay to zero at the end of
    training; with ``swa_epochs`` the cosine ends at ``swa_lr`` where the last swa_epochs epochs begin and the lr
    stays there while their weights are averaged."""
    warmup = steps_per_epoch // 2
    if tc.swa_epochs is None:
        return lr_at(step, tc.lr, tc.epochs * steps_per_epoch, warmup_steps=warmup)
    swa_lr = tc.lr / 5 if tc.swa_lr is None else tc.swa_lr
    decay_steps = (tc.epochs - tc.swa_epochs) * steps_per_epoch
    if step >= decay_steps:
        return swa_lr
    return swa_lr + (tc.lr - swa_lr) * lr_at(step, 1.0, decay_steps, warmup_steps=warmup)


def train_teacher(config: Config, out_path: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config.teacher.arch`` on the real training split and save a teacher checkpoint."""
    info = dataset_info(config.data.name)
    device = select_device(config.device)
    precision = select_precision(config.amp, device)
    seed_everything(config.seed)
    train_set = load_split(config.data.name, "train", config.data.root, config.data.download)
    test_set = load_split(config.data.name, "test", config.data.root, config.data.download)
    model = create_model(config.teacher.arch, info.num_classes, info.channels).to(device)
    tc = config.teacher
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
                                nesterov=tc.momentum > 0)
    scaler = precision.make_scaler()
    steps_per_epoch = math.ceil(len(train_set) / tc.batch_size)
    shuffle_rng = torch.Generator().manual_seed(config.seed)
    padding = info.padding_or_default(tc.augment_padding)

    def training_batches():
        for images, labels in iterate_batches(train_set, tc.batch_size, shuffle=True, generator=shuffle_rng):
            if tc.augment:
                images = random_crop_flip(images, padding=padding, flip=info.flip, generator=shuffle_rng,
                                          fill=info.black)
            yield images.to(device), labels.to(device)

    averaged = AveragedModel(model) if tc.swa_epochs else None
    start, step = time.time(), 0
    for epoch in range(tc.epochs):
        model.train()
        running = 0.0
        for images, labels in training_batches():
            set_lr(optimizer, teacher_lr(step, tc, steps_per_epoch))
            with precision.autocast():
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += loss.detach()
            step += 1
        if averaged is not None and epoch >= tc.epochs - tc.swa_epochs:
            averaged.update_parameters(model)
        if (epoch + 1) % max(1, tc.epochs // 5) == 0 or epoch + 1 == tc.epochs:
            acc = evaluate(model, test_set, device, config.data.eval_batch_size, precision.autocast)
            log(f"teacher epoch {epoch + 1}/{tc.epochs}: loss {float(running) / steps_per_epoch:.4f}, "
                f"test acc {acc:.2f}% ({time.time() - start:.0f}s)")
    if averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
        update_bn(training_batches(), model)  # the averaged weights need their own BatchNorm statistics
        log(f"teacher: weights averaged over the last {tc.swa_epochs} epoch{'s' if tc.swa_epochs > 1 else ''}")
    test_acc = evaluate(model, test_set, device, config.data.eval_batch_size)
    state = {
        "kind": "teacher", "format": TEACHER_FORMAT, "arch": tc.arch, "dataset": info.name,
        "num_classes": info.num_classes, "in_channels": info.channels, "test_acc": test_acc,
        "train_seconds": time.time() - start, "config": to_dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if out_path is not None:
        save_checkpoint(Path(out_path), state)
    return state


def load_classifier(path: str | Path, arch: str | None = None, dataset: str | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a teacher, student or run checkpoint, or a plain state dict (which needs ``arch`` and ``dataset``).

    Returns the model in eval mode and what the checkpoint says about itself.
    """
    state = load_checkpoint(path)
    kind = state.get("kind")
    if kind in ("teacher", "student"):
        meta = {k: v for k, v in state.items() if k != "state_dict"}
        weights = state["state_dict"]
    elif kind == "distill":
        saved = state["config"]
        meta = {"kind": kind, "arch": saved["student"]["arch"], "dataset": saved["data"]["name"],
                "iteration": state["iteration"]}
        weights = state["student"]
    elif kind is None:
        weights = state.get("state_dict", state.get("model", state))
        if arch is None:
            raise UserError(f"{path} is a plain state dict that does not say its architecture; pass --arch NAME")
        meta = {"kind": "external", "arch": arch, "dataset": dataset, "test_acc": None}
    else:
        raise UserError(f"{path} is a {kind!r} checkpoint, which holds no classifier")
    arch = meta["arch"]
    if meta.get("dataset") is None:
        raise UserError(f"{path} does not say which data set it is for; pass the data set (--dataset NAME)")
    info = dataset_info(meta["dataset"])
    model = create_model(arch, info.num_classes, info.channels)
    check_state_dict(model, weights, f"checkpoint {path}")
    model.load_state_dict(weights)
    return model.eval(), meta


def load_teacher(path: str | Path, config: Config) -> tuple[nn.Module, dict[str, Any]]:
    """Load a teacher for ``config``'s data set; refuses one of another data set, class count or shape."""
    model, meta = load_classifier(path, config.teacher.arch, config.data.name)
    if meta.get("kind") == "distill":
        raise UserError(f"{path} is a distillation run checkpoint; pass a teacher checkpoint "
                        "(made by cpsc-dfkd teacher) or a plain state dict")
    if meta["dataset"] != config.data.name:
        raise UserError(f"teacher {path} was made for {meta['dataset']!r}, but data.name is {config.data.name!r}; "
                        "pass a teacher for this data set or change --preset/--set data.name")
    return model.requires_grad_(False), meta


def obtain_teacher(config: Config, log: Callable[[str], None] = print) -> tuple[nn.Module, dict[str, Any], Path]:
    """The teacher a distillation run uses: ``teacher.checkpoint`` if set, else a cached or newly trained one."""
    if config.teacher.checkpoint:
        path = Path(config.teacher.checkpoint)
    else:
        path = teacher_cache_path(config)
        if path.exists():
            log(f"reusing cached teacher {path}")
        elif distributed.is_main():
            log(f"no teacher given: training {config.teacher.arch} on {config.data.name} (cached at {path})")
            train_teacher(config, path, log=log)
        distributed.barrier()
    model, meta = load_teacher(path, config)
    return model, meta, path
