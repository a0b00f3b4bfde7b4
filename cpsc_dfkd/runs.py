"""The run directory: atomic checkpoints, a crash-tolerant metrics log, a lock, and safe loading.

Layout of a run directory::

    config.yaml          the full resolved config
    metrics.jsonl        one JSON object per logged step
    summary.json         teacher_acc, student_acc, best_student_acc, wall_s, iterations, device, ...
    checkpoints/last.pt  the latest complete state (resume from it)
    checkpoints/best.pt  the student with the best test accuracy
    student.pt           the final student, loadable by ``cpsc-dfkd eval``
    samples/             per-class image grids over time
    embeddings/          teacher/student contrastive features (diagnostics)

Every file is written to a temporary name, fsynced and renamed, so a kill at any moment leaves the
previous complete version readable. Checkpoints are loaded with ``weights_only=True``: a file that
would need to run code when unpickled is refused.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UserError

LOCK_NAME = ".lock"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {exc.strerror or exc}. The previous version is untouched; "
                        "free some disk space or choose another --out") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; every failure becomes a readable UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        global_name = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if global_name is None:
            raise UserError(f"{path} is not a readable checkpoint (not a PyTorch file, or damaged)") from None
        raise UserError(
            f"refused to load {path}: it asks to import {global_name.group(1)}, which safe loading "
            "(weights_only=True) does not allow. Only tensors, numbers and plain containers are accepted; "
            "a file that would run code when opened is never loaded."
        ) from None
    except Exception as exc:  # torch.load fails on garbage in many ways (EOFError, KeyError, RuntimeError, ...)
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {str(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict of tensors")
    return state


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s, naming the differences."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{what} does not hold a state dict of tensors")
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        lines = [f"{what} does not fit the {getattr(model, 'arch', type(model).__name__)} it is loaded into:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        for key in wrong[:5]:
            lines.append(f"  {key}: checkpoint has shape {list(got[key])}, model expects {list(expected[key])}")
        lines.append("Check the architecture (teacher.arch / student.arch) and the data set's class count.")
        raise UserError("\n".join(lines))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, flushed and fsynced after each write."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=True) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def repair(self, keep_through_iteration: int | None = None) -> int:
        """Drop a truncated last line, and records past ``keep_through_iteration`` (written after the
        checkpoint a resume starts from). Returns how many lines were dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for record in _parse_lines(self.path.read_text()):
            if record is None or (keep_through_iteration is not None and record.get("iteration", 0) > keep_through_iteration):
                dropped += 1
            else:
                kept.append(json.dumps(record) + "\n")
        if dropped:
            atomic_write_text(self.path, "".join(kept))
        return dropped


def _parse_lines(text: str) -> Iterator[dict[str, Any] | None]:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield None
            continue
        yield record if isinstance(record, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete records of a metrics file; a half-written last line is skipped, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    return [r for r in _parse_lines(path.read_text()) if r is not None]


class RunLock:
    """A lock file so that two processes never write the same run directory; stale locks are taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _pid_alive(owner):
                    raise UserError(f"run directory {self.path.parent} is in use by process {owner}; "
                                    "wait for it to finish or stop it first") from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return
        raise UserError(f"could not lock {self.path.parent}; remove {self.path} if no run is using it")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_dir(base: str | Path, name: str) -> Path:
    """A fresh directory ``base/name-YYYYmmdd-HHMMSS`` (suffixed if it exists)."""
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(base) / stem
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(base) / f"{stem}-{suffix}"
    return path


def resolve_inside(base: str | Path, relative: str) -> Path:
    """``base/relative``, refusing anything that escapes ``base`` (``..``, absolute paths, symlinks out)."""
    base_path = Path(base).resolve()
    candidate = (base_path / relative).resolve()
    if candidate != base_path and base_path not in candidate.parents:
        raise UserError(f"{relative!r} is outside the runs directory {base_path}; only runs inside it can be opened")
    return candidate


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
