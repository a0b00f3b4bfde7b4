"""The command line: each bad input gets a clear message and exit code 2, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cpsc_dfkd.cli import main
from cpsc_dfkd.models import create_model
from cpsc_dfkd.runs import save_checkpoint

from conftest import TINY


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_documents_every_command():
    out = subprocess.run([sys.executable, "-m", "cpsc_dfkd", "--help"], capture_output=True, text=True).stdout
    for command in ("teacher", "distill", "eval", "demo"):
        assert command in out
    distill_help = subprocess.run([sys.executable, "-m", "cpsc_dfkd", "distill", "--help"],
                                  capture_output=True, text=True).stdout
    for option in ("--preset", "--set", "--out", "--data-root", "--teacher", "--resume"):
        assert option in distill_help


@pytest.mark.parametrize("argv, message", [
    (["distill", "--preset", "cifar11"], "unknown preset 'cifar11'; valid presets are:"),
    (["distill", "--preset", "digits-demo", "--set", "distill.iterations=lots"], "'distill.iterations' must be an integer"),
    (["distill", "--preset", "digits-demo", "--set", "student.arch=resnet19"], "valid models are:"),
    (["distill", "--preset", "digits-demo", "--set", "data.name=svhn"], "valid data sets are:"),
    (["distill", "--preset", "digits-demo", "--set", "distill.nosuch=1"], "unknown config key 'distill.nosuch'"),
    (["distill", "--resume", "/nonexistent/run"], "is not a run directory"),
])
def test_bad_input_exits_2_with_a_message(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_teacher_of_the_wrong_architecture_names_the_differing_shapes(capsys, tmp_path):
    wrong = create_model("lenet5_half_bn", 10, 1)
    save_checkpoint(tmp_path / "t.pt", {"kind": "teacher", "arch": "lenet5_bn", "dataset": "digits",
                                        "state_dict": wrong.state_dict()})
    code, _, err = run_cli(capsys, "distill", "--preset", "digits-demo", "--teacher", str(tmp_path / "t.pt"),
                           "--out", str(tmp_path / "run"), *sum([["--set", o] for o in TINY], []))
    assert code == 2
    assert "features.0.weight: checkpoint has shape [3, 1, 5, 5], model expects [6, 1, 5, 5]" in err


def test_teacher_with_another_class_count_is_refused(capsys, tmp_path):
    other = create_model("lenet5_bn", 7, 1)
    torch.save(other.state_dict(), tmp_path / "plain.pt")
    code, _, err = run_cli(capsys, "distill", "--preset", "digits-demo", "--teacher", str(tmp_path / "plain.pt"),
                           "--out", str(tmp_path / "run"))
    assert code == 2 and "fc.2.weight: checkpoint has shape [7, 84], model expects [10, 84]" in err


def test_teacher_for_another_data_set_is_refused(capsys, tmp_path):
    model = create_model("lenet5_bn", 10, 1)
    save_checkpoint(tmp_path / "t.pt", {"kind": "teacher", "arch": "lenet5_bn", "dataset": "mnist",
                                        "state_dict": model.state_dict()})
    code, _, err = run_cli(capsys, "distill", "--preset", "digits-demo", "--teacher", str(tmp_path / "t.pt"),
                           "--out", str(tmp_path / "run"))
    assert code == 2 and "was made for 'mnist', but data.name is 'digits'" in err


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "not a readable checkpoint"),
    (b"PK\x03\x04 truncated zip", "not a readable checkpoint"),
])
def test_corrupt_teacher_file_is_refused(capsys, tmp_path, content, message):
    (tmp_path / "t.pt").write_bytes(content)
    code, _, err = run_cli(capsys, "distill", "--preset", "digits-demo", "--teacher", str(tmp_path / "t.pt"),
                           "--out", str(tmp_path / "run"))
    assert code == 2 and message in err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_missing_data_says_where_it_looked(capsys, tmp_path, monkeypatch):
    from cpsc_dfkd import data

    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "debian")
    monkeypatch.delenv("CPSC_DFKD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "teacher", "--preset", "fashion-mnist", "--data-root", str(tmp_path / "none"),
                           "--out", str(tmp_path / "t.pt"))
    assert code == 2 and "was not found. Looked in, in order" in err and "dataset-fashion-mnist" in err


def test_teacher_then_distill_then_eval_end_to_end(capsys, tmp_path):
    sets = sum([["--set", o] for o in TINY], [])
    code, out, _ = run_cli(capsys, "teacher", "--preset", "digits-demo", "--out", str(tmp_path / "t.pt"), *sets)
    assert code == 0 and "test accuracy" in out
    code, out, _ = run_cli(capsys, "distill", "--preset", "digits-demo", "--teacher", str(tmp_path / "t.pt"),
                           "--out", str(tmp_path / "run"), "--quiet", *sets)
    assert code == 0 and "| cpsc-dfkd | digits |" in out
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "run" / "student.pt"))
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["dataset"] == "digits" and 0 <= result["test_acc"] <= 100
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result["test_acc"] == pytest.approx(summary["student_acc"], abs=0.01)
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "t.pt"))
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["arch"] == "lenet5_bn"


def test_eval_of_a_plain_state_dict_needs_arch_and_dataset(capsys, tmp_path):
    torch.save(create_model("lenet5", 10, 1).state_dict(), tmp_path / "plain.pt")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "plain.pt"))
    assert code == 2 and "--arch" in err
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "plain.pt"), "--arch", "lenet5", "--dataset", "digits")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["arch"] == "lenet5"
