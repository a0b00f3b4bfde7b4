"""Run K distillation iterations (under torchrun or alone) and save every rank's student parameters.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT.pt TEACHER.pt K [key=value ...]
    python tests/ddp_worker.py OUT.pt TEACHER.pt K [key=value ...]
"""
import sys

import torch

from cpsc_dfkd import distributed
from cpsc_dfkd.config import resolve
from cpsc_dfkd.distill import Distiller
from cpsc_dfkd.teacher import load_teacher

TINY = [
    "teacher.epochs=2", "generator.nz=16", "generator.ngf=8", "distill.batch_size=20", "distill.memory_batches=3",
]


def main(out: str, teacher_path: str, iterations: int, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    config = resolve("digits-demo", TINY + overrides, {"teacher": {"checkpoint": teacher_path}})
    teacher, _ = load_teacher(teacher_path, config)
    distiller = Distiller(config, teacher)
    initial = torch.cat([p.detach().flatten() for p in distiller.student.parameters()]).clone()
    first_noise = distiller.sample_noise()[0].clone()
    distiller.noise_rng.manual_seed(config.seed)
    for _ in range(iterations):
        distiller.train_iteration()
        distiller.iteration += 1
    flat = torch.cat([p.detach().flatten() for p in distiller.student.parameters()])
    noise = first_noise.contiguous()
    if distributed.world_size() > 1:
        all_flat = [torch.empty_like(flat) for _ in range(distributed.world_size())]
        torch.distributed.all_gather(all_flat, flat)
        all_noise = [torch.empty_like(noise) for _ in range(distributed.world_size())]
        torch.distributed.all_gather(all_noise, noise)
    else:
        all_flat, all_noise = [flat], [noise]
    if distributed.is_main():
        torch.save({"params": all_flat, "initial": initial, "noise": all_noise,
                    "world_size": distributed.world_size()}, out)
    distributed.shutdown(wait_for_peers=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
