"""Data-parallel training pieces: process group, batch shards, DDP wrapping, rank-0 broadcast.

Pure computation (no files). The training job runs one process per device under ``torchrun``
(:mod:`reprlab.run.ddp`); each process trains a replica wrapped in
:class:`torch.nn.parallel.DistributedDataParallel`. Every rank draws the same *global* batch from
the same seeded loader and keeps its own contiguous shard (:class:`ShardedBatches`); DDP averages
the gradients, so one step equals a one-process step on the global batch (for models without
BatchNorm exactly up to float summation order; with BatchNorm each rank normalises its own shard
unless SyncBatchNorm is asked for). The recipe's batch size and learning rate are the global ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from reprlab.errors import ReprlabError


def active() -> bool:
    """Whether this process is one rank of an initialised process group of several."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_from_env(device_type: str) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); return this rank's device.

    CUDA: NCCL, one GPU per rank (``cuda:LOCAL_RANK``). CPU: gloo.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks (itself outside a process group); a new tensor."""
    total = value.detach().clone()
    if active():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (pickled; for small states and flags)."""
    if not active():
        return obj
    holder = [obj if rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing outside a process group)."""
    if active():
        dist.barrier()


class ShardedBatches:
    """This rank's contiguous shard of every global batch of ``batches``.

    ``batches`` yields tuples whose tensors all have the global batch as first dimension; rank r
    of w keeps rows ``[r·b/w, (r+1)·b/w)``. Every global batch must divide by w (the training
    loader drops its last incomplete batch, and the batch size is checked up front), so every
    rank runs the same number of steps with equal shards.
    """

    def __init__(self, batches: Any, rank: int, world: int) -> None:
        self.batches = batches
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.batches.epoch(epoch):
            size = len(batch[0])
            if size % self.world:
                raise ValueError(
                    f"a batch of {size} examples does not split over {self.world} ranks"
                )
            share = size // self.world
            lo = self.rank * share
            yield tuple(t[lo : lo + share] for t in batch)


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """``model`` (already on ``device``) in DDP; BatchNorm layers made SyncBatchNorm first when
    ``sync_batchnorm`` (in place: the returned wrapper's ``.module`` is ``model``)."""
    if sync_batchnorm:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # the model itself was a BatchNorm layer
            raise ValueError("cannot convert a bare BatchNorm module in place")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_devices(devices: int, device: torch.device) -> None:
    """Raise ReprlabError unless ``devices`` processes fit this machine: that many GPUs for a
    CUDA run, that many CPU cores for a CPU run (gloo)."""
    if devices < 1:
        raise ReprlabError(f"trainer.devices={devices} is invalid: it must be >= 1")
    if devices == 1:
        return
    if device.type == "cuda":
        present, what = torch.cuda.device_count(), "GPU(s)"
    else:
        present, what = os.cpu_count() or 1, "CPU cores (device=cpu: one gloo process per core)"
    if devices > present:
        raise ReprlabError(
            f"trainer.devices={devices} is more than this machine has: {present} {what}; "
            f"use trainer.devices={present} or fewer"
        )
