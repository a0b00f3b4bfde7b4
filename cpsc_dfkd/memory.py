"""A ring buffer of past synthetic batches that the student step can learn from instead of new images.

Making images is the expensive part of a student step on small models (the generator costs far more
than the student). Every generator step already makes a batch, so keeping those batches and letting
the student sample from the last few costs nothing, and mixes images from several generator states
(less forgetting). ``distill.memory_batches=0`` gives the reference behaviour: fresh images every step.

Row ``i`` of every stored batch was made for label ``i % num_classes``, so labels need no storage,
and sampling is by (batch, row) pairs: under torchrun each rank stores the rows of its own share,
and N ranks together draw exactly the images one process would.
"""
from __future__ import annotations

import torch

from . import distributed


class SyntheticMemory:
    def __init__(self, num_batches: int, local_batch: int, image_shape: tuple[int, ...], device: torch.device):
        self.images = torch.zeros(num_batches, local_batch, *image_shape, device=device)
        self.next_slot = 0
        self.filled = 0

    @property
    def num_batches(self) -> int:
        return self.images.shape[0]

    def add(self, images: torch.Tensor) -> None:
        self.images[self.next_slot].copy_(images.detach())
        self.next_slot = (self.next_slot + 1) % self.num_batches
        self.filled = min(self.filled + 1, self.num_batches)

    def sample(self, slots: torch.Tensor) -> torch.Tensor:
        """Row ``i`` of the result is row ``i`` of stored batch ``slots[i]`` (indices into filled slots)."""
        rows = torch.arange(len(slots), device=self.images.device)
        return self.images[slots.to(self.images.device), rows]

    def state_dict(self) -> dict:
        """The whole memory on the CPU; under torchrun the ranks' shares are gathered into global batches."""
        images = self.images[: self.filled]
        if distributed.world_size() > 1:
            parts = [torch.empty_like(images) for _ in range(distributed.world_size())]
            torch.distributed.all_gather(parts, images.contiguous())
            images = torch.cat(parts, dim=1)
        return {"images": images.cpu(), "next_slot": self.next_slot, "filled": self.filled}

    def load_state_dict(self, state: dict, rank: int) -> None:
        """Restore a memory saved by any number of ranks: this rank keeps the rows of its own share."""
        local = self.images.shape[1]
        saved = state["images"][:, rank * local:(rank + 1) * local]
        if saved.shape[1:] != self.images.shape[1:] or saved.shape[0] > self.num_batches:
            raise ValueError(f"memory of shape {tuple(state['images'].shape)} does not fit {tuple(self.images.shape)}")
        self.images.zero_()
        self.images[: saved.shape[0]].copy_(saved)
        self.next_slot, self.filled = state["next_slot"], state["filled"]
