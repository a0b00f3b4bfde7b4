"""Fashion-MNIST data-free benchmark: CPSC-DFKD, its baselines and its ablations on one loop, one budget.

Teacher LeNet-5 (BN), student LeNet-5-half (BN), 32x32. Every method gets the same budget: the same
number of iterations, batch size and student steps, so the student sees the same number of synthetic
images. CPSC-DFKD and the strongest baseline run with several seeds. Prints a markdown table and
writes ``results.json``, per-run directories, and a picture of per-class samples of every method.

    python benchmarks/fashion_mnist.py                # the full benchmark (long: see --help)
    python benchmarks/fashion_mnist.py --quick        # a few iterations, proves the script runs (CI)
    python benchmarks/fashion_mnist.py --jobs 2       # two runs at a time, one CPU thread each
    python benchmarks/fashion_mnist.py --jobs 2 --ablation-seeds 3   # and 3 seeds per ablation

With ``--jobs N`` each run gets ``--threads`` CPU threads (default: cores / N). The wall time in the
table is then the time of a run that shared the machine, so it overstates a solo run's time.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from cpsc_dfkd.config import resolve
from cpsc_dfkd.distill import NonFiniteLoss
from cpsc_dfkd.experiment import run_distillation
from cpsc_dfkd.methods import RECIPES, list_methods
from cpsc_dfkd.teacher import obtain_teacher

BASELINES = list_methods("baseline")
ABLATIONS = list_methods("ablation")
PUBLISHED = {"ZSKD (ICML 2019), data-free, published": 79.62, "student on real data, published": 89.43}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few iterations and a 1-epoch teacher (CI smoke run)")
    p.add_argument("--iterations", type=int, help="iterations per run (default: the fashion-mnist preset's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds for CPSC-DFKD and the strongest baseline")
    p.add_argument("--ablation-seeds", type=int, default=1,
                   help="seeds for each ablation (1 by default: an ablation's effect is then measured against "
                        "CPSC-DFKD's seed spread)")
    p.add_argument("--methods", nargs="*", help=f"subset of methods (default: all of {', '.join(RECIPES)})")
    p.add_argument("--out", default="benchmarks/results/fashion-mnist", help="where runs and results go")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides applied to every run")
    p.add_argument("--data-root", help="folder with Fashion-MNIST (default search order, see README)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each in its own process)")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: cores / jobs)")
    args = p.parse_args(argv)
    for flag, value in (("--seeds", args.seeds), ("--ablation-seeds", args.ablation_seeds)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return args


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def run_many(jobs: list[tuple[str, int]], overrides: list[str], out: Path, extra: dict | None, workers: int,
             threads: int) -> list[dict]:
    """Run (method, seed) pairs, ``workers`` at a time, each process limited to ``threads`` CPU threads."""
    if workers == 1:
        _limit_threads(threads)
        return [run_one(method, seed, overrides, out, extra) for method, seed in jobs]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked OpenMP state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_limit_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(run_one, method, seed, overrides, out, extra) for method, seed in jobs]
        return [future.result() for future in futures]


def run_one(method: str, seed: int, overrides: list[str], out: Path, extra: dict | None) -> dict:
    config = resolve("fashion-mnist", overrides + [f"distill.method={method}", f"seed={seed}"], extra)
    run_dir = out / f"{method}-seed{seed}"
    if (run_dir / "summary.json").exists():  # finished earlier: reuse (delete the folder to re-run)
        return json.loads((run_dir / "summary.json").read_text())
    resume = (run_dir / "checkpoints" / "last.pt").exists()  # interrupted earlier: continue from its checkpoint
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    try:
        summary = run_distillation(config, run_dir, resume=resume, progress=False, log=lambda message: None)
    except NonFiniteLoss as error:  # a result of the method, not a crash of the benchmark: report it, go on
        print(f"  {method} seed {seed}: diverged: {error}", flush=True)
        return {"seed": seed, "run_dir": str(run_dir), "diverged": str(error), "student_acc": None,
                "best_student_acc": None, "wall_s": None, "images_per_s": None, "iterations_per_s": None}
    print(f"  {method} seed {seed}: student {summary['student_acc']:.2f}% in {summary['wall_s']:.0f}s", flush=True)
    return summary


def first_wave(methods: list[str], seeds: int, ablation_seeds: int) -> list[tuple[str, int]]:
    """(method, seed) runs made before the strongest baseline is known: every method with seed 0, CPSC-DFKD
    with ``seeds`` seeds and each ablation with ``ablation_seeds``."""
    runs = [(m, 0) for m in methods]
    runs += [("cpsc-dfkd", s) for s in range(1, seeds) if "cpsc-dfkd" in methods]
    runs += [(m, s) for m in methods if m in ABLATIONS for s in range(1, ablation_seeds)]
    return runs


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def finished(runs: list[dict]) -> list[dict]:
    """The runs that did not diverge."""
    return [r for r in runs if r.get("diverged") is None]


def table(results: dict[str, list[dict]], teacher_acc: float) -> str:
    """One row per method: mean ± std over its finished seeds; diverged seeds are counted, not averaged."""
    lines = ["| method | kind | student acc % | % of teacher | seeds | wall time per run | images/s | iterations/s |",
             "|---|---|---|---|---|---|---|---|"]
    done_runs = {method: finished(runs) for method, runs in results.items()}
    order = sorted(results, reverse=True, key=lambda m: statistics.mean(r["student_acc"] for r in done_runs[m])
                   if done_runs[m] else -1.0)
    for method in order:
        runs, done = results[method], done_runs[method]
        seeds = f"{len(runs)}" + (f" ({len(runs) - len(done)} diverged)" if len(done) < len(runs) else "")
        if not done:
            lines.append(f"| {method} | {RECIPES[method].kind} | diverged | - | {seeds} | - | - | - |")
            continue
        accs = [r["student_acc"] for r in done]
        wall = statistics.mean(r["wall_s"] for r in done)
        lines.append(f"| {method} | {RECIPES[method].kind} | {mean_std(accs)} | "
                     f"{100 * statistics.mean(accs) / teacher_acc:.1f} | {seeds} | {wall / 60:.1f} min | "
                     f"{statistics.mean(r['images_per_s'] for r in done):.0f} | "
                     f"{statistics.mean(r['iterations_per_s'] for r in done):.2f} |")
    for name, acc in PUBLISHED.items():
        lines.append(f"| {name} | reference | {acc:.2f} | {100 * acc / teacher_acc:.1f} | - | - | - | - |")
    return "\n".join(lines)


def samples_picture(results: dict[str, list[dict]], out: Path) -> Path | None:
    """One panel per method: its first run's final per-class grid (one row per class), titled."""
    from PIL import Image, ImageDraw

    panels = []
    for method, runs in results.items():
        grid = Path(runs[0]["run_dir"]) / "samples" / "latest.png"
        if grid.exists():
            panels.append((method, Image.open(grid).convert("RGB")))
    if not panels:
        return None
    width, height = panels[0][1].size
    columns = min(4, len(panels))
    rows = (len(panels) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (width + 10), rows * (height + 24)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (method, image) in enumerate(panels):
        x, y = (i % columns) * (width + 10), (i // columns) * (height + 24)
        draw.text((x + 4, y + 4), method, fill="black")
        canvas.paste(image.resize((width, height)), (x, y + 20))
    path = out / "samples.png"
    canvas.save(path)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["teacher.epochs=1", "distill.iterations=6", "distill.batch_size=64", "distill.eval_every=0",
                      "distill.sample_every=0", "distill.checkpoint_every=0", "distill.log_every=2",
                      "distill.generator_warmup=2"]
    elif args.iterations:
        overrides.append(f"distill.iterations={args.iterations}")
    extra = {"data": {"root": args.data_root}} if args.data_root else None
    methods = args.methods or list(RECIPES)
    seeds = 1 if args.quick else args.seeds
    ablation_seeds = 1 if args.quick else args.ablation_seeds

    base = resolve("fashion-mnist", overrides, extra)
    teacher, meta, teacher_path = obtain_teacher(base)
    teacher_acc = meta["test_acc"]
    d = base.distill
    student_iterations = max(0, d.iterations - d.generator_warmup)
    print(f"teacher {base.teacher.arch}: {teacher_acc:.2f}% ({teacher_path}); budget: {d.iterations} iterations "
          f"({d.generator_warmup} generator-only) x {d.s_steps} student steps x batch {d.batch_size} = "
          f"{student_iterations * d.s_steps * d.batch_size:,} synthetic images seen by each student", flush=True)
    started = time.time()
    workers = max(1, args.jobs)
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    # First wave: every method once, plus the extra seeds of CPSC-DFKD and the ablations; then the strongest
    # baseline's extra seeds.
    first = first_wave(methods, seeds, ablation_seeds)
    results: dict[str, list[dict]] = {}
    for (method, _), summary in zip(first, run_many(first, overrides, out, extra, workers, threads)):
        results.setdefault(method, []).append(summary)
    baselines = [m for m in methods if m in BASELINES]
    strongest = max(baselines, key=lambda m: results[m][0]["student_acc"] or -1.0) if baselines else None
    if strongest:
        second = [(strongest, s) for s in range(1, seeds)]
        results[strongest] += run_many(second, overrides, out, extra, workers, threads)

    text = table(results, teacher_acc)
    print("\n" + text)
    picture = samples_picture(results, out)
    report = {"teacher_acc": teacher_acc, "teacher_checkpoint": str(teacher_path), "strongest_baseline": strongest,
              "ablation_seeds": ablation_seeds,
              "budget": {"iterations": base.distill.iterations, "s_steps": base.distill.s_steps,
                         "batch_size": base.distill.batch_size},
              "overrides": overrides, "jobs": workers, "threads_per_run": threads,
              "total_wall_s": round(time.time() - started, 1), "table_markdown": text,
              "samples_picture": str(picture) if picture else None,
              "runs": {m: [{k: r.get(k) for k in ("seed", "student_acc", "best_student_acc", "wall_s", "images_per_s",
                                                    "iterations_per_s", "run_dir", "diverged")} for r in runs]
                       for m, runs in results.items()}}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out / 'results.json'}" + (f", samples: {picture}" if picture else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
