"""Multi-process training: the process group, the device of each rank, and the few
collectives the trainer needs. With one process every helper is a cheap no-op, so
the trainer has a single code path.

Launch with ``torchrun --nproc-per-node N -m seqformer train ...``: torchrun sets
RANK, LOCAL_RANK and WORLD_SIZE; NCCL is used on GPUs, gloo on CPU.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from seqformer.errors import SeqformerError

log = logging.getLogger("seqformer")
T = TypeVar("T")
# Rank 0 validates (decodes) while the others wait in their next collective: allow for a long validation.
TIMEOUT = timedelta(minutes=float(os.environ.get("SEQFORMER_DIST_TIMEOUT_MIN", "120")))


@dataclass
class Dist:
    """This process's place in the job: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # setup() created the process group, so shutdown() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (returns ``values`` itself with one process)."""
        if self.active:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (keeps ranks in lock-step)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (all ranks must call this)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def main_first(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 while the others wait; an error there is raised on every rank.

        Returns ``fn()`` on rank 0 and None elsewhere.
        """
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # re-raised below, after telling the other ranks
                error = err
        if self.active:
            box = [None if error is None else str(error)]
            dist.broadcast_object_list(box, src=0)
            if not self.is_main and box[0] is not None:
                raise SeqformerError(f"rank 0 failed: {box[0]}")
        if error is not None:
            raise error
        return result

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in DistributedDataParallel when there are several processes."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer sync in forward: the model's only buffers are constant tables (no batch-norm statistics).
        # PyTorch >= 2.13 names it forward_sync_buffers and warns (on every rank) about the old name; the
        # new flag still broadcasts buffers once at the start, harmless for tables equal on every rank.
        ddp = nn.parallel.DistributedDataParallel
        new_name = "forward_sync_buffers" in inspect.signature(ddp).parameters
        no_sync = {"forward_sync_buffers": False} if new_name else {"broadcast_buffers": False}
        return ddp(module, device_ids=ids, gradient_as_bucket_view=True, **no_sync)

    def no_sync(self, module: nn.Module, skip: bool):
        """Skip the gradient all-reduce (for all but the last accumulated micro-batch)."""
        if skip and isinstance(module, nn.parallel.DistributedDataParallel):
            return module.no_sync()
        return nullcontext()


def setup() -> Dist:
    """Join the process group described by torchrun's environment (a no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = world_size > 1 and not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
        if rank == 0:
            log.info("training on %d processes (%s, %s)", world_size, backend, device.type)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device, owns_group=owns)


def shutdown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(group: list[T], d: Dist) -> list[T]:
    """This rank's share of a global group of ``update_freq * world_size`` batches."""
    return group[d.rank :: d.world_size]
