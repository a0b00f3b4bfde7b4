"""Start distillation runs in background processes (for the dashboard).

A launched run is the plain CLI, ``python -m cpsc_dfkd distill ...``, in its own process: it owns the
Distiller, never touches the user interface, and writes its run directory exactly as a terminal run
would. The interface only reads that directory and steers the run through ``control.send``, so a
widget change, a page reload or a second browser tab can never restart or kill training.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, resolve
from .errors import UserError
from .runs import new_run_dir, resolve_inside

LOG_NAME = "train.log"


@dataclass
class Launch:
    run_dir: Path
    process: subprocess.Popen
    command: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def distill_command(preset: str, overrides: list[str], run_dir: Path, teacher: str | None = None) -> list[str]:
    """The CLI call that trains ``preset`` with ``overrides`` into ``run_dir``."""
    command = [sys.executable, "-m", "cpsc_dfkd", "distill", "--preset", preset, "--out", str(run_dir), "--quiet"]
    if teacher:
        command += ["--teacher", str(teacher)]
    for override in overrides:
        command += ["--set", override]
    return command


class Launcher:
    """The background runs of one dashboard server, shared by all its browser sessions."""

    def __init__(self, runs_dir: str | Path):
        self.runs_dir = Path(runs_dir).resolve()
        self.launches: dict[Path, Launch] = {}
        self._lock = threading.Lock()

    def active(self) -> list[Path]:
        with self._lock:
            return [path for path, launch in self.launches.items() if launch.alive]

    def check(self, preset: str, overrides: list[str], teacher: str | None = None) -> Config:
        """The resolved config of a run, or a UserError that names the bad value (nothing is started)."""
        extra = {"teacher": {"checkpoint": str(teacher)}} if teacher else None
        return resolve(preset, overrides, extra)

    def start(self, preset: str, overrides: list[str], teacher: str | None = None, name: str | None = None,
              allow_concurrent: bool = False) -> Path:
        """Start a new run in ``runs_dir``; refuses a second one unless ``allow_concurrent`` (two runs on
        the same cores halve each other's speed, and a double click must not start two)."""
        config = self.check(preset, overrides, teacher)
        with self._lock:
            running = [p for p, launch in self.launches.items() if launch.alive]
            if running and not allow_concurrent:
                raise UserError(f"a run is already training ({running[0].name}); stop it first, or allow "
                                "concurrent runs")
            run_dir = resolve_inside(self.runs_dir, name) if name else new_run_dir(self.runs_dir,
                                                                                    config.distill.method)
            if (run_dir / "config.yaml").exists():
                raise UserError(f"{run_dir.name} already holds a run; choose another name or resume it")
            return self._spawn(run_dir, distill_command(preset, overrides, run_dir, teacher))

    def resume(self, name: str) -> Path:
        """Continue the interrupted or stopped run ``runs_dir/name`` from its last checkpoint, in a new process."""
        run_dir = resolve_inside(self.runs_dir, name)
        with self._lock:
            launch = self.launches.get(run_dir)
            if launch is not None and launch.alive:
                raise UserError(f"{run_dir.name} is already training")
            if not (run_dir / "checkpoints" / "last.pt").exists():
                raise UserError(f"{run_dir.name} has no checkpoint to resume from yet")
            command = [sys.executable, "-m", "cpsc_dfkd", "distill", "--resume", str(run_dir), "--quiet"]
            return self._spawn(run_dir, command)

    def _spawn(self, run_dir: Path, command: list[str]) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / LOG_NAME, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.launches[run_dir] = Launch(run_dir, process, command)
        return run_dir

    def wait(self, run_dir: Path, timeout: float | None = None) -> int | None:
        launch = self.launches.get(Path(run_dir).resolve())
        return None if launch is None else launch.process.wait(timeout)

    def log_tail(self, run_dir: Path, lines: int = 15) -> str:
        path = Path(run_dir) / LOG_NAME
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
