"""Several processes, one training run: torch.distributed under torchrun or accelerate launch.

Both launchers start one process per GPU and tell each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); with WORLD_SIZE unset or 1 everything
here is a no-op and the run is the ordinary single-process one.

How the work is split (see loop.py): every rank walks the same seeded list of *global* batches of
``train_batch_size x world`` items (one bucket each), draws the random numbers for the whole global
batch, and computes only its own contiguous slice. Each rank's loss is scaled by its share of the
global batch, so summing the LoRA gradients over ranks (one all-reduce per optimizer step) gives
exactly the gradient of a single process running the global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..errors import TrainerError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """cuda:<local rank> when GPUs are there, else the CPU (gloo)."""
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def my_slice(self, count: int) -> slice:
        """This rank's contiguous part of a global batch of ``count`` items (sizes differ by at
        most one; a rank may get none when a bucket's last batch is smaller than the world)."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any (a stop request seen by rank 0)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=self.device())  # nccl reduces GPU tensors only
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values into every rank's tensors (the LoRA starts identical everywhere)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        torch.distributed.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum_gradients_(self, params: list[torch.Tensor], extras: list[float]) -> list[float]:
        """Sum every parameter's gradient and the ``extras`` numbers over the ranks, in one
        all-reduce. A gradient that no rank produced stays None (the optimizer skips it, as it
        would in one process); one that only some ranks produced counts as zero on the others."""
        if not self.enabled:
            return extras
        ref = params[0]
        parts = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=ref.device)
                 for p in params]
        had = torch.tensor([float(p.grad is not None) for p in params], device=ref.device)
        flat = torch.cat([*parts, had, torch.tensor(extras, dtype=torch.float32, device=ref.device)])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, present in zip(params, flat[-len(params) - len(extras):len(flat) - len(extras)].tolist()):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone() if present else None
            offset += n
        return flat[len(flat) - len(extras):].tolist()


def from_environment() -> Distributed:
    """The process group torchrun / accelerate launch describe in the environment, joined."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_available():
        raise TrainerError("WORLD_SIZE > 1 but this torch build has no torch.distributed: run one process.")
    dist = Distributed(rank, world, local)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        kwargs = {"device_id": dist.device()} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=60), **kwargs)
    return dist


def shutdown(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
