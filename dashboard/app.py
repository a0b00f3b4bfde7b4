"""cpsc-dfkd dashboard: set up a run, train it live, inspect per-class samples, the shared UMAP map of
teacher and student embeddings, and the mode-collapse diagnostics; open and compare past runs.

Start it with ``cpsc-dfkd dashboard`` (binds 127.0.0.1). Training runs in its own process (the plain CLI,
see cpsc_dfkd/launcher.py); this page only reads run directories, so reloading it, changing a widget or
opening a second tab never touches a run. Everything is read and written inside ``--runs-dir``.
"""
from __future__ import annotations

import argparse
import os

# One numba thread: the map is computed beside a training process that already uses every core.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
import re
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cpsc_dfkd.config import dump_yaml, list_presets
from cpsc_dfkd.control import send
from cpsc_dfkd.diagnostics import umap_available
from cpsc_dfkd.errors import UserError
from cpsc_dfkd.launcher import Launcher
from cpsc_dfkd.methods import list_methods
from cpsc_dfkd.run_view import MapWorker, RunView, list_runs
from cpsc_dfkd.viz import class_measures_figure, embedding_figure

REFRESH_S = 5.0
PANELS = ["Samples", "UMAP", "Diagnostics", "Curves"]
MAP_INTERVALS = [0, 10, 30, 60, 120, 300]
DEFAULT_MAP_INTERVAL = 60 if (os.cpu_count() or 1) <= 4 else 10  # seconds between UMAP refreshes of a live run
LOSS_HELP = {
    "adv": "generator step: weight of the adversarial term, which seeks images where student and teacher disagree",
    "kd": "student step: weight of the distillation loss, KL(teacher || student)",
    "ikd": "alpha: logit MSE between teacher and student (adversarial in the G step, minimised in the S step)",
    "bn": "beta: match the teacher's BatchNorm running statistics (keeps images near the data manifold)",
    "scl": "gamma: pseudo-supervised contrast (SupCon) on teacher and student features, labels from the generator",
    "ce": "eta: pseudo cross-entropy toward the class the generator was asked for (generator step; the student "
          "step too unless loss.student_ce is set under More overrides)",
}
LOSS_WEIGHTS = list(LOSS_HELP)
LIVE = ("running", "pausing", "paused", "starting")


def runs_dir_from_argv() -> Path:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs-dir", default=os.environ.get("CPSC_DFKD_RUNS_DIR", "runs"))
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.runs_dir).resolve()


RUNS_DIR = runs_dir_from_argv()


@st.cache_resource
def get_launcher(runs_dir: str) -> Launcher:
    """One per server: every browser tab sees the same background runs."""
    return Launcher(runs_dir)


@st.cache_resource
def get_map_worker(method: str = "umap") -> MapWorker:
    """One background projector per method, shared by every tab of this server."""
    return MapWorker(method=method if method == "pca" or umap_available() else "pca", seed=0)


def open_run(name: str) -> RunView | None:
    try:
        return RunView(RUNS_DIR, name)
    except UserError as exc:
        st.error(str(exc))
        return None


# ------------------------------------------------------------------------------------------- new run
def teacher_choices() -> dict[str, str | None]:
    choices: dict[str, str | None] = {"train or reuse the preset's cached teacher": None}
    for path in sorted((RUNS_DIR / "teachers").glob("*.pt")):
        choices[f"teachers/{path.name}"] = str(path)
    return choices


def save_uploaded_teacher(upload, preset: str, overrides: list[str]) -> str | None:
    """Keep an uploaded checkpoint inside the runs directory, once it has loaded safely (weights only)."""
    from cpsc_dfkd.teacher import load_teacher

    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload.name).name) or "teacher.pt"
    target = RUNS_DIR / "teachers" / safe_name
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".upload")
    temporary.write_bytes(upload.getvalue())
    try:
        config = get_launcher(str(RUNS_DIR)).check(preset, overrides)
        load_teacher(temporary, config)  # torch.load(weights_only=True): a pickle that runs code is refused
    except UserError as exc:
        temporary.unlink(missing_ok=True)
        st.error(f"uploaded teacher refused: {exc}")
        return None
    temporary.replace(target)
    return str(target)


def new_run_page() -> None:
    st.header("New run")
    presets = list_presets()
    left, right = st.columns([1, 1])
    with left:
        preset = st.selectbox("Preset", presets, index=presets.index("digits-demo"), key="preset")
        methods = list_methods()
        method = st.selectbox("Method", methods, index=methods.index("cpsc-dfkd"), key="method")
        teachers = teacher_choices()
        teacher_label = st.selectbox("Teacher", list(teachers), key="teacher")
        upload = st.file_uploader("...or upload a teacher checkpoint (.pt)", type=["pt", "pth"])
        iterations = st.number_input("Iterations", min_value=1, value=None, step=50, key="iterations",
                                     placeholder="preset default")
        seed = st.number_input("Seed", min_value=0, value=0, step=1, key="seed")
        extra = st.text_area("More overrides (one key=value per line)", key="extra",
                             placeholder="distill.batch_size=128\ngenerator.lr=0.001")
    base = [f"distill.method={method}"]
    try:
        defaults = get_launcher(str(RUNS_DIR)).check(preset, base).loss
    except UserError as exc:
        st.error(str(exc))
        return
    with right:
        st.caption("Loss weights (defaults: the preset with the method's recipe)")
        weights = {name: st.number_input(name, value=float(getattr(defaults, name)), min_value=0.0, step=0.1,
                                         key=f"loss.{name}.{preset}.{method}", help=LOSS_HELP[name])
                   for name in LOSS_WEIGHTS}
    overrides = base + [f"loss.{k}={v}" for k, v in weights.items()] + [f"seed={int(seed)}"]
    if iterations:
        overrides.append(f"distill.iterations={int(iterations)}")
    overrides += [line.strip() for line in extra.splitlines() if line.strip()]
    teacher = teachers[teacher_label]
    if upload is not None:
        teacher = save_uploaded_teacher(upload, preset, overrides)
        if teacher is None:
            return
    launcher = get_launcher(str(RUNS_DIR))
    try:
        config = launcher.check(preset, overrides, teacher)
    except UserError as exc:
        st.error(f"This configuration cannot run: {exc}")
        return
    every = max(1, config.distill.sample_every)
    overrides.append(f"distill.diagnostics_every={config.distill.diagnostics_every or every}")
    with st.expander("Resolved config", expanded=False):
        st.code(dump_yaml(config), language="yaml")
    allow = st.checkbox("Allow a second run beside one that is training", key="allow_concurrent")
    if st.button("Start", type="primary", key="start"):
        try:
            run_dir = launcher.start(preset, overrides, teacher, allow_concurrent=allow)
        except UserError as exc:
            st.error(str(exc))
            return
        name = str(run_dir.relative_to(RUNS_DIR))
        st.session_state.selected_run = name
        st.query_params["run"] = name
        st.session_state.go_to = "Run"  # the page radio exists already: switch on the next run
        st.rerun()


# ------------------------------------------------------------------------------------------- one run
def controls(view: RunView) -> None:
    state = view.status
    if state == "not started" and view.path in get_launcher(str(RUNS_DIR)).active():
        state = "starting"
    st.markdown(f"**{view.name}** — status: `{state}`")
    columns = st.columns(5)
    if columns[0].button("Pause", disabled=state != "running", key="pause"):
        send(view.path, "pause")
        st.rerun()
    if columns[1].button("Resume", disabled=state != "paused", key="continue"):
        send(view.path, "run")
        st.rerun()
    if columns[2].button("Stop", disabled=state not in ("running", "pausing", "paused"), key="stop"):
        send(view.path, "stop")
        st.rerun()
    if columns[3].button("Continue from checkpoint", disabled=state not in ("stopped", "interrupted"),
                         key="resume_checkpoint"):
        try:
            get_launcher(str(RUNS_DIR)).resume(view.name)
        except UserError as exc:
            st.error(str(exc))
        st.rerun()
    log = get_launcher(str(RUNS_DIR)).log_tail(view.path)
    if state in ("failed", "interrupted", "not started") and log:
        st.warning("The training process wrote:")
        st.code(log)


def curves_figure(views: list[RunView], key: str, title: str) -> go.Figure:
    figure = go.Figure()
    for view in views:
        event = "eval" if key == "student_acc" else "train"
        records = [r for r in view.records(event) if key in r]
        figure.add_trace(go.Scatter(x=[r["iteration"] for r in records], y=[r[key] for r in records],
                                    mode="lines+markers", name=f"{view.name}: {key}"))
    figure.update_layout(title=title, height=280, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="iteration")
    return figure


def loss_figure(view: RunView) -> go.Figure:
    records = view.records("train")
    figure = go.Figure()
    keys = sorted({k for r in records for k in r if k.startswith(("g_", "s_")) and isinstance(r[k], (int, float))})
    for key in keys:
        figure.add_trace(go.Scatter(x=[r["iteration"] for r in records], y=[r.get(key) for r in records],
                                    mode="lines", name=key, visible=True if key.endswith("total") else "legendonly"))
    figure.update_layout(title="Losses (click the legend to show more terms)", height=300,
                         margin=dict(l=10, r=10, t=40, b=10), xaxis_title="iteration")
    return figure


def progress_line(view: RunView, config: dict) -> None:
    trains, evals = view.records("train"), view.records("eval")
    total = config["distill"]["iterations"]
    done = trains[-1]["iteration"] if trains else 0
    st.progress(min(done / total, 1.0), text=f"iteration {done} / {total}")
    columns = st.columns(4)
    summary = view.summary() or {}
    columns[0].metric("student acc %", f"{evals[-1]['student_acc']:.2f}" if evals else "-")
    columns[1].metric("teacher acc %", f"{summary['teacher_acc']:.2f}" if summary.get("teacher_acc") else "-")
    columns[2].metric("images/s", f"{trains[-1].get('images_per_s', 0):.0f}" if trains else "-")
    columns[3].metric("best %", f"{evals[-1]['best_student_acc']:.2f}" if evals else "-")


def samples_panel(view: RunView, class_names: list[str]) -> None:
    latest = view.sample_grid()
    if latest is None:
        st.info("No samples yet: the first grid appears after distill.sample_every iterations.")
        return
    st.image(str(latest), caption="Latest samples, one row per class", width=420)
    label = st.selectbox("Inspect a class", range(len(class_names)), format_func=lambda c: class_names[c],
                         key=f"class_{view.name}")
    steps = view.sample_iterations()
    if len(steps) > 1:
        step = st.select_slider("Iteration", options=steps, value=steps[-1], key=f"step_{view.name}")
    else:
        step = steps[-1] if steps else None
    row = view.class_row(step, label, len(class_names))
    if row is not None:
        st.image(row.resize((row.width * 3, row.height * 3)), caption=f"{class_names[label]} at iteration {step}",
                 width=720)


def map_panel(view: RunView, class_names: list[str]) -> None:
    method = st.radio("Projection", ["umap", "pca"], horizontal=True, key=f"map_method_{view.name}",
                      format_func=str.upper,
                      help="UMAP shows neighbourhoods best; PCA is instant and takes almost no CPU from training.")
    worker = get_map_worker(method)
    interval = st.select_slider("Refresh the map while training at most every", options=MAP_INTERVALS,
                                value=DEFAULT_MAP_INTERVAL, format_func=lambda s: f"{s} s",
                                key=f"map_interval_{view.name}",
                                help="Each UMAP refresh takes CPU from training on a small machine; a finished "
                                     "or paused run's map is always the newest.")
    worker.request(view, interval if view.status == "running" else 0.0)
    frame = worker.frame(view.name)
    if worker.error(view.name):
        st.warning(f"Map not refreshed: {worker.error(view.name)}")
    if frame is None:
        st.info("The shared map appears after the first diagnostics (distill.diagnostics_every); it is being "
                "computed off this page's thread." if view.embedding_iterations() else
                "No embeddings yet: set distill.diagnostics_every for this run.")
        return
    arrays = view.embeddings(frame.iteration)
    figure = map_figure(view.name, frame, len(arrays["labels"]), tuple(class_names), worker.method)
    event = st.plotly_chart(figure, on_select="rerun", selection_mode=("points", "box", "lasso"),
                            key=f"map_{view.name}")
    picked = selected_samples(event, figure)[:24]
    if picked and "images" in arrays:
        st.image([arrays["images"][i] for i in picked], width=64,
                 caption=[f"#{i} ({class_names[int(arrays['labels'][i])]})" for i in picked])
    else:
        st.caption("Hover a point for its class, source and sample number; select points (click, box or "
                   "lasso) to see the synthetic images behind them.")


def map_figure(run: str, frame, n_synthetic: int, class_names: tuple[str, ...], method: str) -> go.Figure:
    """The scatter of one projection, built once and reused by later refreshes (building a plotly figure
    is the page's largest CPU cost, and the page shares the machine with training)."""
    cache = st.session_state.setdefault("map_figures", {})
    key = (run, method, frame.iteration, frame.finished_at)
    if key not in cache:
        hover = [f"synthetic #{i}" for i in range(n_synthetic)] * 2 + \
            [f"real test image #{i}" for i in range(len(frame.labels) - 2 * n_synthetic)]
        cache.clear()
        cache[key] = embedding_figure(
            frame.layout, frame.labels, frame.sources, class_names, hover_text=hover,
            title=f"Teacher (o) and student (x) contrastive embeddings, iteration {frame.iteration} "
                  f"({method.upper()}, {frame.seconds:.1f}s to project)")
    return cache[key]


def selected_samples(event, figure: go.Figure) -> list[int]:
    """Sample numbers of the selected synthetic points (a selection names a trace and an index in it)."""
    try:
        points = event.selection.points
    except AttributeError:
        return []
    chosen = set()
    for point in points:
        trace = figure.data[point.get("curve_number", 0)]
        texts = list(trace.text) if trace.text is not None else []
        index = point.get("point_index", point.get("point_number"))
        if index is not None and index < len(texts):
            match = re.match(r"synthetic #(\d+)", texts[index])
            if match:
                chosen.add(int(match.group(1)))
    return sorted(chosen)


def diagnostics_panel(view: RunView) -> None:
    latest = view.latest_report()
    if latest is None:
        st.info("No diagnostics yet.")
        return
    iteration, report = latest
    st.plotly_chart(class_measures_figure(report, f"Per-class generator diagnostics, iteration {iteration}"),
                    key=f"bars_{view.name}")
    rows = [{"class": c.name, "cond. acc": c.conditional_accuracy, "confidence": round(c.confidence, 3),
             "feature div.": round(c.feature_diversity, 3), "pixel div.": round(c.pixel_diversity, 3),
             "share": round(c.prediction_share, 3), "warning": "; ".join(c.flags) or "ok"} for c in report.classes]
    st.dataframe(rows, hide_index=True)
    flagged = [c for c in report.classes if c.flags]
    for c in flagged:
        st.warning(f"class {c.name}: {'; '.join(c.flags)}")


def run_page() -> None:
    runs = list_runs(RUNS_DIR)
    wanted = st.query_params.get("run") or st.session_state.get("selected_run")
    if wanted and wanted not in runs:
        view = open_run(wanted)  # refuses paths outside the runs directory with a message
        if view is None:
            return
        runs = [wanted] + runs
    if not runs:
        st.info(f"No runs in {RUNS_DIR} yet. Start one under 'New run'.")
        return
    name = st.selectbox("Run", runs, index=runs.index(wanted) if wanted in runs else 0, key="run_select")
    st.query_params["run"] = name
    st.session_state.selected_run = name
    view = open_run(name)
    if view is None:
        return
    if needs_polling(view):
        live_view(view)
    else:
        static_view(view)


def is_live(view: RunView) -> bool:
    return view.status in LIVE or view.path in get_launcher(str(RUNS_DIR)).active()


def needs_polling(view: RunView) -> bool:
    """Training, or a map still being projected in the background: keep re-drawing."""
    return is_live(view) or any(get_map_worker(m).pending(view.name) for m in ("umap", "pca"))


def render_run(view: RunView) -> None:
    controls(view)
    if st.session_state.get("shown_live") == view.name and not needs_polling(view):
        st.session_state.pop("shown_live")
        st.rerun()  # the run has ended and its map is drawn: redraw once as a static page that no longer polls
    if needs_polling(view):
        st.session_state.shown_live = view.name
    if not view.started:
        st.info("The training process is starting (loading PyTorch and the teacher)...")
        return
    config = view.config()
    from cpsc_dfkd.data import dataset_info

    class_names = list(dataset_info(config["data"]["name"]).class_names)
    progress_line(view, config)
    # One panel at a time: a refresh builds and sends only what is on screen, which keeps the page's share
    # of the CPU small next to the training process.
    panel = st.segmented_control("View", PANELS, default="Samples", key=f"panel_{view.name}") or "Samples"
    if panel == "Samples":
        samples_panel(view, class_names)
    elif panel == "UMAP":
        map_panel(view, class_names)
        if st.session_state.get("shown_live") != view.name and needs_polling(view):
            st.rerun()  # a finished run's map was just requested: poll until it is drawn
    elif panel == "Diagnostics":
        diagnostics_panel(view)
    else:
        st.plotly_chart(loss_figure(view), key=f"loss_{view.name}")
        st.plotly_chart(curves_figure([view], "student_acc", "Student accuracy on the real test split (%)"),
                        key=f"acc_{view.name}")


# A live run is re-drawn every REFRESH_S seconds on its own; the rest of the page and the training are untouched.
live_view = st.fragment(run_every=REFRESH_S)(render_run)
static_view = st.fragment(render_run)


# ------------------------------------------------------------------------------------------- compare
def compare_page() -> None:
    st.header("Compare two runs")
    runs = list_runs(RUNS_DIR)
    if len(runs) < 2:
        st.info("Two runs are needed to compare.")
        return
    left_name = st.selectbox("Left", runs, index=0, key="compare_left")
    right_name = st.selectbox("Right", runs, index=1, key="compare_right")
    views = [v for v in (open_run(left_name), open_run(right_name)) if v is not None]
    if len(views) < 2:
        return
    st.plotly_chart(curves_figure(views, "student_acc", "Student accuracy (%)"), key="compare_acc")
    columns = st.columns(2)
    for column, view in zip(columns, views):
        with column:
            st.subheader(view.name)
            summary = view.summary() or {}
            st.json({k: summary.get(k) for k in ("status", "method", "student_acc", "best_student_acc",
                                                 "teacher_acc", "iterations", "wall_s", "images_per_s")})
            grid = view.sample_grid()
            if grid is not None:
                st.image(str(grid), width=360)
            latest = view.latest_report()
            if latest is not None:
                report = latest[1]
                st.write(f"conditional accuracy {report.conditional_accuracy}, class balance "
                         f"{report.class_balance:.2f}, flagged: "
                         f"{', '.join(report.classes[i].name for i in report.flagged) or 'none'}")


def main() -> None:
    st.set_page_config(page_title="cpsc-dfkd dashboard", layout="wide")
    st.title("cpsc-dfkd")
    st.caption(f"runs directory: {RUNS_DIR}")
    pages = ["New run", "Run", "Compare"]
    if "go_to" in st.session_state:
        st.session_state.page = st.session_state.pop("go_to")
    if "page" not in st.session_state:
        st.session_state.page = "Run" if st.query_params.get("run") else "New run"
    page = st.sidebar.radio("Page", pages, key="page")
    {"New run": new_run_page, "Run": run_page, "Compare": compare_page}[page]()


main()
