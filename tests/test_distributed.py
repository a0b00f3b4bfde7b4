"""Distributed training with torchrun (gloo on the CPU): 2 processes against 1 with the same global batch.

What must hold exactly: replicas stay identical (DDP averages the gradients), and the ranks together
draw exactly the noise a single process draws (each its own slice). What cannot hold exactly on the
CPU: BatchNorm statistics are per rank (SyncBatchNorm exists for CUDA only; use sync_batchnorm=true on
GPUs), so a 2-process run normalises each half-batch by itself and the weights drift slightly from a
1-process run. The test bounds that drift.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cpsc_dfkd.runs import load_checkpoint

from conftest import TINY

WORKER = Path(__file__).with_name("ddp_worker.py")


# Once so far (one full test run of many), a rank aborted with this message while the gloo process group was
# torn down, after the barrier in distributed.shutdown (so after every result was written); the same launch
# then passed. The cause was not found in this code; gloo's worker threads at process exit are a known source
# (pytorch/pytorch#190489). Such a launch is run once more; any other failure, or this one twice, fails.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(*args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    for _attempt in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        if result.returncode == 0 or GLOO_TEARDOWN_ABORT not in result.stderr:
            break
        if "--out" in args:  # start the run afresh rather than resume a half-closed one
            shutil.rmtree(args[args.index("--out") + 1], ignore_errors=True)
    assert result.returncode == 0, result.stderr[:6000]
    return result


@pytest.fixture(scope="module")
def two_and_one(digits_teacher, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    overrides = ["loss.scl=0.7", "distill.student_lr=0.01", "distill.affine=0.5"]  # per-image draws, sliced per rank
    torchrun(WORKER, tmp / "two.pt", digits_teacher, 3, *overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(WORKER), str(tmp / "one.pt"), str(digits_teacher), "3", *overrides],
                   check=True, env=env, capture_output=True)
    return torch.load(tmp / "two.pt"), torch.load(tmp / "one.pt")


def test_replicas_stay_identical_across_ranks(two_and_one):
    two, _ = two_and_one
    assert two["world_size"] == 2
    assert torch.equal(two["params"][0], two["params"][1])


def test_ranks_draw_disjoint_slices_of_the_single_process_noise(two_and_one):
    two, one = two_and_one
    assert torch.equal(torch.cat(two["noise"]), one["noise"][0])
    assert not torch.equal(two["noise"][0], two["noise"][1])


def test_two_processes_take_nearly_the_same_steps_as_one_with_the_same_global_batch(two_and_one):
    two, one = two_and_one
    assert torch.equal(two["initial"], one["initial"])  # same seed, same initial student
    update_two, update_one = two["params"][0] - two["initial"], one["params"][0] - one["initial"]
    cosine = float(torch.nn.functional.cosine_similarity(update_two, update_one, dim=0))
    size_ratio = float(update_two.norm() / update_one.norm())
    # Per-rank BatchNorm statistics make the steps differ a little, never in direction or size.
    assert cosine > 0.9, f"the 2-process update points elsewhere (cosine {cosine:.3f})"
    assert 0.8 < size_ratio < 1.25, f"the 2-process update has another size (ratio {size_ratio:.3f})"


def test_torchrun_distill_writes_one_run_directory_and_resumes_on_one_process(digits_teacher, tmp_path):
    run = tmp_path / "run"
    sets = sum([["--set", s] for s in TINY + ["distill.iterations=4", "distill.checkpoint_every=2"]], [])
    torchrun("-m", "cpsc_dfkd", "distill", "--preset", "digits-demo", "--teacher", digits_teacher, "--out", run,
             "--quiet", *sets)
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 4 and summary["student_acc"] is not None
    # Written by 2 ranks, continued by 1: extend the run by two iterations.
    result = subprocess.run([sys.executable, "-m", "cpsc_dfkd", "distill", "--resume", str(run), "--quiet",
                             "--set", "distill.iterations=6"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 6 and state["memory"]["images"].shape[1] == 20
