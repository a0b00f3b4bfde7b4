"""The benchmark scripts still run (quick modes, the members picture); their figures are for people, not for assertions."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_config
from PIL import Image

from cpsc_dfkd import data
from cpsc_dfkd.experiment import run_distillation
from cpsc_dfkd.teacher import load_teacher

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_seeds_give_every_ablation_and_only_the_ablations_extra_seeds():
    bench = _load_benchmark("fashion_mnist")
    methods = ["cpsc-dfkd", "dafl", "deepinversion", "cpsc-no-scl", "cpsc-no-bn"]
    runs = bench.first_wave(methods, seeds=3, ablation_seeds=2)
    assert sorted(runs) == sorted([(m, 0) for m in methods] + [("cpsc-dfkd", 1), ("cpsc-dfkd", 2),
                                                               ("cpsc-no-scl", 1), ("cpsc-no-bn", 1)])
    assert bench.first_wave(methods, seeds=1, ablation_seeds=1) == [(m, 0) for m in methods]


def test_table_counts_a_diverged_seed_and_averages_the_finished_ones():
    bench = _load_benchmark("fashion_mnist")
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
    bench = _load_benchmark("fashion_mnist")
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
    assert "| forward and backward |" in result.stdout


def test_throughput_clock_splits_an_iteration_and_leaves_the_models_as_they_were():
    throughput = _load_benchmark("throughput")
    distiller = throughput.build("digits-demo", ["generator.ngf=8", "distill.batch_size=32"])
    plain_backward = torch.Tensor.backward
    shares = throughput.unprofiled_iterations(distiller, 2)
    assert shares["forward"] > 0 and shares["backward"] > 0 and shares["other"] >= 0
    assert shares["forward"] + shares["backward"] + shares["other"] == pytest.approx(1.0)
    assert torch.Tensor.backward is plain_backward
    networks = (distiller.teacher, distiller.student, distiller.generator, distiller.projection_head)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in networks)


def test_throughput_measures_iterations_with_their_student_steps():
    throughput = _load_benchmark("throughput")
    distiller = throughput.build("digits-demo", ["generator.ngf=8", "distill.batch_size=32",
                                                 "distill.generator_warmup=50"])
    assert distiller.iteration == 50
    assert any(key.startswith("s_") for key in distiller.train_iteration())


def test_members_picture_shows_every_member_of_a_run_and_refuses_a_single_generator(digits_teacher, tmp_path,
                                                                                     capsys):
    picture = _load_benchmark("members_picture")
    quiet = {"progress": False, "log": lambda m: None}
    run_distillation(tiny_config("generator.members=2", teacher=digits_teacher), tmp_path / "pair", **quiet)
    assert picture.main([str(tmp_path / "pair"), str(tmp_path / "pair.png"), "--per-member", "3"]) == 0
    width, height = Image.open(tmp_path / "pair.png").size
    assert (width - 2) // 34 == 2 * 3 and (height - 2) // 34 == 10  # 32 px tiles + 2 px padding
    run_distillation(tiny_config(teacher=digits_teacher), tmp_path / "single", **quiet)
    assert picture.main([str(tmp_path / "single"), str(tmp_path / "single.png")]) == 2
    assert "generator.members=1" in capsys.readouterr().err


def test_real_data_ceiling_trains_the_student_on_real_training_images_labelled_by_the_teacher(digits_teacher):
    ceiling = _load_benchmark("real_data_ceiling")
    config = tiny_config(teacher=digits_teacher)
    config.distill.g_steps = 0
    teacher, _ = load_teacher(digits_teacher, config)
    train_images = ceiling.stacked_images(data.load_split("digits", "train"))
    distiller = ceiling.RealImageDistiller(config, teacher, data.load_split("digits", "test"),
                                           train_images=train_images)
    images, labels = distiller.synthetic_batch()
    # every image is a row of the training split, and its label is the teacher's verdict on it
    assert all((train_images == image).flatten(1).all(1).any() for image in images)
    assert torch.equal(labels, teacher(images).argmax(1))
    generator_before = [p.detach().clone() for p in distiller.generator.parameters()]
    summary = distiller.fit()
    assert 0 <= summary["student_acc"] <= 100 and distiller.images_seen > 0
    assert all(torch.equal(a, b) for a, b in zip(generator_before, distiller.generator.parameters()))


def test_real_data_ceiling_script_prints_a_table_and_writes_json(digits_teacher, tmp_path, capsys):
    ceiling = _load_benchmark("real_data_ceiling")
    out = tmp_path / "ceiling.json"
    args = ["--preset", "digits-demo", "--out", str(out), "--set", f"teacher.checkpoint={digits_teacher}"]
    assert ceiling.main(args + [arg for o in TINY for arg in ("--set", o)]) == 0
    printed = capsys.readouterr().out
    assert "| real training images, teacher-labelled |" in printed
    saved = json.loads(out.read_text())
    warmup = tiny_config().distill.generator_warmup
    assert saved["runs"][0]["student_steps"] == (4 - warmup) * 5 and 0 <= saved["mean_student_acc"] <= 100


def test_cpu_layers_benchmark_prints_a_row_per_replaced_layer():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_layers.py"), "--batch", "8",
                             "--repeats", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| layer | nn (ms) | kit (ms) | nn / kit |" in result.stdout
    assert "| teacher conv1 (1 -> 6), forward + backward to the image |" in result.stdout
    assert result.stdout.count("| max pool 2x2 of") == 4
    assert result.stdout.count("| generator up-sampling") == 2
