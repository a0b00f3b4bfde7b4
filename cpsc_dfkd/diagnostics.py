"""Is the generator collapsing? Per-class measures of synthetic images, and shared 2-D embedding maps.

Data-free measures (teacher and synthetic images only):

- conditional accuracy: does the teacher classify G(z, y) as y?
- teacher confidence and predictive entropy per class;
- class balance: entropy of the histogram of teacher predictions, 1 = perfectly balanced;
- diversity: mean pairwise distance within a class, in the teacher's (L2-normalised) feature space and
  in pixel space, divided by the mean distance between samples of *different* classes. 0 means every
  sample of the class is the same image; real data sits around 0.6-0.9.
- a collapse flag per class, with the rule that raised it in plain words.

Evaluation-only measures need the real test split (and say so): Fréchet distance on the teacher's
features (no Inception download) and precision / recall / density / coverage (Naeem et al. 2020,
via the ``prdc`` package); low coverage means real modes the generator never reaches.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CollapseRules:
    """Thresholds of the collapse flags (all relative, so they hold across data sets)."""

    min_relative_diversity: float = 0.15  # within-class / between-class feature distance
    min_fraction_of_median: float = 0.35  # a class far less diverse than the run's typical class
    min_conditional_accuracy: float = 0.5  # the teacher should recognise the class it was made for
    min_share_of_uniform: float = 0.25  # unconditional generators: a class the teacher rarely sees


@dataclass
class ClassReport:
    label: int
    name: str
    count: int
    conditional_accuracy: float | None
    confidence: float
    entropy: float
    feature_diversity: float
    pixel_diversity: float
    prediction_share: float  # fraction of all samples the teacher assigns to this class
    flags: list[str] = field(default_factory=list)


@dataclass
class GeneratorReport:
    classes: list[ClassReport]
    class_balance: float  # normalised entropy of the teacher's prediction histogram (1 = uniform)
    conditional_accuracy: float | None
    feature_diversity: float
    pixel_diversity: float
    between_class_feature_distance: float
    evaluation: dict[str, Any] | None = None  # real-data measures, when the test split was given

    @property
    def flagged(self) -> list[int]:
        return [c.label for c in self.classes if c.flags]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "GeneratorReport":
        """Rebuild a report from a ``diagnostics`` line of ``metrics.jsonl``."""
        classes = [ClassReport(label=c["label"], name=c.get("name", str(c["label"])), count=c.get("count", 0),
                               conditional_accuracy=c["conditional_accuracy"], confidence=c["confidence"],
                               entropy=c["entropy"], feature_diversity=c["feature_diversity"],
                               pixel_diversity=c["pixel_diversity"], prediction_share=c["prediction_share"],
                               flags=list(c["flags"])) for c in record["per_class"]]
        return cls(classes, record["class_balance"], record["conditional_accuracy"], record["feature_diversity"],
                   record["pixel_diversity"], record.get("between_class_feature_distance", float("nan")))


def _mean_pairwise(x: torch.Tensor) -> float:
    n = len(x)
    if n < 2:
        return float("nan")
    return float(torch.cdist(x, x).sum() / (n * (n - 1)))


def _mean_cross(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cdist(a, b).mean())


def _diversities(points: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list[float], float]:
    """Per-class mean pairwise distance, relative to the mean distance between samples of different classes."""
    present = [c for c in range(num_classes) if (labels == c).sum() > 0]
    between = [_mean_cross(points[labels == a], points[labels == b]) for i, a in enumerate(present)
               for b in present[i + 1:]]
    between_mean = float(np.mean(between)) if between else float("nan")
    within = [_mean_pairwise(points[labels == c]) / between_mean if (labels == c).sum() > 1 else float("nan")
              for c in range(num_classes)]
    return within, between_mean


@torch.no_grad()
def model_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier's (teacher's or student's) logits and penultimate features, in eval mode, batched."""
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        out, feat = model(images[start:start + batch_size].to(device), return_features=True)
        logits.append(out.float().cpu())
        features.append(feat.float().cpu())
    return torch.cat(logits), torch.cat(features)


def generator_report(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, num_classes: int,
                     class_names: tuple[str, ...] = (), rules: CollapseRules | None = None) -> GeneratorReport:
    """Data-free diagnostics of synthetic ``images`` (normalised as the teacher expects).

    ``labels`` are the classes the images were made for; None for an unconditional generator, whose
    images are then grouped by the teacher's prediction.
    """
    rules = rules or CollapseRules()
    logits, features = model_outputs(teacher, images)
    probs = F.softmax(logits, dim=1)
    predicted = probs.argmax(1)
    conditional = labels is not None
    group = labels.cpu() if conditional else predicted
    feature_div, between = _diversities(F.normalize(features, dim=1), group, num_classes)
    pixel_div, _ = _diversities(images.flatten(1).float().cpu(), group, num_classes)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1)
    histogram = torch.bincount(predicted, minlength=num_classes).float() / len(predicted)
    balance = float(-(histogram[histogram > 0] * histogram[histogram > 0].log()).sum() / math.log(num_classes))
    valid = [d for d in feature_div if not math.isnan(d)]
    median = float(np.median(valid)) if valid else float("nan")

    classes = []
    for c in range(num_classes):
        mask = group == c
        count = int(mask.sum())
        name = class_names[c] if c < len(class_names) else str(c)
        report = ClassReport(
            label=c, name=name, count=count,
            conditional_accuracy=float((predicted[mask] == c).float().mean()) if conditional and count else None,
            confidence=float(probs[mask].max(1).values.mean()) if count else float("nan"),
            entropy=float(entropy[mask].mean()) if count else float("nan"),
            feature_diversity=feature_div[c], pixel_diversity=pixel_div[c],
            prediction_share=float(histogram[c]))
        report.flags = _collapse_flags(report, median, num_classes, conditional, rules)
        classes.append(report)
    return GeneratorReport(
        classes=classes, class_balance=balance,
        conditional_accuracy=float((predicted == labels.cpu()).float().mean()) if conditional else None,
        feature_diversity=float(np.nanmean(feature_div)) if valid else float("nan"),
        pixel_diversity=float(np.nanmean(pixel_div)) if valid else float("nan"),
        between_class_feature_distance=between)


def _collapse_flags(c: ClassReport, median: float, num_classes: int, conditional: bool,
                    rules: CollapseRules) -> list[str]:
    flags = []
    if c.count == 0:
        return ["never produced: the teacher assigns no sample to this class"]
    if conditional and c.conditional_accuracy is not None and c.conditional_accuracy < rules.min_conditional_accuracy:
        flags.append(f"the teacher recognises only {c.conditional_accuracy:.0%} of the samples made for this class "
                     f"(rule: below {rules.min_conditional_accuracy:.0%})")
    if not conditional and c.prediction_share < rules.min_share_of_uniform / num_classes:
        flags.append(f"rarely produced: {c.prediction_share:.1%} of samples (rule: below "
                     f"{rules.min_share_of_uniform:.0%} of a uniform share)")
    if math.isnan(c.feature_diversity):
        flags.append("too few samples to measure diversity")
    elif c.feature_diversity < rules.min_relative_diversity:
        flags.append(f"collapsed: feature diversity {c.feature_diversity:.2f} of the between-class distance "
                     f"(rule: below {rules.min_relative_diversity:.2f})")
    elif not math.isnan(median) and c.feature_diversity < rules.min_fraction_of_median * median:
        flags.append(f"far less diverse than the other classes: {c.feature_diversity:.2f} vs median {median:.2f} "
                     f"(rule: below {rules.min_fraction_of_median:.0%} of the median)")
    return flags


# ------------------------------------------------------------------------------- evaluation-only measures
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    The trace of sqrt(C_a C_b) is computed as the sum of square roots of the eigenvalues of the
    symmetric matrix sqrt(C_a) C_b sqrt(C_a), which stays stable for singular covariances.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eigenvalues, eigenvectors = np.linalg.eigh(cov_a)
    sqrt_a = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def evaluation_report(teacher: nn.Module, synthetic: torch.Tensor, synthetic_labels: torch.Tensor | None,
                      real: torch.Tensor, real_labels: torch.Tensor, num_classes: int, nearest_k: int = 5,
                      min_per_class: int = 20, student: nn.Module | None = None) -> dict[str, Any]:
    """Needs the real test split. Fréchet distance on the teacher's features (overall and per class with at
    least ``min_per_class`` samples on both sides), and precision/recall/density/coverage. Per class also
    the spread ratio: the mean distance between two synthetic images of the class over that between two
    real ones, on the teacher's features (1 = as varied as the real class; a collapsed class is near 0).

    With a ``student``, per class also the share of images on which the student's top class is the
    teacher's, on synthetic images of the class and on real ones. A student that agrees on nearly every
    synthetic image but on far fewer real ones has learnt what the generator makes of that class, and the
    real class reaches beyond it. ``disagreements`` then lists, most frequent first, the pairs (teacher's
    class, student's class) on real images where the two differ, and how often each was right."""
    from prdc import compute_prdc

    s_logits, s_feat = model_outputs(teacher, synthetic)
    r_logits, r_feat = model_outputs(teacher, real)
    s_group = synthetic_labels.cpu() if synthetic_labels is not None else s_logits.argmax(1)
    s_np, r_np = s_feat.numpy().astype(np.float64), r_feat.numpy().astype(np.float64)
    k = max(1, min(nearest_k, len(s_np) - 1, len(r_np) - 1))
    quiet = contextlib.redirect_stdout(io.StringIO())  # prdc prints its sample counts
    with quiet:
        overall = compute_prdc(real_features=r_np, fake_features=s_np, nearest_k=k)
    if student is not None:
        synthetic_agrees = model_outputs(student, synthetic)[0].argmax(1) == s_logits.argmax(1)
        real_student_says = model_outputs(student, real)[0].argmax(1)
        real_agrees = real_student_says == r_logits.argmax(1)
    per_class: dict[int, dict[str, float]] = {}
    for c in range(num_classes):
        sc, rc = s_np[(s_group == c).numpy()], r_np[(real_labels.cpu() == c).numpy()]
        entry: dict[str, float] = {}
        if len(sc) >= min_per_class and len(rc) >= min_per_class:
            entry["frechet_distance"] = frechet_distance(sc, rc)
            kc = max(1, min(nearest_k, len(sc) - 1, len(rc) - 1))
            with contextlib.redirect_stdout(io.StringIO()):
                entry["coverage"] = float(compute_prdc(real_features=rc, fake_features=sc, nearest_k=kc)["coverage"])
        if len(sc) >= 2 and len(rc) >= 2:
            entry["spread_ratio"] = _mean_pairwise(torch.from_numpy(sc)) / _mean_pairwise(torch.from_numpy(rc))
        if student is not None:
            for key, agrees, group in (("student_agreement_synthetic", synthetic_agrees, s_group),
                                       ("student_agreement_real", real_agrees, real_labels.cpu())):
                if (group == c).any():
                    entry[key] = float(agrees[group == c].float().mean())
        per_class[c] = entry
    report = {"needs_real_data": True, "frechet_distance": frechet_distance(s_np, r_np),
              **{key: float(v) for key, v in overall.items()}, "per_class": per_class, "nearest_k": k}
    if student is not None:
        report["disagreements"] = disagreement_pairs(r_logits.argmax(1), real_student_says, real_labels.cpu())
    return report


def disagreement_pairs(teacher_says: torch.Tensor, student_says: torch.Tensor, labels: torch.Tensor,
                       top: int = 8) -> list[dict[str, int]]:
    """The ``top`` most frequent (teacher's class, student's class) pairs among images where they differ,
    each with its count and how many of those images each of the two labelled correctly."""
    differ = teacher_says != student_says
    pairs = torch.stack([teacher_says[differ], student_says[differ]], 1)
    if not len(pairs):
        return []
    found, counts = pairs.unique(dim=0, return_counts=True)
    rows = []
    for (t, s), n in sorted(zip(found.tolist(), counts.tolist()), key=lambda row: -row[1])[:top]:
        these = differ & (teacher_says == t) & (student_says == s)
        rows.append({"teacher": t, "student": s, "count": n, "teacher_right": int((labels[these] == t).sum()),
                     "student_right": int((labels[these] == s).sum())})
    return rows


# ---------------------------------------------------------------------------------------- embeddings
@torch.no_grad()
def contrastive_embeddings(teacher: nn.Module, student: nn.Module, projection_head: nn.Module,
                           images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The two views SupCon compares: L2-normalised teacher features and projected student features."""
    device = next(teacher.parameters()).device
    teacher.eval()
    was_training = student.training
    student.eval()
    _, t_feat = teacher(images.to(device), return_features=True)
    _, s_feat = student(images.to(device), return_features=True)
    s_feat = projection_head(s_feat.float())
    student.train(was_training)
    return (F.normalize(t_feat.float(), dim=1).cpu().numpy(), F.normalize(s_feat, dim=1).cpu().numpy())


class Projector:
    """Projects embeddings to one shared 2-D map; refreshes start from the previous layout.

    ``method="auto"`` takes UMAP (umap-learn) when installed, else PCA, which is instant and needs no
    numba. UMAP's numba functions compile once per process, on the first refresh.
    """

    def __init__(self, method: str = "auto", seed: int = 0, n_neighbors: int = 15):
        if method not in ("auto", "umap", "pca"):
            raise ValueError(f"projection method must be auto, umap or pca, got {method!r}")
        if method == "auto":
            method = "umap" if umap_available() else "pca"
        self.method, self.seed, self.n_neighbors = method, seed, n_neighbors
        self.previous: np.ndarray | None = None

    def project(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float32)
        layout = self._pca(points) if self.method == "pca" else self._umap(points)
        if self.previous is not None and self.previous.shape == layout.shape:
            layout = _align(layout, self.previous)
        self.previous = layout
        return layout

    def _pca(self, points: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=self.seed).fit_transform(points).astype(np.float32)

    def _umap(self, points: np.ndarray) -> np.ndarray:
        import umap

        init: Any = "spectral"
        if self.previous is not None and self.previous.shape == (len(points), 2):
            init = self.previous
        reducer = umap.UMAP(n_components=2, n_neighbors=min(self.n_neighbors, len(points) - 1),
                            random_state=self.seed, init=init, n_epochs=200 if isinstance(init, str) else 60,
                            min_dist=0.1, metric="euclidean")
        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": seeding is the point
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            return reducer.fit_transform(points).astype(np.float32)


def _align(layout: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Rotate, reflect, scale and shift ``layout`` onto ``previous`` (orthogonal Procrustes), so that a
    refreshed map keeps its orientation: axes of PCA and UMAP maps are arbitrary."""
    from scipy.linalg import orthogonal_procrustes

    a = layout - layout.mean(0)
    b = previous - previous.mean(0)
    rotation, scale = orthogonal_procrustes(a, b)
    scale = scale / max(float((a**2).sum()), 1e-12)
    return (a @ rotation * scale + previous.mean(0)).astype(np.float32)


def umap_available() -> bool:
    """Whether umap-learn is installed (found without importing it: the import compiles numba code)."""
    import importlib.util

    return importlib.util.find_spec("umap") is not None
