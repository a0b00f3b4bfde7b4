"""The dashboard's controls under Streamlit's AppTest: start, stop, preset change, bad values, path traversal."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from cpsc_dfkd.control import status  # noqa: E402
from cpsc_dfkd.runs import read_json  # noqa: E402

from conftest import TINY  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch, digits_teacher):
    runs = tmp_path / "runs"
    (runs / "teachers").mkdir(parents=True)
    shutil.copy(digits_teacher, runs / "teachers" / "digits.pt")
    monkeypatch.setenv("CPSC_DFKD_RUNS_DIR", str(runs))
    return runs


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def error_texts(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_new_run_page_shows_the_resolved_config_of_the_chosen_preset(runs_dir):
    at = app()
    assert at.selectbox(key="preset").value == "digits-demo"
    assert "name: digits" in at.code[0].value
    at.selectbox(key="preset").set_value("fashion-mnist").run()
    assert not at.exception
    assert "name: fashion-mnist" in at.code[0].value
    # the loss-weight defaults follow the preset and method (the Fashion preset uses ikd 0.5)
    ikd = [n for n in at.number_input if n.label == "ikd"][0]
    assert ikd.value == pytest.approx(0.5)


@pytest.mark.parametrize("override, message", [
    ("distill.iterations=-3", "distill.iterations"),
    ("loss.nonsense=1", "nonsense"),
    ("distill.batch_size=many", "distill.batch_size"),
])
def test_bad_values_give_a_message_in_the_page_and_start_nothing(runs_dir, override, message):
    at = app()
    at.text_area(key="extra").set_value(override).run()
    assert not at.exception
    assert any(message in text for text in error_texts(at)), error_texts(at)
    assert not any(b.key == "start" for b in at.button)  # no Start button for a config that cannot run
    assert not [p for p in runs_dir.iterdir() if p.name != "teachers"]


def test_start_then_stop_from_the_page(runs_dir):
    at = app()
    at.selectbox(key="teacher").set_value("teachers/digits.pt")
    at.text_area(key="extra").set_value("\n".join(TINY[1:] + ["distill.iterations=2000", "distill.log_every=1"]))
    at.run()
    at.button(key="start").click().run()
    assert not at.exception and not error_texts(at), error_texts(at)
    (run_dir,) = [p for p in runs_dir.iterdir() if p.name != "teachers"]
    assert at.session_state["page"] == "Run"

    # a second click (another tab, a double click) does not start a duplicate run
    at.session_state["go_to"] = "New run"
    at.run()
    at.button(key="start").click().run()
    assert any("already training" in text for text in error_texts(at))
    assert len([p for p in runs_dir.iterdir() if p.name != "teachers"]) == 1

    deadline = time.time() + 120
    while status(run_dir) != "running":
        assert time.time() < deadline, "the run never started"
        time.sleep(0.2)
    at.session_state["go_to"] = "Run"
    at.run()
    at.button(key="stop").click().run()
    assert not at.exception
    deadline = time.time() + 120
    while not (run_dir / "summary.json").exists():
        assert time.time() < deadline, "the run did not stop"
        time.sleep(0.2)
    assert read_json(run_dir / "summary.json")["status"] == "stopped"


def test_a_run_outside_the_runs_directory_is_refused(runs_dir, tmp_path):
    outside = tmp_path / "secret-run"
    outside.mkdir()
    (outside / "config.yaml").write_text("seed: 0\n")
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = "../secret-run"
    at.run()
    assert not at.exception
    assert any("outside the runs directory" in text for text in error_texts(at)), error_texts(at)
