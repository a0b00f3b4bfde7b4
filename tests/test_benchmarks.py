"""The benchmark scripts still run (quick modes, the members picture); their figures are for people, not for assertions."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from PIL import Image

from cpsc_dfkd import data
from cpsc_dfkd.experiment import run_distillation

ROOT = Path(__file__).resolve().parents[1]


def _load_fashion_mnist_benchmark():
    spec = importlib.util.spec_from_file_location("fashion_mnist_benchmark", ROOT / "benchmarks" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_seeds_give_every_ablation_and_only_the_ablations_extra_seeds():
    bench = _load_fashion_mnist_benchmark()
    methods = ["cpsc-dfkd", "dafl", "deepinversion", "cpsc-no-scl", "cpsc-no-bn"]
    runs = bench.first_wave(methods, seeds=3, ablation_seeds=2)
    assert sorted(runs) == sorted([(m, 0) for m in methods] + [("cpsc-dfkd", 1), ("cpsc-dfkd", 2),
                                                               ("cpsc-no-scl", 1), ("cpsc-no-bn", 1)])
    assert bench.first_wave(methods, seeds=1, ablation_seeds=1) == [(m, 0) for m in methods]


def test_table_counts_a_diverged_seed_and_averages_the_finished_ones():
    bench = _load_fashion_mnist_benchmark()
    run = {"wall_s": 60.0, "images_per_s": 100.0, "iterations_per_s": 1.0}
    diverged = {"diverged": "loss term 'g_adv' became non-finite", "student_acc": None}
    text = bench.table({"cpsc-no-bn": [{**run, "student_acc": 10.0}, diverged],
                        "cpsc-dfkd": [{**run, "student_acc": 80.0}, {**run, "student_acc": 82.0}],
                        "dfad": [diverged]}, teacher_acc=90.0)
    rows = [line for line in text.splitlines() if line.startswith("| cpsc") or line.startswith("| dfad")]
    assert rows[0].startswith("| cpsc-dfkd | method | 81.00 ± 1.41 | 90.0 | 2 |")
    assert rows[1].startswith("| cpsc-no-bn | ablation | 10.00 | 11.1 | 2 (1 diverged) | 1.0 min |")
    assert rows[2] == "| dfad | baseline | diverged | - | 1 (1 diverged) | - | - | - |"


def test_benchmark_rejects_fewer_than_one_seed_by_name(capsys):
    bench = _load_fashion_mnist_benchmark()
    with pytest.raises(SystemExit):
        bench.parse_args(["--ablation-seeds", "0"])
    assert "--ablation-seeds must be at least 1, got 0" in capsys.readouterr().err


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


def test_throughput_measures_iterations_with_their_student_steps():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    distiller = throughput.build("digits-demo", ["generator.ngf=8", "distill.batch_size=32",
                                                 "distill.generator_warmup=50"])
    assert distiller.iteration == 50
    assert any(key.startswith("s_") for key in distiller.train_iteration())


def test_members_picture_shows_every_member_of_a_run_and_refuses_a_single_generator(digits_teacher, tmp_path,
                                                                                     capsys):
    spec = importlib.util.spec_from_file_location("members_picture", ROOT / "benchmarks" / "members_picture.py")
    picture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(picture)
    quiet = {"progress": False, "log": lambda m: None}
    run_distillation(tiny_config("generator.members=2", teacher=digits_teacher), tmp_path / "pair", **quiet)
    assert picture.main([str(tmp_path / "pair"), str(tmp_path / "pair.png"), "--per-member", "3"]) == 0
    width, height = Image.open(tmp_path / "pair.png").size
    assert (width - 2) // 34 == 2 * 3 and (height - 2) // 34 == 10  # 32 px tiles + 2 px padding
    run_distillation(tiny_config(teacher=digits_teacher), tmp_path / "single", **quiet)
    assert picture.main([str(tmp_path / "single"), str(tmp_path / "single.png")]) == 2
    assert "generator.members=1" in capsys.readouterr().err
