"""Throughput of each part of the loop, and where one iteration's time goes, on whatever device is here.

    python benchmarks/throughput.py                          # fashion-mnist preset, CPU or CUDA
    python benchmarks/throughput.py --preset cifar10-resnet34-resnet18 --set distill.batch_size=64

Table 1: images/s of a generator step, a student step (fresh images and from the memory), and
evaluation. Table 2: where whole iterations' wall time goes, measured two ways.
- torch.profiler: top-level ops (model forward/backward, losses) against optimiser steps and the rest. The
  profiler records every op, nested ones included, so its own per-event cost lands in the rest and in
  the ops; the table gives the iteration's wall time with and without it, so that cost is visible.
- Without the profiler: wall time inside the networks' forward calls (teacher, student, generator,
  projection head; hooks on the four modules) and inside backward passes (``Tensor.backward``), against
  everything else: losses outside the networks, crops, mixup, the memory, optimiser steps, Python.
The teacher is an untrained network of the preset's architecture: speed does not depend on weights.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager, nullcontext

import torch

from cpsc_dfkd.config import resolve
from cpsc_dfkd.data import dataset_info
from cpsc_dfkd.distill import Distiller
from cpsc_dfkd.models import create_model
from cpsc_dfkd.teacher import evaluate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def build(preset: str, overrides: list[str]) -> Distiller:
    config = resolve(preset, overrides)
    info = dataset_info(config.data.name)
    teacher = create_model(config.teacher.arch, info.num_classes, info.channels)
    distiller = Distiller(config, teacher)
    # Past the generator-only warm-up: a measured iteration has its student steps, as most of a run's do.
    distiller.iteration = config.distill.generator_warmup
    return distiller


def component_table(distiller: Distiller, repeats: int) -> list[tuple[str, float, float]]:
    d, device = distiller, distiller.device
    batch = d.config.distill.batch_size
    rows = [("generator step", timed(d.generator_step, repeats, device), batch)]
    memory = d.memory
    d.memory = None
    rows.append(("student step, fresh images", timed(d.student_step, repeats, device), batch))
    d.memory = memory
    if memory is not None:
        for _ in range(memory.num_batches):
            d.generator_step()
        rows.append(("student step, from memory", timed(d.student_step, repeats, device), batch))
    info = d.info
    fake_test = torch.utils.data.TensorDataset(torch.randn(4096, info.channels, info.image_size, info.image_size),
                                               torch.zeros(4096, dtype=torch.long))
    seconds = timed(lambda: evaluate(d.student, fake_test, device, d.config.data.eval_batch_size,
                                     d.precision.autocast), max(1, repeats // 5), device)
    rows.append(("evaluation (student, 4096 images)", seconds, 4096))
    iteration = timed(d.train_iteration, max(2, repeats // 2), device)
    rows.append((f"whole iteration ({d.config.distill.g_steps} G + {d.config.distill.s_steps} S steps)", iteration,
                 batch * d.config.distill.s_steps))
    return rows


def profile_iterations(distiller: Distiller, iterations: int) -> dict[str, float]:
    """Share of wall time in model forward/backward, optimiser steps and the rest."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if distiller.device.type == "cuda" else [])
    distiller.train_iteration()
    sync(distiller.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            distiller.train_iteration()
        sync(distiller.device)
    wall = time.perf_counter() - start
    events = prof.events()
    optimiser = sum(e.cpu_time_total for e in events if e.name.startswith("Optimizer.step#")) / 1e6
    # Top-level ops (without a parent op) are counted once each: the forward ops, and the backward ops the
    # autograd engine runs. What the profiler does not see is Python and framework overhead.
    compute = sum(e.cpu_time_total for e in events
                  if e.cpu_parent is None and not e.name.startswith(("Optimizer.", "ProfilerStep"))) / 1e6
    return {"wall_s_per_iteration": wall / iterations, "model_forward_backward": compute / wall,
            "optimiser_steps": optimiser / wall, "other": max(0.0, 1 - (compute + optimiser) / wall)}


@contextmanager
def forward_backward_clock(distiller: Distiller):
    """Adds the wall seconds spent inside the networks' forward calls and inside backward passes to the
    yielded dict. On CUDA every boundary synchronises, so the reading is exact but the loop a little slower."""
    spent, started = {"forward": 0.0, "backward": 0.0}, {}

    def clock() -> float:
        sync(distiller.device)
        return time.perf_counter()

    def before(module, args):
        started[id(module)] = clock()

    def after(module, args, output):
        spent["forward"] += clock() - started.pop(id(module))

    plain_backward = torch.Tensor.backward

    def timed_backward(tensor, *args, **kwargs):
        start = clock()
        plain_backward(tensor, *args, **kwargs)
        spent["backward"] += clock() - start

    networks = (distiller.teacher, distiller.student, distiller.generator, distiller.projection_head)
    handles = [h for m in networks for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    torch.Tensor.backward = timed_backward
    try:
        yield spent
    finally:
        torch.Tensor.backward = plain_backward
        for handle in handles:
            handle.remove()


def unprofiled_iterations(distiller: Distiller, iterations: int) -> dict[str, float]:
    """Share of wall time inside forward calls and backward passes, timed without the profiler. With
    torch.compile the hooks would be traced into the graph, so only the wall time is measured and returned."""
    distiller.train_iteration()
    with nullcontext() if distiller.config.compile else forward_backward_clock(distiller) as spent:
        start = time.perf_counter()
        for _ in range(iterations):
            distiller.train_iteration()
        sync(distiller.device)
        wall = time.perf_counter() - start
    reading = {"wall_s_per_iteration": wall / iterations}
    if spent is None:  # compiled: no shares were clocked, and none are made up
        return reading
    inside = spent["forward"] + spent["backward"]
    return reading | {"forward": spent["forward"] / wall, "backward": spent["backward"] / wall,
                      "other": max(0.0, 1 - inside / wall)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    distiller = build(args.preset, args.overrides)
    cfg = distiller.config
    print(f"device {distiller.device} ({distiller.precision.name}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {cfg.teacher.arch} -> {cfg.student.arch}, generator ngf={cfg.generator.ngf}, "
          f"batch {cfg.distill.batch_size}\n")
    print("| component | ms per call | images/s |\n|---|---|---|")
    for name, seconds, images in component_table(distiller, args.repeats):
        print(f"| {name} | {seconds * 1000:.1f} | {images / seconds:,.0f} |")
    iterations = max(3, args.repeats // 4)
    plain = unprofiled_iterations(distiller, iterations)
    shares = profile_iterations(distiller, iterations)
    print(f"\nwhere one iteration's time goes, {iterations} iterations each way:\n\n"
          f"torch.profiler ({shares['wall_s_per_iteration'] * 1000:.0f} ms per iteration with it, "
          f"{plain['wall_s_per_iteration'] * 1000:.0f} ms without):\n\n| part | share of wall time |\n|---|---|")
    for key in ("model_forward_backward", "optimiser_steps", "other"):
        print(f"| {key.replace('_', ' ')} | {100 * shares[key]:.1f}% |")
    if cfg.compile:
        print("\n(no clock reading without the profiler: it needs eager modules; drop --set compile=true)")
        return 0
    print("\nwithout the profiler (clocks around the networks' forward calls and the backward passes):\n\n"
          "| part | share of wall time |\n|---|---|")
    print(f"| network forward calls | {100 * plain['forward']:.1f}% |\n| backward passes | {100 * plain['backward']:.1f}% |")
    print(f"| forward and backward | {100 * (plain['forward'] + plain['backward']):.1f}% |")
    print(f"| other (losses outside the networks, crops, mixup, memory, optimiser steps, Python) | "
          f"{100 * plain['other']:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
