"""How much does watching a run in the dashboard slow its training?

    python benchmarks/dashboard_overhead.py                 # Fashion-MNIST, 200 iterations, 2 repeats
    python benchmarks/dashboard_overhead.py --iterations 60 --preset digits-demo

Runs the same configuration alternately (a) from the CLI and (b) started from the dashboard's page in
headless Chromium (Debian's chromium through Playwright), with the page left open on a panel (Samples, or UMAP, where
every new embeddings file is also projected in the dashboard's process); the page polls every 5 s.
Both write per-class samples and diagnostics at the same interval. The figure compared is the run's
own training wall time (``summary.json``: ``wall_s``), which excludes process start-up.
Needs the preset's teacher in the teacher cache (run ``cpsc-dfkd teacher --preset ...`` once).
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_run(preset: str, overrides: list[str], out: Path) -> float:
    command = [sys.executable, "-m", "cpsc_dfkd", "distill", "--preset", preset, "--out", str(out), "--quiet"]
    for override in overrides:
        command += ["--set", override]
    subprocess.run(command, check=True, capture_output=True)
    return json.loads((out / "summary.json").read_text())["wall_s"]


def dashboard_run(preset: str, overrides: list[str], runs: Path, screenshot: Path | None, panel: str) -> float:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cpsc_dfkd", "dashboard", "--port", str(port), "--runs-dir",
                               str(runs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.get_by_label("Preset").click()
            page.get_by_role("option", name=preset, exact=True).click()
            box = page.get_by_label("More overrides (one key=value per line)")
            box.fill("\n".join(overrides))
            box.press("Control+Enter")
            page.get_by_role("button", name="Start").click()
            segment = page.get_by_test_id("stButtonGroup").get_by_text(panel, exact=True)
            segment.click()
            deadline = time.time() + 3600
            while not list(runs.glob("*/summary.json")):
                if time.time() > deadline:
                    raise TimeoutError("the dashboard run did not finish within an hour")
                time.sleep(1)
                if panel == "UMAP" and segment.count() and not page.get_by_role("radiogroup", name="Projection").count():
                    segment.click()  # the page switched to the run view (panel back to Samples): show the map again
            if screenshot:
                time.sleep(4)
                page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    (summary,) = runs.glob("*/summary.json")
    return json.loads(summary.read_text())["wall_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--every", type=int, default=25, help="samples and diagnostics interval (both modes)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--panels", default="Samples,UMAP",
                        help="dashboard panels to keep on screen, one dashboard run each per repeat")
    parser.add_argument("--screenshot", help="save the dashboard page of the last run here (PNG)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print("needs Debian's chromium: apt-get install chromium", file=sys.stderr)
        return 2
    overrides = [f"distill.iterations={args.iterations}", "distill.generator_warmup=0",
                 f"distill.sample_every={args.every}", f"distill.diagnostics_every={args.every}",
                 f"distill.eval_every={args.iterations}", f"distill.checkpoint_every={args.iterations}"]
    panels = args.panels.split(",")
    cli: list[float] = []
    dash: dict[str, list[float]] = {panel: [] for panel in panels}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            cli.append(cli_run(args.preset, overrides, Path(tmp) / f"cli-{repeat}"))
            for panel in panels:
                last = repeat == args.repeats - 1 and panel == panels[-1]
                dash[panel].append(dashboard_run(args.preset, overrides, Path(tmp) / f"dash-{panel}-{repeat}",
                                                 Path(args.screenshot) if args.screenshot and last else None, panel))
            print(f"repeat {repeat}: CLI {cli[-1]:.1f}s, " +
                  ", ".join(f"dashboard on {p} {dash[p][-1]:.1f}s" for p in panels), flush=True)
    cli_mean = statistics.mean(cli)
    print(f"\n{args.preset}, {args.iterations} iterations, samples + diagnostics every {args.every}, "
          f"{args.repeats} repeats each\n")
    print("| mode | training wall time (mean) | runs | overhead |")
    print("|---|---|---|---|")
    print(f"| CLI | {cli_mean:.1f} s | {', '.join(f'{t:.1f}' for t in cli)} | - |")
    for panel in panels:
        mean = statistics.mean(dash[panel])
        print(f"| dashboard, page open on {panel} | {mean:.1f} s | {', '.join(f'{t:.1f}' for t in dash[panel])} | "
              f"{100 * (mean / cli_mean - 1):+.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
