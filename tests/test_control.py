"""Steering runs from outside their process: pause, resume and stop through the control file, a launched
background run that is paused, stopped and continued, and a map worker that projects off the caller's thread."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from cpsc_dfkd.control import PAUSED_NAME, RunControl, requested, send, status
from cpsc_dfkd.errors import UserError
from cpsc_dfkd.launcher import Launcher
from cpsc_dfkd.run_view import MapWorker, RunView, list_runs
from cpsc_dfkd.runs import LOCK_NAME, read_json, read_metrics

from conftest import TINY


def last_iteration(run_dir) -> int:
    records = read_metrics(run_dir / "metrics.jsonl")
    return max((r["iteration"] for r in records if r["event"] == "train"), default=0)


def wait_until(condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_commands_round_trip_and_unknown_commands_are_refused(tmp_path):
    assert requested(tmp_path) == "run"
    send(tmp_path, "pause")
    assert requested(tmp_path) == "pause"
    with pytest.raises(UserError, match="unknown command"):
        send(tmp_path, "explode")
    (tmp_path / "control.json").write_text("{not json")
    assert requested(tmp_path) == "run"  # a damaged file never stops a run by accident


def test_stop_request_reaches_the_distiller(tmp_path):
    class FakeDistiller:
        stopped = False

        def request_stop(self):
            self.stopped = True

    control, distiller = RunControl(tmp_path), FakeDistiller()
    control.on_iteration_end(distiller)
    assert not distiller.stopped
    send(tmp_path, "stop")
    control.on_iteration_end(distiller)
    assert distiller.stopped


def test_status_says_paused_only_once_the_loop_is_parked(tmp_path):
    class FakeDistiller:
        iteration = 7

    (tmp_path / LOCK_NAME).write_text(str(os.getpid()))  # this process plays the training one
    control = RunControl(tmp_path, poll_s=0.01)
    send(tmp_path, "pause")
    assert status(tmp_path) == "pausing"  # asked, but the iteration in flight has not ended yet
    loop = threading.Thread(target=control.on_iteration_end, args=(FakeDistiller(),))
    loop.start()
    wait_until(lambda: status(tmp_path) == "paused", timeout=10, what="the parked loop's marker")
    assert (tmp_path / PAUSED_NAME).read_text().strip() == "7"
    send(tmp_path, "run")
    loop.join(timeout=10)
    assert not loop.is_alive() and not (tmp_path / PAUSED_NAME).exists()
    assert status(tmp_path) == "running"


@pytest.mark.slow
def test_launched_run_pauses_stops_and_continues_to_the_end(digits_teacher, tmp_path):
    launcher = Launcher(tmp_path)
    settings = TINY + ["distill.iterations=400", "distill.log_every=1", "distill.eval_every=0",
                       "distill.sample_every=100", "distill.checkpoint_every=50", "distill.diagnostics_every=50"]
    run_dir = launcher.start("digits-demo", settings, str(digits_teacher), name="steered")
    with pytest.raises(UserError, match="already training"):
        launcher.start("digits-demo", settings, str(digits_teacher), name="duplicate")
    wait_until(lambda: last_iteration(run_dir) >= 3, what="the first iterations")

    send(run_dir, "pause")
    wait_until(lambda: status(run_dir) == "paused", what="paused status")  # parked: nothing in flight
    paused_at = last_iteration(run_dir)
    time.sleep(2.0)
    assert last_iteration(run_dir) == paused_at, "a paused run kept training"

    send(run_dir, "run")
    wait_until(lambda: last_iteration(run_dir) > paused_at + 2, what="training to go on after resume")
    send(run_dir, "stop")
    assert launcher.wait(run_dir, timeout=120) == 0
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "stopped" and summary["iterations"] < 400
    assert status(run_dir) == "stopped"

    launcher.resume("steered")
    # generous: beside a distillation run, the rest of the 400 iterations once took more than 300 s
    assert launcher.wait(run_dir, timeout=900) == 0, launcher.log_tail(run_dir)
    assert read_json(run_dir / "summary.json")["status"] == "finished"
    assert list_runs(tmp_path) == ["steered"]

    view = RunView(tmp_path, "steered")
    assert view.embedding_iterations() and view.sample_iterations()
    assert view.class_row(None, 3, 10).height > 0
    worker = MapWorker(method="pca")
    worker.request(view)
    assert worker.wait_idle(60)
    frame = worker.frame("steered")
    assert frame is not None and frame.iteration == view.embedding_iterations()[-1]
    assert set(np.unique(frame.sources)) == {"teacher", "student", "real"}
    assert np.isfinite(frame.layout).all()


def test_runs_outside_the_runs_directory_are_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for name in ["../elsewhere", "/etc", "../../tmp"]:
        with pytest.raises(UserError, match="outside the runs directory"):
            RunView(tmp_path / "runs", name)
    with pytest.raises(UserError, match="outside the runs directory"):
        Launcher(tmp_path / "runs").resume("../elsewhere")
