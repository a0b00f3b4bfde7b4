"""Run-directory I/O: atomic writes, safe checkpoint loading, a crash-tolerant metrics log, and the lock."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from cpsc_dfkd import runs
from cpsc_dfkd.errors import UserError


class CodeOnLoad:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PWNED_MARKER']}",))


def test_checkpoint_round_trip(tmp_path):
    state = {"kind": "teacher", "weights": {"w": torch.randn(3)}, "acc": 91.5}
    runs.save_checkpoint(tmp_path / "c.pt", state)
    loaded = runs.load_checkpoint(tmp_path / "c.pt")
    assert loaded["acc"] == 91.5 and torch.equal(loaded["weights"]["w"], state["weights"]["w"])


def test_a_pickle_that_runs_code_is_refused_and_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    torch.save({"state_dict": CodeOnLoad()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load .*posix.system.*weights_only=True"):
        runs.load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    runs.save_checkpoint(tmp_path / "c.pt", {"w": torch.randn(1000)})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        runs.load_checkpoint(tmp_path / "c.pt")


def test_a_file_that_is_not_a_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        runs.load_checkpoint(tmp_path / "notes.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a checkpoint"):
        runs.load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(UserError, match="does not exist"):
        runs.load_checkpoint(tmp_path / "missing.pt")


def test_disk_full_during_a_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    runs.save_checkpoint(path, {"iteration": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", no_space)
    with pytest.raises(UserError, match="No space left on device.*previous version is untouched"):
        runs.save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert runs.load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_state_dict_mismatch_names_the_keys_and_shapes():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match=r"weight: checkpoint has shape \[2, 4\], model expects \[2, 3\]"):
        runs.check_state_dict(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "ckpt")
    with pytest.raises(UserError, match="missing keys \\(1\\): bias"):
        runs.check_state_dict(model, {"weight": torch.zeros(2, 3)}, "ckpt")


def test_metrics_log_survives_a_torn_last_line(tmp_path):
    log = runs.MetricsLog(tmp_path / "metrics.jsonl")
    for i in range(1, 4):
        log.append({"iteration": i, "loss": 1.0 / i})
    with open(log.path, "a") as handle:
        handle.write('{"iteration": 4, "lo')  # a kill in the middle of a write
    assert [r["iteration"] for r in runs.read_metrics(log.path)] == [1, 2, 3]
    assert log.repair(keep_through_iteration=2) == 2  # the torn line and iteration 3 (after the checkpoint)
    lines = log.path.read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_lock(tmp_path):
    with runs.RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by process"):
            runs.RunLock(tmp_path).acquire()
    (tmp_path / runs.LOCK_NAME).write_text("999999999")  # a process that no longer exists
    lock = runs.RunLock(tmp_path)
    lock.acquire()
    assert lock.held
    lock.release()
    assert not (tmp_path / runs.LOCK_NAME).exists()


def test_paths_outside_the_runs_directory_are_refused(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert runs.resolve_inside(tmp_path / "runs", "a") == (tmp_path / "runs" / "a").resolve()
    for bad in ("../secret", "/etc", "a/../../x"):
        with pytest.raises(UserError, match="outside the runs directory"):
            runs.resolve_inside(tmp_path / "runs", bad)
    os.symlink(tmp_path, tmp_path / "runs" / "escape")
    with pytest.raises(UserError, match="outside the runs directory"):
        runs.resolve_inside(tmp_path / "runs", "escape")
