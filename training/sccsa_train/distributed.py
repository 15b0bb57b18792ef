"""Data-parallel training across the processes ``torchrun`` starts (torch.distributed).

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE`` > 1 in the environment) every process
holds the same standardised panel; each optimiser step takes one global mini-batch of
``batch_size`` cells, as a single process would, and every rank trains on its share of it through
``DistributedDataParallel`` (gradients averaged). Centroid statistics, label changes and the
final labels are summed across ranks, so all ranks keep identical centroids and stop at the same
epoch. Rank 0 alone computes the pseudo-labels and K and sends them to the others, so every rank
selects the same genes (:meth:`Workers.on_main`: an error there is raised on every rank).
Backend: gloo on CPUs, NCCL on GPUs (one per process, ``LOCAL_RANK``).

Without ``torchrun`` this is one process (:data:`SINGLE`) and training is exactly what it was:
the same batches, the same centroid updates, the same labels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and shows progress."""
        return self.rank == 0

    def share(self, rows: Any) -> Any:
        """This rank's part of ``rows`` (a tensor, array or slice-able sequence): every ``size``-th
        row from ``rank``, so a global mini-batch is split evenly."""
        return rows[self.rank :: self.size]

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` inside DistributedDataParallel when there are several processes. Every parameter
        that requires a gradient must get one in each step (pretraining freezes the idle classifier
        head), so DDP need not search for unused ones."""
        if self.size == 1:
            return net
        devices = [net.centroids.device] if net.centroids.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=devices)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all ranks (in place; returned for chaining)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by rank 0 alone, its result on every rank. An error raised there is
        raised on every rank: the others would otherwise wait in the broadcast for a value that never
        comes (e.g. a wrong ``n_clusters`` found while resolving K under torchrun hung rank 1)."""
        if self.size == 1:
            return compute()
        outcome: tuple[bool, Any] | None = None
        if self.is_main:
            try:
                outcome = (True, compute())
            except Exception as error:  # noqa: BLE001 - re-raised below, on every rank
                outcome = (False, error)
        succeeded, value = self.from_main(outcome)
        if not succeeded:
            raise value
        return value

    def same_buffers(self, net: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics, centroids) on every rank before the network is
        used in evaluation mode: DistributedDataParallel copies them only at the next forward pass."""
        if self.size > 1:
            for buffer in net.buffers():
                dist.broadcast(buffer, src=0)

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process (``LOCAL_RANK``) when training on CUDA; the CPU is shared."""
        if device.type != "cuda" or self.size == 1:
            return device
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))


SINGLE = Workers()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_main_process() -> bool:
    """False in the processes ``torchrun`` started besides rank 0 (after the group was joined)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def workers_from_environment(device: torch.device) -> Workers:
    """Join the process group ``torchrun`` describes in the environment, once; :data:`SINGLE`
    when the process was not started by ``torchrun`` (or with one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined %s process group as rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return Workers(rank=dist.get_rank(), size=dist.get_world_size())
