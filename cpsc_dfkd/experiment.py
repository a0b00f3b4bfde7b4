"""One call that runs a whole distillation: teacher, run directory, Distiller, summary.

The CLI, the notebooks and the dashboard all start runs through ``run_distillation``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from . import distributed
from .control import RunControl
from .config import Config, dump_yaml, from_dict, parse_override, _apply, _merge, to_dict, validate
from .data import load_split
from .distill import Callback, Distiller
from .errors import UserError
from .observers import DiagnosticsRecorder, ProgressBar, RunWriter
from .runs import MetricsLog, RunLock, load_checkpoint, new_run_dir, save_checkpoint, atomic_write_text
from .teacher import evaluate, obtain_teacher
from .runtime import select_device

DEFAULT_RUNS_DIR = Path("runs")


def config_for_resume(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The saved config of ``run_dir``, with optional ``key=value`` overrides (e.g. a lower learning rate)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass the folder a distill run wrote")
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    config = from_dict(saved)
    user: dict[str, Any] = {}
    for text in overrides or []:
        user = _merge(user, parse_override(text))
    _apply(config, user)
    return validate(config)


def run_distillation(config: Config, out: str | Path | None = None, resume: bool = False,
                     callbacks: Iterable[Callback] = (), log: Callable[[str], None] = print,
                     progress: bool = True) -> dict[str, Any]:
    """Distil a student for ``config`` into the run directory ``out`` (created, or resumed with ``resume``).

    Real data is touched only to evaluate: the test split is loaded, the training split never is.
    """
    distributed.init_from_env()
    main = distributed.is_main()
    if resume:
        if out is None:
            raise UserError("resume needs the run directory to continue")
        run_dir = Path(out)
    else:
        run_dir = Path(out) if out else new_run_dir(DEFAULT_RUNS_DIR, config.distill.method)
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
        if main and (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or choose another --out (nothing was changed)")
    lock = RunLock(run_dir) if main else None
    if lock:
        lock.acquire()
    try:
        return _run(config, run_dir, resume, list(callbacks), log, progress, main)
    finally:
        if lock:
            lock.release()


def _run(config: Config, run_dir: Path, resume: bool, callbacks: list[Callback], log: Callable[[str], None],
         progress: bool, main: bool) -> dict[str, Any]:
    teacher, meta, teacher_path = obtain_teacher(config, log=log)
    test_set = load_split(config.data.name, "test", config.data.root, config.data.download)
    teacher_acc = meta.get("test_acc")
    if teacher_acc is None:
        teacher_acc = evaluate(teacher, test_set, select_device(config.device), config.data.eval_batch_size)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
    if main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
        dropped = MetricsLog(run_dir / "metrics.jsonl").repair(state["iteration"] if state else 0)
        if dropped:
            log(f"metrics.jsonl: dropped {dropped} line(s) written after the last checkpoint or cut off by a crash")
        observers = [RunWriter(run_dir, {"teacher_checkpoint": str(teacher_path), "run_dir": str(run_dir)}),
                     ProgressBar(disable=not progress), *callbacks]
        observers.append(RunControl(run_dir, pausable=distributed.world_size() == 1, log=log))
        if config.distill.diagnostics_every:
            observers.append(DiagnosticsRecorder(run_dir, config.distill.diagnostics_every))
    else:
        observers = []
    distiller = Distiller(config, teacher, test_set, callbacks=observers, checkpoint_dir=run_dir / "checkpoints",
                          teacher_acc=teacher_acc)
    if state is not None:
        distiller.load_state_dict(state)
        log(f"resuming {run_dir} from iteration {distiller.iteration}")
    summary = distiller.fit()
    if main:
        save_checkpoint(run_dir / "student.pt", distiller.student_checkpoint(summary["student_acc"]))
    summary["run_dir"] = str(run_dir)
    return summary


def load_run(run_dir: str | Path, log: Callable[[str], None] = print) -> Distiller:
    """Rebuild the Distiller of a run directory at its last checkpoint (to inspect or diagnose it)."""
    run_dir = Path(run_dir)
    config = config_for_resume(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.exists():
        raise UserError(f"{run_dir} has no checkpoint yet (checkpoints/last.pt); wait for the first one")
    teacher, meta, _ = obtain_teacher(config, log=log)
    distiller = Distiller(config, teacher, teacher_acc=meta.get("test_acc"))
    distiller.load_state_dict(load_checkpoint(checkpoint))
    return distiller
