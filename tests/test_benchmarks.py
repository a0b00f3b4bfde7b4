"""The benchmark scripts still run (quick modes); their figures are for people, not for assertions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cpsc_dfkd import data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(data.locate("fashion-mnist", "test") is None or data.locate("fashion-mnist", "train") is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_benchmark_quick_mode_runs_every_method_two_at_a_time(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fashion_mnist.py"), "--quick", "--jobs", "2",
                             "--out", str(tmp_path / "bench")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench-quick" / "results.json").read_text())
    assert set(report["runs"]) >= {"cpsc-dfkd", "dafl", "dfad", "zskt", "deepinversion", "cpsc-no-scl"}
    assert "| method | kind | student acc % | % of teacher |" in result.stdout
    assert (tmp_path / "bench-quick" / "samples.png").exists()
    assert report["jobs"] == 2 and len(report["runs"]["cpsc-dfkd"]) == 1  # quick mode: one seed
    assert all(r["student_acc"] is not None for runs in report["runs"].values() for r in runs)


def test_throughput_benchmark_prints_both_tables():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--preset", "digits-demo",
                             "--repeats", "4", "--set", "generator.ngf=8", "--set", "distill.batch_size=32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| generator step |" in result.stdout and "| model forward backward |" in result.stdout
