"""Crash safety: a training process killed with SIGKILL at random moments, resumed each time, ends with
exactly the weights of an uninterrupted run, and leaves a readable run directory throughout."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import torch

from cpsc_dfkd.runs import load_checkpoint, read_metrics

from conftest import TINY

SETTINGS = TINY + ["distill.iterations=40", "distill.checkpoint_every=4", "distill.eval_every=20",
                   "distill.sample_every=20", "distill.log_every=2"]


def distill_command(teacher, out):
    sets = sum([["--set", s] for s in SETTINGS], [])
    return [sys.executable, "-m", "cpsc_dfkd", "distill", "--preset", "digits-demo", "--teacher", str(teacher),
            "--out", str(out), "--quiet", *sets]


def train_records(run) -> list[dict]:
    """The run's training records as logged (reading them also proves metrics.jsonl is readable)."""
    return [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "train"]


def last_logged_iteration(run) -> int:
    return max((r["iteration"] for r in train_records(run)), default=0)


def train_losses(records: list[dict]) -> dict[int, dict[str, float]]:
    """The logged training losses by iteration (timing fields left out: they are the only ones that may differ)."""
    return {r["iteration"]: {k: v for k, v in r.items() if not k.endswith("_per_s")} for r in records}


def kill_when_past(process, run, iteration: int, extra_delay: float) -> bool:
    """SIGKILL ``process`` a random moment after it has logged ``iteration``; False if it ended first.
    Driven by the run's own progress, not the wall clock, so it kills on a slow and a fast machine alike."""
    while process.poll() is None and last_logged_iteration(run) < iteration:
        time.sleep(0.02)
    time.sleep(extra_delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def test_sigkill_at_random_moments_then_resume_reproduces_the_uninterrupted_weights(digits_teacher, tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(distill_command(digits_teacher, reference), check=True, capture_output=True)

    rng = random.Random(0)
    kill_points = sorted(rng.sample(range(2, 38), 4))  # iterations after which a process dies
    kills = attempts = 0
    history = []  # (iteration logged when killed, iteration of the checkpoint left behind), for the failure message
    while not (run / "student.pt").exists():
        attempts += 1
        assert attempts < 20, "the run never finished"
        if (run / "config.yaml").exists():
            command = [sys.executable, "-m", "cpsc_dfkd", "distill", "--resume", str(run), "--quiet"]
        else:
            command = distill_command(digits_teacher, run)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        pending = [k for k in kill_points if k > last_logged_iteration(run)]
        if pending and kill_when_past(process, run, pending[0], rng.uniform(0.0, 0.3)):
            kills += 1
            last = run / "checkpoints" / "last.pt"
            saved = load_checkpoint(last)["iteration"] if last.exists() else None  # the last checkpoint reads
            history.append((last_logged_iteration(run), saved))  # metrics.jsonl reads too
            continue
        _, err = process.communicate()
        assert process.returncode == 0, err.decode()[-2000:]

    assert kills >= 3
    records = train_records(run)
    assert [r["iteration"] for r in records] == list(range(2, 41, 2))  # each once: unsaved lines were dropped
    reference_curve, curve = train_losses(train_records(reference)), train_losses(records)
    first = next((i for i in reference_curve if reference_curve[i] != curve[i]), None)
    assert first is None, (f"the losses logged at iteration {first} differ from the uninterrupted run's, after kills at "
                           f"(logged, checkpoint) {history}: {reference_curve[first]} vs {curve[first]}")
    expected = load_checkpoint(reference / "student.pt")["state_dict"]
    got = load_checkpoint(run / "student.pt")["state_dict"]
    differ = {k: float((expected[k].double() - got[k].double()).abs().max()) for k in expected
              if not torch.equal(expected[k], got[k])}
    assert not differ, f"weights differ after kills at (logged, checkpoint) {history}: max |diff| {differ}"
