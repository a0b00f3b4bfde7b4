"""How far the student step itself can go: the preset's student step fed real training images instead of
synthetic ones. NOT data-free: it opens the training split, and is a diagnostic only.

    python benchmarks/real_data_ceiling.py                              # fashion-mnist preset, seed 0
    python benchmarks/real_data_ceiling.py --seeds 2 --set distill.s_steps=10
    python benchmarks/real_data_ceiling.py --preset digits-demo --iterations 20

Everything but the images is the preset's: teacher, student initialisation, losses, crops, mixup,
learning rate and schedule, iterations x student steps. The generator never trains; each student step
draws a batch of real training images (their labels are not used: the teacher labels them, as it
labels synthetic images). The gap between this ceiling and a data-free run is what the synthetic
images cost; the gap between the ceiling and the teacher is what the student step and its budget cost.
Prints a markdown table and writes a JSON of the results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cpsc_dfkd.config import resolve
from cpsc_dfkd.data import TensorImages, load_split
from cpsc_dfkd.distill import Distiller
from cpsc_dfkd.errors import UserError
from cpsc_dfkd.teacher import obtain_teacher


class RealImageDistiller(Distiller):
    """A Distiller whose student steps see real training images; its generator steps are switched off."""

    def __init__(self, *args, train_images: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_images = train_images

    @torch.no_grad()
    def synthetic_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, len(self.train_images), (self.config.distill.batch_size,), generator=self.noise_rng)
        images = self._share(self.train_images[rows])
        return images, self.teacher_forward(images).argmax(1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    p.add_argument("--iterations", type=int, help="iterations (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, as for cpsc-dfkd distill")
    p.add_argument("--data-root", help="folder with the data set (default search order, see README)")
    p.add_argument("--out", default="benchmarks/results/real-data-ceiling.json", help="JSON file to write")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    return args


def stacked_images(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """All images of a split as one tensor: the one the kit's in-memory data sets already hold, or stacked."""
    if isinstance(dataset, TensorImages):
        return dataset.images
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def run_ceiling(preset: str, overrides: list[str], seed: int, data_root: str | None = None) -> dict:
    # No generator steps. The preset's generator-only warm-up stays: the student starts at the same iteration,
    # on the same learning-rate schedule, and takes as many steps as in a data-free run.
    config = resolve(preset, overrides + [f"seed={seed}", "distill.g_steps=0"]
                     + ([f"data.root={data_root}"] if data_root else []))
    teacher, meta, _ = obtain_teacher(config, log=lambda message: None)
    test_set = load_split(config.data.name, "test", config.data.root, config.data.download)
    train_images = stacked_images(load_split(config.data.name, "train", config.data.root, config.data.download))
    distiller = RealImageDistiller(config, teacher, test_set, train_images=train_images,
                                   teacher_acc=meta.get("test_acc"))
    start = time.perf_counter()
    summary = distiller.fit()
    d = config.distill
    return {"seed": seed, "student_acc": summary["student_acc"], "best_student_acc": summary["best_student_acc"],
            "teacher_acc": meta.get("test_acc"), "student_steps": max(0, d.iterations - d.generator_warmup) * d.s_steps,
            "wall_s": time.perf_counter() - start}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = args.overrides + ([f"distill.iterations={args.iterations}"] if args.iterations else [])
    try:
        runs = []
        for seed in range(args.seeds):
            runs.append(run_ceiling(args.preset, overrides, seed, args.data_root))
            print(f"  seed {seed}: {runs[-1]['student_acc']:.2f}% in {runs[-1]['wall_s']:.0f}s", flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    accs = [r["student_acc"] for r in runs]
    mean = statistics.mean(accs)
    spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
    print("\n| images | student acc % | seeds | student steps | teacher acc % | wall time per run |")
    print("|---|---|---|---|---|---|")
    print(f"| real training images, teacher-labelled | {mean:.2f}{spread} ({', '.join(f'{a:.2f}' for a in accs)}) "
          f"| {len(runs)} | {runs[0]['student_steps']:,} | {_percent(runs[0]['teacher_acc'])} "
          f"| {sum(r['wall_s'] for r in runs) / len(runs) / 60:.1f} min |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": args.preset, "overrides": overrides, "runs": runs,
                               "mean_student_acc": mean}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
