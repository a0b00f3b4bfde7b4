"""Thin helpers over ``torch.distributed`` for runs started by ``torchrun``; single-process runs pass through.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; ``init_from_env`` joins the process group (NCCL on
GPUs, gloo on CPUs). Nothing here implements communication itself.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> None:
    """Join the process group torchrun prepared (no-op for a plain single-process run)."""
    if not launched_by_torchrun() or is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)


def shutdown(wait_for_peers: bool = False) -> None:
    """Leave the process group. After a normal end, ``wait_for_peers`` makes every rank leave together: a rank
    that tears its connections down while a peer still finishes its last collective can make the peer's gloo
    threads abort it (seen under torchrun, about one run in five). After an error, leave at once: the peers may
    never reach a barrier, and torchrun stops them when this rank exits."""
    if is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (e.g. the run directory name)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
