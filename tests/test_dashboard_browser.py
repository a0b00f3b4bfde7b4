"""End to end: `cpsc-dfkd dashboard` on a free local port, driven in headless Chromium (Debian's package,
through Playwright). A short digits run is started from the page; the test waits for the sample grid and
the UMAP plot, checks they hold an image and points, and saves a screenshot as a test artifact."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CPSC_DFKD_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def browser_available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not browser_available() and os.environ.get("CI") != "true",
    reason="needs Debian's chromium and playwright (apt-get install chromium; pip install playwright); "
           "CI installs both and never skips this test")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(tmp_path):
    port = free_port()
    runs = tmp_path / "runs"
    log = open(tmp_path / "dashboard.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "cpsc_dfkd", "dashboard", "--port", str(port), "--runs-dir",
                                str(runs)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.time() < deadline, "the dashboard did not come up"
            time.sleep(0.5)
    yield url, runs
    process.terminate()
    process.wait(20)
    log.close()


def test_dashboard_trains_live_and_shows_samples_and_the_umap_map(dashboard, digits_teacher):
    from playwright.sync_api import sync_playwright

    url, runs = dashboard
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    overrides = TINY[1:] + ["distill.iterations=40", "distill.sample_every=10", "distill.diagnostics_every=10",
                            f"teacher.checkpoint={digits_teacher}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            page.goto(url)
            box = page.get_by_label("More overrides (one key=value per line)")
            box.fill("\n".join(overrides))
            box.press("Control+Enter")
            page.get_by_role("button", name="Start").click()
            page.get_by_text("Latest samples, one row per class").wait_for(timeout=180_000)
            grid = page.locator("img[src*='media']").first
            grid.wait_for(timeout=30_000)
            assert grid.evaluate("img => img.complete && img.naturalWidth") > 0

            page.get_by_test_id("stButtonGroup").get_by_text("UMAP", exact=True).click()
            plot = page.locator(".js-plotly-plot").filter(has_text="contrastive embeddings")
            plot.wait_for(timeout=180_000)
            points = plot.evaluate("el => el._fullData.reduce((n, trace) => n + (trace._length || 0), 0)")
            sources = plot.evaluate("el => el.data.map(trace => trace.name)")
            assert points > 0
            assert any("(teacher)" in s for s in sources) and any("(student)" in s for s in sources)
            page.screenshot(path=str(ARTIFACTS / "dashboard-umap.png"), full_page=True)

            # A finished run opened afresh: a map it has never had (PCA) is requested by the click and drawn
            # without any other input.
            deadline = time.time() + 300
            while not list(runs.glob("*/summary.json")):
                assert time.time() < deadline, "the dashboard's run did not finish"
                time.sleep(1)
            page.reload()
            page.get_by_text("Run", exact=True).first.click()
            page.get_by_text("finished", exact=True).wait_for(timeout=60_000)
            page.get_by_test_id("stButtonGroup").get_by_text("UMAP", exact=True).click()
            page.get_by_text("PCA", exact=True).click()
            page.locator(".js-plotly-plot").filter(has_text="PCA,").wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    (run,) = [p for p in runs.iterdir() if (p / "config.yaml").exists()]
    assert (run / "samples" / "latest.png").exists() and list((run / "embeddings").glob("iter_*.npz"))
