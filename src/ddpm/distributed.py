"""Distributed set-up on PyTorch's own engine: ``torch.distributed`` process groups launched by ``torchrun``.

``torchrun --nproc_per_node N -m ddpm train ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and joins the group (NCCL on CUDA, gloo on CPU). Without them
the run is a single process and nothing is initialised. Multi-machine runs use torchrun's ``--nnodes`` and
rendezvous options; nothing here changes.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment, or describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        initialised_here = True
    return DistInfo(rank, local_rank, world_size, dev, initialised_here)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown(info: DistInfo, wait_for_peers: bool = False) -> None:
    """Leave the process group. With ``wait_for_peers`` (pass it after a normal end) see :func:`_wait_for_peers`;
    after an error leave it off, since the others may never arrive."""
    if info.initialised_here and dist.is_initialized():
        if wait_for_peers:
            _wait_for_peers(info)
        dist.destroy_process_group()


_LEFT_KEY = "ddpm/finished-collectives"


def _wait_for_peers(info: DistInfo, timeout_s: float = 120.0) -> None:
    """Wait until every process has finished its last collective before any of them tears its connections down.

    A barrier alone is not enough: the process that completes it first may close its gloo pairs while a peer is still
    reading the barrier's last message, and gloo aborts that peer (SIGABRT; pytorch/gloo#155). So after the barrier
    each process counts itself in the group's key-value store (not a gloo message) and leaves only when all have.
    Best effort: a store that is gone (a peer already left) ends the wait."""
    try:
        barrier(info)
        store = dist.distributed_c10d._get_default_store()
        store.add(_LEFT_KEY, 1)
        deadline = time.monotonic() + timeout_s
        while store.add(_LEFT_KEY, 0) < info.world_size and time.monotonic() < deadline:
            time.sleep(0.005)
    except (RuntimeError, AttributeError, ValueError):  # pragma: no cover - a peer or the store already gone
        pass
