"""Steer a running distillation from outside its process: pause, resume and stop through a small file.

Every run started by ``run_distillation`` (CLI, notebook or dashboard) watches ``RUN_DIR/control.json``.
Writing ``{"command": "pause"}`` there parks the loop between iterations, ``"run"`` lets it go on and
``"stop"`` ends it cleanly with a checkpoint (``summary.json`` then says ``"stopped"``). A file, rather
than a signal, works the same for every process that can write to the run directory, and a paused
run keeps its state in memory, so resuming costs nothing. Once the loop is parked it writes
``RUN_DIR/paused``; until then ``status`` says "pausing" (an iteration is still in flight).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from .distill import Callback, Distiller
from .errors import UserError
from .runs import LOCK_NAME, _pid_alive, atomic_write_text, read_json

CONTROL_NAME = "control.json"
PAUSED_NAME = "paused"  # written by the training process while it is parked, removed when it goes on
COMMANDS = ("run", "pause", "stop")
PROCESS_START = time.time()  # commands older than this process were meant for an earlier one


def send(run_dir: str | Path, command: str) -> None:
    """Ask the process training ``run_dir`` to ``run``, ``pause`` or ``stop``."""
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    atomic_write_text(Path(run_dir) / CONTROL_NAME, json.dumps({"command": command, "time": time.time()}))


def requested(run_dir: str | Path) -> str:
    """The last command written for ``run_dir`` ("run" when there is none or it cannot be read)."""
    try:
        command = json.loads((Path(run_dir) / CONTROL_NAME).read_text()).get("command", "run")
    except (OSError, ValueError, AttributeError):
        return "run"
    return command if command in COMMANDS else "run"


def _sent_at(run_dir: str | Path) -> float:
    try:
        return float(json.loads((Path(run_dir) / CONTROL_NAME).read_text()).get("time", 0.0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0


def training_pid(run_dir: str | Path) -> int | None:
    """The process that holds the run's lock, if it is alive."""
    try:
        pid = int((Path(run_dir) / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def status(run_dir: str | Path) -> str:
    """One word for a run directory: running, pausing, paused, finished, stopped, failed or not started."""
    run_dir = Path(run_dir)
    if training_pid(run_dir) is not None:
        if requested(run_dir) != "pause":
            return "running"
        return "paused" if (run_dir / PAUSED_NAME).exists() else "pausing"
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            return str(read_json(summary_path).get("status", "finished"))
        except UserError:
            return "failed"
    if (run_dir / "checkpoints" / "last.pt").exists():
        return "interrupted"  # killed or crashed; --resume continues it
    return "starting" if (run_dir / "config.yaml").exists() else "not started"


class RunControl(Callback):
    """Watches the control file between iterations: a ``stat`` per iteration, a read only when it changes."""

    def __init__(self, run_dir: str | Path, poll_s: float = 0.2, pausable: bool = True,
                 log: Callable[[str], None] = print):
        self.path = Path(run_dir) / CONTROL_NAME
        self.paused_marker = Path(run_dir) / PAUSED_NAME
        self.poll_s, self.pausable, self.log = poll_s, pausable, log
        self._seen: float | None = None

    def on_run_start(self, distiller: Distiller) -> None:
        # A "pause" or "stop" left by an earlier process is cleared; one sent since this process started
        # (while it was still loading the teacher) is obeyed.
        self.paused_marker.unlink(missing_ok=True)
        if self.path.exists() and _sent_at(self.path.parent) < PROCESS_START:
            send(self.path.parent, "run")

    def on_iteration_end(self, distiller: Distiller) -> None:
        command = self._command()
        if command == "pause" and not self.pausable:
            # Under torchrun the other ranks would wait in a collective and time out: stop instead.
            self.log("pause is not available with several processes; use stop, then --resume")
            return
        if command == "pause":
            atomic_write_text(self.paused_marker, f"{distiller.iteration}\n")
            while command == "pause":
                time.sleep(self.poll_s)
                command = self._command(force=True)
            self.paused_marker.unlink(missing_ok=True)
        if command == "stop":
            distiller.request_stop()

    def _command(self, force: bool = False) -> str:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return "run"
        if stamp == self._seen and not force:
            return "run"
        self._seen = stamp
        return requested(self.path.parent)

    def on_run_end(self, distiller: Distiller, summary: dict[str, Any]) -> None:
        self.path.unlink(missing_ok=True)
        self.paused_marker.unlink(missing_ok=True)
