"""``cpsc-dfkd``: the command line. Every sub-command builds a config and calls the library."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError

CONFIG_HELP = ("--set section.key=value overrides any config field (repeatable), e.g. --set distill.iterations=100 "
               "--set loss.scl=0.5 --set device=cpu. Sections: data, teacher, student, generator, loss, distill.")


def _add_config_options(parser: argparse.ArgumentParser, default_preset: str | None) -> None:
    parser.add_argument("--preset", default=default_preset,
                        help=f"a preset name or a path to a YAML file (default: {default_preset})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field; repeatable")
    parser.add_argument("--data-root", help="folder that holds the data set (searched before $CPSC_DFKD_DATA, "
                                            "./data and /usr/share/datasets)")
    parser.add_argument("--teacher", help="an existing teacher checkpoint (default: train the preset's teacher "
                                          "or reuse the cached one)")


def _resolve(args: argparse.Namespace, extra_overrides: list[str] | None = None):
    from .config import resolve

    overrides = list(extra_overrides or []) + list(args.overrides)
    extra: dict[str, Any] = {}
    if getattr(args, "data_root", None):
        extra.setdefault("data", {})["root"] = args.data_root
    if getattr(args, "teacher", None):
        extra.setdefault("teacher", {})["checkpoint"] = args.teacher
    return resolve(args.preset, overrides, extra)


def cmd_teacher(args: argparse.Namespace) -> int:
    from .teacher import teacher_cache_path, train_teacher

    config = _resolve(args)
    if args.out:
        out = Path(args.out)
        out = out if out.suffix == ".pt" else out / "teacher.pt"
        if out.exists() and not args.force:
            raise UserError(f"{out} exists; pass --force to overwrite it or choose another --out")
    else:
        out = teacher_cache_path(config)
    state = train_teacher(config, out)
    print(f"teacher {state['arch']} on {state['dataset']}: test accuracy {state['test_acc']:.2f}% "
          f"({state['train_seconds']:.0f}s) -> {out}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from .experiment import config_for_resume, run_distillation

    if args.resume:
        config = config_for_resume(args.resume, args.overrides)
        summary = run_distillation(config, args.resume, resume=True, progress=not args.quiet)
    else:
        config = _resolve(args)
        summary = run_distillation(config, args.out, progress=not args.quiet)
    _print_summary_table([summary])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import resolve
    from .data import load_split
    from .runtime import select_device
    from .teacher import evaluate, load_classifier

    model, meta = load_classifier(args.checkpoint, args.arch, args.dataset)
    dataset = args.dataset or meta["dataset"]
    config = resolve(None, [f"data.name={dataset}"] + args.overrides,
                     {"data": {"root": args.data_root}} if args.data_root else None)
    device = select_device(config.device)
    test_set = load_split(dataset, "test", config.data.root, config.data.download)
    acc = evaluate(model.to(device), test_set, device, config.data.eval_batch_size)
    print(json.dumps({"checkpoint": str(args.checkpoint), "arch": meta["arch"], "dataset": dataset,
                      "test_acc": round(acc, 2), "num_test_images": len(test_set)}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiment import run_distillation

    config = _resolve(args)
    start = time.time()
    summary = run_distillation(config, args.out, progress=not args.quiet)
    summary["total_wall_s"] = round(time.time() - start, 1)
    _print_summary_table([summary])
    print(f"\nrun directory: {summary['run_dir']} (per-class samples in {summary['run_dir']}/samples/latest.png)")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .report import diagnose_run, per_class_table, summary_lines

    snapshot, evaluation, out = diagnose_run(Path(args.run_dir), args.per_class, not args.no_real, args.projection,
                                             Path(args.out) if args.out else None)
    print(f"diagnostics of {args.run_dir} at iteration {snapshot.iteration} ({args.per_class} samples per class)")
    for line in summary_lines(snapshot.report, evaluation):
        print("  " + line)
    print()
    print(per_class_table(snapshot.report, evaluation))
    print(f"\nHTML report: {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import importlib.util
    import os

    if importlib.util.find_spec("streamlit") is None:
        raise UserError("the dashboard needs streamlit, plotly and umap-learn: pip install -e '.[dashboard]'")
    app = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
    if not app.exists():
        raise UserError(f"{app} is missing: the dashboard runs from a clone of the repository (pip install -e .)")
    runs_dir = Path(args.runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host} exposes the dashboard (and training on this machine) to the network",
              file=sys.stderr)
    print(f"cpsc-dfkd dashboard: http://{args.host}:{args.port}  (runs directory {runs_dir}; Ctrl-C stops it)",
          flush=True)
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
               "--", "--runs-dir", str(runs_dir)]
    # Become the Streamlit server (no child left behind when this process is stopped or killed).
    os.execv(sys.executable, command)
    return 0  # not reached


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print_summary_table(summaries: list[dict[str, Any]]) -> None:
    header = ["method", "dataset", "teacher", "student", "teacher acc %", "student acc %", "best %", "wall s",
              "img/s", "device"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for s in summaries:
        row = [s["method"], s["dataset"], s["teacher_arch"], s["student_arch"], _fmt(s["teacher_acc"]),
               _fmt(s["student_acc"]), _fmt(s["best_student_acc"]), _fmt(s.get("total_wall_s", s["wall_s"]), 1),
               _fmt(s["images_per_s"], 0), f"{s['device']} ({s['precision']})"]
        print("| " + " | ".join(row) + " |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpsc-dfkd",
        description="Data-free knowledge distillation with CPSC-DFKD and its baselines.",
        epilog=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"cpsc-dfkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("teacher", help="train a teacher on real data", epilog=CONFIG_HELP,
                       description="Train the preset's teacher on the real training split; the checkpoint stores "
                                   "its test accuracy, architecture and data set.")
    _add_config_options(p, "fashion-mnist")
    p.add_argument("--out", help="checkpoint file (.pt) or folder (default: the teacher cache, which distill reuses)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("distill", help="distil a student without real training data", epilog=CONFIG_HELP,
                       description="Distil a student from a teacher using only synthetic images; the real test "
                                   "split is used for evaluation only.")
    _add_config_options(p, "fashion-mnist")
    p.add_argument("--out", help="run directory to create (default: runs/METHOD-DATE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("eval", help="test accuracy of a checkpoint", epilog=CONFIG_HELP,
                       description="Report a teacher, student or run checkpoint's accuracy on a data set's test split.")
    p.add_argument("checkpoint", help="a .pt file: teacher, student.pt, or a run's checkpoints/last.pt")
    p.add_argument("--dataset", help="data set (default: the one recorded in the checkpoint)")
    p.add_argument("--arch", help="architecture, for plain state dicts that do not record it")
    p.add_argument("--data-root", help="folder that holds the data set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the whole pipeline on bundled digits (no download), in minutes",
                       epilog=CONFIG_HELP,
                       description="Train (or reuse) a teacher, distil a student with CPSC-DFKD and print a table. "
                                   "Default: scikit-learn's bundled digits. --preset fashion-mnist for Fashion-MNIST.")
    _add_config_options(p, "digits-demo")
    p.add_argument("--out", help="run directory to create (default: runs/METHOD-DATE-TIME)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("diagnose", help="per-class mode-collapse diagnostics of a run, with an HTML report",
                       description="Measure the generator of a run at its last checkpoint: conditional accuracy, "
                                   "confidence, diversity and collapse flags per class (data-free), plus Frechet "
                                   "distance and coverage on teacher features (needs the real test split).")
    p.add_argument("run_dir", help="a run directory written by distill or demo")
    p.add_argument("--per-class", type=int, default=64, help="synthetic samples per class (default 64)")
    p.add_argument("--no-real", action="store_true", help="skip the measures that need the real test split")
    p.add_argument("--projection", choices=["auto", "umap", "pca"], default="auto",
                   help="2-D map method (auto: UMAP when umap-learn is installed, else PCA)")
    p.add_argument("--out", help="HTML report path (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("dashboard", help="the live dashboard (Streamlit): train, inspect samples, UMAP, diagnostics",
                       description="Start the Streamlit dashboard. It binds to 127.0.0.1 unless --host says otherwise "
                                   "and reads and writes only inside --runs-dir.")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--runs-dir", default="runs", help="folder of run directories (default ./runs)")
    p.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a distillation run can be continued with: cpsc-dfkd distill --resume RUN_DIR",
              file=sys.stderr)
        return 130
    finally:
        from . import distributed

        distributed.shutdown(wait_for_peers=finished)


if __name__ == "__main__":
    sys.exit(main())
