"""Helpers for the tutorial notebooks: one switch for a small CI mode, the data set the notebooks use,
and a live view of training made of ipywidgets.

``CPSC_DFKD_SMOKE=1`` cuts iterations and sizes so that every notebook runs in CI in a minute or two;
without it (the default) the notebooks run their full, laptop-sized experiments.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config, resolve
from .data import locate
from .distill import Callback, Distiller
from .viz import class_grid, grid_to_png_bytes

SMOKE = os.environ.get("CPSC_DFKD_SMOKE", "") not in ("", "0", "false")

# In smoke mode: a 2-epoch teacher and a generator and batch small enough for seconds per run.
SMOKE_OVERRIDES = ["teacher.epochs=2", "generator.nz=16", "generator.ngf=8", "distill.batch_size=40",
                   "distill.memory_batches=3", "distill.generator_warmup=0"]


def scaled(full: Any, smoke: Any) -> Any:
    """``full`` normally, ``smoke`` under CPSC_DFKD_SMOKE=1."""
    return smoke if SMOKE else full


def tutorial_preset() -> str:
    """Fashion-MNIST when its files are here (apt-get install dataset-fashion-mnist), else the bundled
    digits, which need no download. Smoke mode always takes digits."""
    if not SMOKE and locate("fashion-mnist", "test") is not None and locate("fashion-mnist", "train") is not None:
        return "fashion-mnist"
    return "digits-demo"


def tutorial_config(*overrides: str, preset: str | None = None) -> Config:
    """The preset of the notebooks with ``overrides``; smoke mode adds its size cuts first."""
    return resolve(preset or tutorial_preset(), (SMOKE_OVERRIDES if SMOKE else []) + list(overrides))


def runs_dir() -> Path:
    """Where notebook runs go: $CPSC_DFKD_RUNS_DIR, else runs/tutorials in the repository."""
    return Path(os.environ.get("CPSC_DFKD_RUNS_DIR", Path(__file__).resolve().parents[1] / "runs" / "tutorials"))


def png(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int | None = None) -> bytes:
    """A per-class grid (one row per class) as PNG bytes, for ipywidgets.Image or IPython.display.Image."""
    return grid_to_png_bytes(class_grid(images, labels, num_classes, per_class))


class LiveTraining(Callback):
    """Progress, losses, accuracy and the per-class sample grid of a running Distiller, in widgets that
    update in place while ``fit`` runs in the notebook."""

    def __init__(self, title: str = "training"):
        import ipywidgets as widgets

        self.progress = widgets.IntProgress(description=title, min=0, max=1)
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png", width=360)
        self.accuracy: list[tuple[int, float]] = []
        self.widget = widgets.VBox([self.progress, self.status, self.image])
        self._started = time.perf_counter()
        self._last: dict[str, float] = {}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def on_run_start(self, distiller: Distiller) -> None:
        self.progress.max = distiller.config.distill.iterations
        self.progress.value = distiller.iteration

    def on_iteration_end(self, distiller: Distiller) -> None:
        self.progress.value = distiller.iteration

    def on_log(self, distiller: Distiller, record: dict[str, float]) -> None:
        self._last = record
        self._render(distiller)

    def on_evaluation(self, distiller: Distiller, record: dict[str, float]) -> None:
        self.accuracy.append((record["iteration"], record["student_acc"]))
        self._render(distiller)

    def on_samples(self, distiller: Distiller, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.image.value = png(images, labels, distiller.info.num_classes)

    def _render(self, distiller: Distiller) -> None:
        losses = ", ".join(f"{k} {v:.3f}" for k, v in self._last.items() if k in ("g_total", "s_total"))
        acc = f"student accuracy {self.accuracy[-1][1]:.2f}%" if self.accuracy else "not evaluated yet"
        self.status.value = (f"iteration {distiller.iteration} &middot; {losses} &middot; {acc} &middot; "
                             f"{time.perf_counter() - self._started:.0f}s")
