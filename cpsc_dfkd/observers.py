"""Observers of a Distiller: the run-directory writer and a terminal progress bar."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .distill import Callback, Distiller
from .runs import MetricsLog, write_json
from .viz import save_class_grid


class RunWriter(Callback):
    """Writes ``metrics.jsonl``, ``samples/`` grids and ``summary.json`` of a run directory."""

    def __init__(self, run_dir: Path, extra_summary: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.extra_summary = extra_summary or {}

    def on_log(self, distiller: Distiller, record: dict[str, float]) -> None:
        self.metrics.append({"event": "train", **record})

    def on_evaluation(self, distiller: Distiller, record: dict[str, float]) -> None:
        self.metrics.append({"event": "eval", **record})

    def on_samples(self, distiller: Distiller, images: torch.Tensor, labels: torch.Tensor) -> None:
        grid_dir = self.run_dir / "samples"
        num_classes = distiller.info.num_classes
        save_class_grid(grid_dir / f"iter_{distiller.iteration:06d}.png", images, labels, num_classes)
        save_class_grid(grid_dir / "latest.png", images, labels, num_classes)

    def on_run_end(self, distiller: Distiller, summary: dict[str, Any]) -> None:
        write_json(self.run_dir / "summary.json", {**self.extra_summary, **summary})


class ProgressBar(Callback):
    """A tqdm bar over iterations, showing the main losses and the latest accuracy."""

    def __init__(self, disable: bool = False):
        self.bar: tqdm | None = None
        self.disable = disable
        self.shown: dict[str, str] = {}

    def on_run_start(self, distiller: Distiller) -> None:
        import sys

        # In a log file (no terminal) a redrawn bar would print thousands of lines: redraw rarely there.
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=distiller.config.distill.iterations, initial=distiller.iteration,
                        desc=distiller.config.distill.method, disable=self.disable, dynamic_ncols=True,
                        mininterval=0.1 if interactive else 30.0)

    def on_iteration_end(self, distiller: Distiller) -> None:
        self.bar.update(1)

    def on_log(self, distiller: Distiller, record: dict[str, float]) -> None:
        for key in ("g_total", "s_total"):
            if key in record and math.isfinite(record[key]):
                self.shown[key[0] + "_loss"] = f"{record[key]:.3f}"
        self.shown["img/s"] = f"{record.get('images_per_s', 0):.0f}"
        self.bar.set_postfix(self.shown, refresh=False)

    def on_evaluation(self, distiller: Distiller, record: dict[str, float]) -> None:
        self.shown["acc"] = f"{record['student_acc']:.2f}"
        self.bar.set_postfix(self.shown)

    def on_run_end(self, distiller: Distiller, summary: dict[str, Any]) -> None:
        self.bar.close()


class DiagnosticsRecorder(Callback):
    """Every ``every`` iterations: per-class generator diagnostics into ``metrics.jsonl`` (event
    "diagnostics") and, into ``embeddings/iter_N.npz``, the teacher/student contrastive embeddings of the
    synthetic samples with the samples themselves (uint8), plus those of ``real_per_class`` test images per
    class when the run has a test split (evaluation-only data, for the shared map)."""

    def __init__(self, run_dir: Path, every: int, per_class: int = 32, real_per_class: int = 16):
        self.run_dir, self.every, self.per_class = Path(run_dir), every, per_class
        self.real_per_class = real_per_class
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self._real: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_run_start(self, distiller: Distiller) -> None:
        if distiller.test_set is not None and self.real_per_class > 0:
            from .report import real_subset

            images, labels = real_subset(distiller.test_set, self.real_per_class, distiller.info.num_classes)
            self._real = images.to(distiller.device), labels

    def on_iteration_end(self, distiller: Distiller) -> None:
        if self.every <= 0 or distiller.iteration % self.every:
            return
        import io

        import numpy as np

        from .report import take_snapshot
        from .runs import atomic_write_bytes

        snapshot = take_snapshot(distiller, self.per_class, real=self._real)
        report = snapshot.report
        self.metrics.append({
            "event": "diagnostics", "iteration": distiller.iteration,
            "conditional_accuracy": report.conditional_accuracy, "class_balance": report.class_balance,
            "feature_diversity": report.feature_diversity, "pixel_diversity": report.pixel_diversity,
            "flagged": report.flagged,
            "between_class_feature_distance": report.between_class_feature_distance,
            "per_class": [{"label": c.label, "name": c.name, "count": c.count, "conditional_accuracy": c.conditional_accuracy,
                           "confidence": c.confidence, "entropy": c.entropy,
                           "feature_diversity": c.feature_diversity, "pixel_diversity": c.pixel_diversity,
                           "prediction_share": c.prediction_share, "flags": c.flags} for c in report.classes]})
        buffer = io.BytesIO()
        arrays = dict(teacher=snapshot.teacher_embeddings, student=snapshot.student_embeddings,
                      labels=snapshot.labels, images=snapshot.images)
        if snapshot.real_labels is not None:
            arrays.update(real=snapshot.real_teacher_embeddings, real_labels=snapshot.real_labels)
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.run_dir / "embeddings" / f"iter_{distiller.iteration:06d}.npz", buffer.getvalue())
