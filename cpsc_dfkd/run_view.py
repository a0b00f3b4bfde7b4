"""Read a run directory while it trains (or after): metrics, sample grids, diagnostics and embeddings,
and keep its shared 2-D embedding map up to date in a background thread.

The dashboard shows only what this module reads, so a CLI run and a dashboard run look the same.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .control import status
from .diagnostics import GeneratorReport, Projector
from .errors import UserError
from .runs import read_json, read_metrics, resolve_inside

ITER_FILE = re.compile(r"iter_(\d+)\.(png|npz)$")


def list_runs(runs_dir: str | Path) -> list[str]:
    """Names (relative to ``runs_dir``) of the run directories inside it, newest first."""
    base = Path(runs_dir)
    if not base.is_dir():
        return []
    found = [p.parent for p in base.glob("*/config.yaml")] + [p.parent for p in base.glob("*/*/config.yaml")]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p.relative_to(base)) for p in found]


def _iterations(folder: Path, suffix: str) -> list[int]:
    if not folder.is_dir():
        return []
    found = (ITER_FILE.search(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m and m.group(2) == suffix)


class RunView:
    """One run directory, opened by name from inside ``runs_dir`` (anything outside it is refused)."""

    def __init__(self, runs_dir: str | Path, name: str):
        self.path = resolve_inside(runs_dir, name)
        if not self.path.is_dir():
            raise UserError(f"no run {name!r} in {Path(runs_dir).resolve()}")
        self.name = name

    @property
    def started(self) -> bool:
        """Whether the training process has written its config (a just-launched one is still importing)."""
        return (self.path / "config.yaml").exists()

    @property
    def status(self) -> str:
        return status(self.path)

    def config(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load((self.path / "config.yaml").read_text())

    def summary(self) -> dict[str, Any] | None:
        path = self.path / "summary.json"
        return read_json(path) if path.exists() else None

    def records(self, event: str) -> list[dict[str, Any]]:
        return [r for r in read_metrics(self.path / "metrics.jsonl") if r.get("event") == event]

    def latest_report(self) -> tuple[int, GeneratorReport] | None:
        records = self.records("diagnostics")
        return (records[-1]["iteration"], GeneratorReport.from_record(records[-1])) if records else None

    def sample_iterations(self) -> list[int]:
        return _iterations(self.path / "samples", "png")

    def sample_grid(self, iteration: int | None = None) -> Path | None:
        """The per-class grid (one row per class) saved at ``iteration``, or the latest one."""
        path = self.path / "samples" / ("latest.png" if iteration is None else f"iter_{iteration:06d}.png")
        return path if path.exists() else None

    def class_row(self, iteration: int | None, label: int, num_classes: int):
        """Row ``label`` of a saved grid, as a PIL image (the samples of one class)."""
        from PIL import Image

        path = self.sample_grid(iteration)
        if path is None:
            return None
        with Image.open(path) as grid:
            width, height = grid.size
            row = (height - 2) / num_classes  # make_grid puts 2 px of padding around every tile
            return grid.crop((0, round(label * row), width, round((label + 1) * row + 2))).copy()

    def embedding_iterations(self) -> list[int]:
        return _iterations(self.path / "embeddings", "npz")

    def embeddings(self, iteration: int) -> dict[str, np.ndarray]:
        with np.load(self.path / "embeddings" / f"iter_{iteration:06d}.npz") as data:
            return {key: data[key] for key in data.files}


def _lower_thread_priority() -> None:
    """Projections yield the CPU to training: on Linux a thread has its own nice value."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux: the projection runs at normal priority


def map_inputs(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, class labels and sources (teacher / student / real) of one embeddings file."""
    n = len(arrays["labels"])
    points = [arrays["teacher"], arrays["student"]]
    labels = [arrays["labels"], arrays["labels"]]
    sources = [np.full(n, "teacher"), np.full(n, "student")]
    if "real" in arrays:
        points.append(arrays["real"])
        labels.append(arrays["real_labels"])
        sources.append(np.full(len(arrays["real_labels"]), "real"))
    return np.concatenate(points), np.concatenate(labels), np.concatenate(sources)


@dataclass
class MapFrame:
    """A projected embeddings file: what the scatter plot draws."""

    run: str
    iteration: int
    layout: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    seconds: float
    finished_at: float = 0.0


class MapWorker:
    """Projects the newest embeddings of a run in a background thread, never on the page's thread.

    ``request`` is cheap and never blocks; ``frame`` returns the newest finished projection. Each run keeps
    its Projector, so a refresh starts from the previous layout and the map does not jump.
    """

    def __init__(self, method: str = "auto", seed: int = 0, warm_up: bool = False):
        self.method, self.seed, self.warm_up = method, seed, warm_up
        self._projectors: dict[str, Projector] = {}
        self._frames: dict[str, MapFrame] = {}
        self._wanted: dict[str, tuple[Path, int]] = {}
        self._failures: dict[str, tuple[int, str]] = {}  # run -> (iteration that could not be projected, why)
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="map-worker", daemon=True)
        self._thread.start()

    def request(self, view: RunView, min_interval_s: float = 0.0) -> None:
        """Ask for the newest embeddings of ``view`` to be projected, unless the map shown is younger than
        ``min_interval_s`` seconds (a live run on few cores: each UMAP refresh takes CPU from training)."""
        iterations = view.embedding_iterations()
        if not iterations:
            return
        frame = self._frames.get(view.name)
        if self._failures.get(view.name, (None,))[0] == iterations[-1]:
            return  # this file could not be projected (the page shows why); wait for the next one
        if frame is not None and (frame.iteration == iterations[-1] or
                                  time.time() - frame.finished_at < min_interval_s):
            return
        with self._condition:
            self._wanted[view.name] = (view.path, iterations[-1])
            self._condition.notify()

    def frame(self, run: str) -> MapFrame | None:
        return self._frames.get(run)

    def error(self, run: str) -> str | None:
        failure = self._failures.get(run)
        return failure[1] if failure else None

    def busy(self) -> bool:
        return bool(self._wanted)

    def pending(self, run: str) -> bool:
        """Whether a projection of ``run`` is queued or being computed."""
        return run in self._wanted

    def _loop(self) -> None:
        _lower_thread_priority()
        if self.warm_up:
            self._compile()
        while True:
            with self._condition:
                while not self._wanted:
                    self._condition.wait()
                run, (path, iteration) = next(iter(self._wanted.items()))
            try:
                with np.load(path / "embeddings" / f"iter_{iteration:06d}.npz") as data:
                    arrays = {key: data[key] for key in data.files}
                points, labels, sources = map_inputs(arrays)
                projector = self._projectors.setdefault(run, Projector(self.method, self.seed))
                started = time.perf_counter()
                layout = projector.project(points)
                self._frames[run] = MapFrame(run, iteration, layout, labels, sources,
                                             time.perf_counter() - started, time.time())
                self._failures.pop(run, None)
            except Exception as exc:  # a half-written or foreign file: report it on the page, keep serving
                self._failures[run] = (iteration, f"{type(exc).__name__}: {exc}")
            with self._condition:
                if self._wanted.get(run, (None, None))[1] == iteration:
                    del self._wanted[run]

    def _compile(self) -> None:
        """Pay numba's one-time compilation now, before any run needs a map (UMAP only)."""
        projector = Projector(self.method, self.seed)
        if projector.method == "umap":
            points = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
            projector.project(points)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and benchmarks: block until no projection is pending."""
        deadline = time.time() + timeout
        while self.busy() and time.time() < deadline:
            time.sleep(0.05)
        return not self.busy()
