"""Shared fixtures: a tiny digits configuration that runs in seconds, and a teacher trained once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"

# A run small enough for unit tests: a few iterations of the whole loop on digits.
TINY = [
    "teacher.epochs=3", "generator.nz=16", "generator.ngf=8", "distill.iterations=4", "distill.batch_size=20",
    "distill.log_every=2", "distill.eval_every=2", "distill.sample_every=2", "distill.checkpoint_every=2",
    "distill.memory_batches=3",
]

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Teachers trained by tests go to a private cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("CPSC_DFKD_CACHE")
    os.environ["CPSC_DFKD_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("CPSC_DFKD_CACHE", None)
    else:
        os.environ["CPSC_DFKD_CACHE"] = previous


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A LeNet-5-BN teacher trained for three epochs on digits (about a second; 97% on the test split, every
    class at 89% or more, as the diagnostics tests need)."""
    from cpsc_dfkd.config import resolve
    from cpsc_dfkd.teacher import train_teacher

    path = tmp_path_factory.mktemp("teacher") / "digits-teacher.pt"
    train_teacher(resolve("digits-demo", TINY), path, log=lambda message: None)
    return path


def tiny_config(*overrides: str, teacher: Path | None = None):
    from cpsc_dfkd.config import resolve

    extra = {"teacher": {"checkpoint": str(teacher)}} if teacher else None
    return resolve("digits-demo", TINY + list(overrides), extra)
