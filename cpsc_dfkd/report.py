"""Diagnostics of a Distiller or a finished run: the numbers (diagnostics.py) and an HTML report (viz.py)."""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .diagnostics import GeneratorReport, Projector, contrastive_embeddings, evaluation_report, generator_report
from .distill import Distiller
from .data import denormalise
from .viz import class_grid, class_measures_figure, embedding_figure, grid_to_png_bytes, png_data_uri


@dataclass
class Snapshot:
    """What the notebooks and the dashboard show of one moment of training."""

    iteration: int
    report: GeneratorReport
    teacher_embeddings: np.ndarray
    student_embeddings: np.ndarray
    labels: np.ndarray  # the class each synthetic sample was made for (or the teacher's prediction)
    images: np.ndarray | None = None  # the synthetic samples, uint8 [N, H, W, C], for hover and selection
    real_teacher_embeddings: np.ndarray | None = None
    real_student_embeddings: np.ndarray | None = None
    real_labels: np.ndarray | None = None

    def map_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points, labels and sources (teacher / student / real) of the shared 2-D map."""
        points = [self.teacher_embeddings, self.student_embeddings]
        labels = [self.labels, self.labels]
        sources = [np.full(len(self.labels), "teacher"), np.full(len(self.labels), "student")]
        if self.real_teacher_embeddings is not None:
            points.append(self.real_teacher_embeddings)
            labels.append(self.real_labels)
            sources.append(np.full(len(self.real_labels), "real"))
        return np.concatenate(points), np.concatenate(labels), np.concatenate(sources)


def take_snapshot(distiller: Distiller, per_class: int = 32, real: tuple[torch.Tensor, torch.Tensor] | None = None,
                  synthetic: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> Snapshot:
    """Data-free diagnostics and contrastive embeddings of ``per_class`` synthetic images per class.

    ``real`` (test images and labels) adds real points to the map; it is evaluation-only data.
    ``synthetic`` is ``distiller.synthesize(per_class)`` if the caller has already made it.
    """
    images, made_for = synthetic if synthetic is not None else distiller.synthesize(per_class)
    report = generator_report(distiller.teacher, images, made_for, distiller.info.num_classes,
                              distiller.info.class_names)
    teacher_emb, student_emb = contrastive_embeddings(distiller.teacher, distiller.student,
                                                      distiller.projection_head, images)
    if made_for is None:  # an unconditional generator: show each sample under the teacher's class
        with torch.no_grad():
            made_for = distiller.teacher(images).argmax(1)
    pixels = (denormalise(images, distiller.info).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
    snapshot = Snapshot(distiller.iteration, report, teacher_emb, student_emb, made_for.cpu().numpy(),
                        pixels.cpu().numpy())
    if real is not None:
        real_t, real_s = contrastive_embeddings(distiller.teacher, distiller.student, distiller.projection_head,
                                                real[0])
        snapshot.real_teacher_embeddings, snapshot.real_student_embeddings = real_t, real_s
        snapshot.real_labels = real[1].cpu().numpy()
    return snapshot


def real_subset(dataset, per_class: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` test images of every class (evaluation-only data)."""
    generator = torch.Generator().manual_seed(seed)
    labels = dataset.labels
    picks = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    picks = [p[torch.randperm(len(p), generator=generator)[:per_class]] for p in picks]
    index = torch.cat(picks)
    return dataset.images[index], labels[index]


def per_class_table(report: GeneratorReport, evaluation: dict[str, Any] | None = None) -> str:
    """A markdown table of the per-class measures, with the collapse flags in words."""
    columns: list[tuple[str, str]] = []  # the evaluation's columns: (title, key of its per-class entries)
    if evaluation:
        columns = [("FD (teacher feats)", "frechet_distance"), ("coverage", "coverage"),
                   ("spread vs real", "spread_ratio")]
        if any("student_agreement_real" in entry for entry in evaluation["per_class"].values()):
            columns += [("student = teacher, synthetic", "student_agreement_synthetic"),
                        ("student = teacher, real", "student_agreement_real")]
    header = ["class", "cond. acc", "confidence", "entropy", "feat. div", "pixel div", "share",
              *(title for title, _ in columns), "flags"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in report.classes:
        row = [c.name, "-" if c.conditional_accuracy is None else f"{c.conditional_accuracy:.2f}",
               f"{c.confidence:.2f}", f"{c.entropy:.2f}", f"{c.feature_diversity:.2f}", f"{c.pixel_diversity:.2f}",
               f"{c.prediction_share:.2f}"]
        if evaluation:
            entry = evaluation["per_class"].get(c.label, {})
            row += [f"{entry[key]:.2f}" if key in entry else "-" for _, key in columns]
        row.append("; ".join(c.flags) or "ok")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary_lines(report: GeneratorReport, evaluation: dict[str, Any] | None) -> list[str]:
    lines = [f"class balance (1 = uniform): {report.class_balance:.3f}",
             f"mean feature diversity: {report.feature_diversity:.3f}, pixel diversity: {report.pixel_diversity:.3f}"]
    if report.conditional_accuracy is not None:
        lines.insert(0, f"conditional accuracy (teacher says y for G(z, y)): {report.conditional_accuracy:.3f}")
    lines.append(f"flagged classes: {', '.join(report.classes[i].name for i in report.flagged) or 'none'}")
    if evaluation:
        lines.append(f"[needs real test data] Fréchet distance on teacher features: {evaluation['frechet_distance']:.3f}; "
                     f"precision {evaluation['precision']:.3f}, recall {evaluation['recall']:.3f}, "
                     f"density {evaluation['density']:.3f}, coverage {evaluation['coverage']:.3f}")
    if evaluation and evaluation.get("disagreements"):
        name = {c.label: c.name for c in report.classes}
        pairs = "; ".join(f"{name[d['teacher']]} -> {name[d['student']]}: {d['count']} (teacher right "
                          f"{d['teacher_right']}, student right {d['student_right']})"
                          for d in evaluation["disagreements"][:5])
        lines.append(f"[needs real test data] where student and teacher differ on real images, teacher's class -> "
                     f"student's: {pairs}")
    return lines


def write_html_report(path: Path, title: str, snapshot: Snapshot, evaluation: dict[str, Any] | None,
                      grid_png: bytes, layout: np.ndarray, class_names: tuple[str, ...]) -> None:
    points_labels, points_sources = snapshot.map_inputs()[1:]
    scatter = embedding_figure(layout, points_labels, points_sources, class_names,
                               title="Teacher and student contrastive embeddings (one shared map)")
    bars = class_measures_figure(snapshot.report)
    body = [f"<h1>{html.escape(title)}</h1>",
            "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(snapshot.report, evaluation))
            + "</ul>",
            "<h2>Per-class samples (one row per class)</h2>", f'<img src="{png_data_uri(grid_png)}" '
            'style="image-rendering: pixelated; width: 480px">',
            bars.to_html(full_html=False, include_plotlyjs="cdn"),
            scatter.to_html(full_html=False, include_plotlyjs=False),
            "<h2>Per-class table</h2>", "<pre>" + html.escape(per_class_table(snapshot.report, evaluation)) + "</pre>"]
    Path(path).write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
                          "</title></head><body style='font-family: sans-serif'>" + "\n".join(body) + "</body></html>")


def diagnose_run(run_dir: Path, per_class: int = 64, use_real: bool = True, projection: str = "auto",
                 out: Path | None = None, log=print) -> tuple[Snapshot, dict[str, Any] | None, Path]:
    """Diagnose a run at its last checkpoint: per-class table to stdout and an HTML report."""
    from .data import load_split
    from .errors import UserError
    from .experiment import load_run

    distiller = load_run(run_dir, log=log)
    info = distiller.info
    evaluation, real = None, None
    if use_real:
        try:
            test = load_split(info.name, "test", distiller.config.data.root)
        except UserError as exc:
            log(f"evaluation-only measures skipped: {exc}")
        else:
            real = real_subset(test, per_class, info.num_classes)
    images, made_for = distiller.synthesize(per_class)
    snapshot = take_snapshot(distiller, per_class, real, synthetic=(images, made_for))
    if real is not None:
        evaluation = evaluation_report(distiller.teacher, images, made_for, real[0], real[1], info.num_classes,
                                       student=distiller.student)
    started = time.perf_counter()
    layout = Projector(projection, seed=distiller.config.seed).project(snapshot.map_inputs()[0])
    log(f"projection of {len(layout)} points took {time.perf_counter() - started:.1f}s")
    grid_images, grid_labels = distiller.synthesize_per_class(8)
    grid_png = grid_to_png_bytes(class_grid(grid_images, grid_labels, info.num_classes, 8))
    out = Path(out) if out else Path(run_dir) / "report.html"
    write_html_report(out, f"Diagnostics of {run_dir} at iteration {distiller.iteration}", snapshot, evaluation,
                      grid_png, layout, info.class_names)
    return snapshot, evaluation, out
