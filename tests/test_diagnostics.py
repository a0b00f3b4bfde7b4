"""Collapse diagnostics: collapsed, healthy and incomplete generators, and a deterministic shared map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cpsc_dfkd.data import load_split
from cpsc_dfkd.diagnostics import Projector, disagreement_pairs, evaluation_report, generator_report
from cpsc_dfkd.teacher import load_teacher

from conftest import tiny_config


@pytest.fixture(scope="module")
def teacher_and_real(digits_teacher):
    teacher, _ = load_teacher(digits_teacher, tiny_config(teacher=digits_teacher))
    test = load_split("digits", "test")
    return teacher, test.images, test.labels


def test_real_images_grouped_by_true_label_are_not_flagged(teacher_and_real):
    teacher, images, labels = teacher_and_real
    report = generator_report(teacher, images, labels, 10)
    assert report.flagged == []
    assert 0.3 < report.feature_diversity < 1.2
    assert report.class_balance > 0.95


def test_a_generator_that_returns_one_image_per_class_is_flagged_for_every_class(teacher_and_real):
    teacher, images, labels = teacher_and_real
    collapsed = torch.cat([images[labels == c][:1].repeat(30, 1, 1, 1) for c in range(10)])
    collapsed_labels = torch.arange(10).repeat_interleave(30)
    report = generator_report(teacher, collapsed, collapsed_labels, 10)
    assert report.flagged == list(range(10))
    assert all("collapsed" in " ".join(c.flags) for c in report.classes)
    assert report.feature_diversity < 1e-3 and report.pixel_diversity < 1e-3


def test_a_generator_missing_one_class_is_flagged_for_that_class_only(teacher_and_real):
    teacher, images, labels = teacher_and_real
    made_for = labels.clone()
    missing = 3
    eights = images[labels == 8]
    wanted = int((labels == missing).sum())
    images = images.clone()
    images[labels == missing] = eights.repeat(2, 1, 1, 1)[:wanted]  # asked for a 3, the generator makes an 8
    report = generator_report(teacher, images, made_for, 10)
    assert report.flagged == [missing]
    assert "recognises only" in report.classes[missing].flags[0]


def test_unconditional_generator_missing_a_class_is_reported_as_never_produced(teacher_and_real):
    teacher, images, labels = teacher_and_real
    keep = labels != 5
    report = generator_report(teacher, images[keep], None, 10)
    assert 5 in report.flagged and "never produced" in report.classes[5].flags[0] or \
        "rarely produced" in report.classes[5].flags[0]


def test_evaluation_measures_prefer_real_like_samples(teacher_and_real):
    teacher, images, labels = teacher_and_real
    half = len(images) // 2
    real_like = evaluation_report(teacher, images[:half], labels[:half], images[half:], labels[half:], 10)
    noise = torch.randn_like(images[:half])
    noisy = evaluation_report(teacher, noise, labels[:half], images[half:], labels[half:], 10)
    assert real_like["needs_real_data"] is True
    assert real_like["frechet_distance"] < noisy["frechet_distance"]
    assert real_like["coverage"] > noisy["coverage"]
    assert "frechet_distance" in real_like["per_class"][0]
    # two halves of the real images are about equally varied; one image repeated has no spread at all
    assert all(0.7 < real_like["per_class"][c]["spread_ratio"] < 1.4 for c in range(10))
    one_each = torch.cat([images[:half][labels[:half] == c][:1].expand(30, -1, -1, -1) for c in range(10)])
    collapsed = evaluation_report(teacher, one_each, torch.arange(10).repeat_interleave(30), images[half:],
                                  labels[half:], 10)
    assert all(collapsed["per_class"][c]["spread_ratio"] < 1e-3 for c in range(10))


class _AlwaysFirstClass(nn.Module):
    """A student that calls every image class 0."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x, return_features=False):
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1.0
        return (logits, torch.zeros(len(x), 4)) if return_features else logits


def test_student_agreement_is_the_share_of_each_class_where_student_and_teacher_pick_the_same(teacher_and_real):
    teacher, images, labels = teacher_and_real
    half = len(images) // 2
    made_for = (labels[:half] + 1) % 10  # a generator whose images the teacher calls the class before: agreement
    args = (teacher, images[:half], made_for, images[half:], labels[half:], 10)  # is with the teacher, not y
    assert "student_agreement_real" not in evaluation_report(*args)["per_class"][0]
    copy = evaluation_report(*args, student=teacher)["per_class"]
    assert all(copy[c]["student_agreement_synthetic"] == copy[c]["student_agreement_real"] == 1.0 for c in range(10))
    with torch.no_grad():
        teacher_says = {"synthetic": teacher(images[:half]).argmax(1), "real": teacher(images[half:]).argmax(1)}
    groups = {"synthetic": made_for, "real": labels[half:]}
    first = evaluation_report(*args, student=_AlwaysFirstClass())["per_class"]
    for c in range(10):
        for kind in ("synthetic", "real"):
            expected = float((teacher_says[kind][groups[kind] == c] == 0).float().mean())
            assert first[c][f"student_agreement_{kind}"] == pytest.approx(expected)
    assert first[0]["student_agreement_real"] > 0.9 and first[5]["student_agreement_real"] < 0.1


def test_disagreement_pairs_count_each_teacher_student_pair_and_who_was_right():
    teacher_says = torch.tensor([6, 6, 6, 6, 2, 2, 4, 1])
    student_says = torch.tensor([0, 0, 0, 4, 4, 2, 4, 1])
    labels = torch.tensor([6, 6, 0, 4, 4, 2, 4, 1])
    assert disagreement_pairs(teacher_says, student_says, labels) == [
        {"teacher": 6, "student": 0, "count": 3, "teacher_right": 2, "student_right": 1},
        {"teacher": 2, "student": 4, "count": 1, "teacher_right": 0, "student_right": 1},
        {"teacher": 6, "student": 4, "count": 1, "teacher_right": 0, "student_right": 1}]
    assert disagreement_pairs(teacher_says, teacher_says, labels) == []
    assert len(disagreement_pairs(teacher_says, student_says, labels, top=1)) == 1


def test_evaluation_lists_disagreements_only_with_a_student(teacher_and_real):
    teacher, images, labels = teacher_and_real
    half = len(images) // 2
    args = (teacher, images[:half], labels[:half], images[half:], labels[half:], 10)
    assert "disagreements" not in evaluation_report(*args)
    assert evaluation_report(*args, student=teacher)["disagreements"] == []
    pairs = evaluation_report(*args, student=_AlwaysFirstClass())["disagreements"]
    assert pairs and all(p["student"] == 0 and p["teacher"] != 0 for p in pairs)
    assert [p["count"] for p in pairs] == sorted((p["count"] for p in pairs), reverse=True)


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_projection_is_deterministic_for_a_fixed_seed(method):
    points = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    a = Projector(method, seed=3).project(points)
    b = Projector(method, seed=3).project(points)
    assert a.shape == (120, 2)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pca_refresh_keeps_the_orientation_of_the_previous_map():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(200, 8)) * np.array([5, 3, 1, 1, 1, 1, 1, 1])
    projector = Projector("pca")
    first = projector.project(points)
    second = projector.project(points + rng.normal(scale=0.01, size=points.shape))
    assert np.all((first * second).sum(0) > 0)


def test_umap_refresh_starts_from_the_previous_layout():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=6, size=(5, 8))
    points = (centres.repeat(30, 0) + rng.normal(size=(150, 8))).astype(np.float32)
    projector = Projector("umap", seed=0)
    first = projector.project(points)
    second = projector.project(points + rng.normal(scale=0.05, size=points.shape).astype(np.float32))
    drift = np.linalg.norm(second - first, axis=1).mean() / np.linalg.norm(first - first.mean(0), axis=1).mean()
    assert drift < 0.5


def test_diagnose_command_prints_a_per_class_table_and_writes_an_html_report(digits_teacher, tmp_path, capsys):
    from cpsc_dfkd.cli import main
    from cpsc_dfkd.experiment import run_distillation

    run_distillation(tiny_config("distill.diagnostics_every=2", teacher=digits_teacher), tmp_path / "run",
                     progress=False, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "run" / "embeddings").iterdir()) == ["iter_000002.npz",
                                                                                    "iter_000004.npz"]
    from cpsc_dfkd.runs import read_metrics

    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "diagnostics"]
    assert len(records) == 2 and len(records[0]["per_class"]) == 10
    code = main(["diagnose", str(tmp_path / "run"), "--per-class", "24", "--projection", "pca"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| class | cond. acc |" in out and "Fréchet distance on teacher features" in out
    assert "student = teacher, synthetic | student = teacher, real |" in out
    assert "where student and teacher differ on real images, teacher's class -> student's:" in out  # a 4-step student
    html = (tmp_path / "run" / "report.html").read_text()
    assert "plotly" in html and "data:image/png;base64," in html
