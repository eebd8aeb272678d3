"""Process-group set-up and tear-down for ranks started by torchrun, and the device a rank computes on."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from jijian.model.device import process_group_backend, resolve_dtype
from jijian.train.launch import RENDEZVOUS_DIR_ENV


def check_dtype(device: torch.device, dtype: str, field: str = "train.dtype") -> None:
    """Refuse a training dtype the device cannot run, naming the field, before any work starts."""
    if dtype != "auto":
        resolve_dtype(dtype, device, field)


def env_world_size() -> int:
    """World size torchrun announced (1 when started as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: torch.device) -> torch.device:
    """This rank's own accelerator (index LOCAL_RANK), made current; the CPU stays the CPU."""
    if device.type == "cpu":
        return device
    device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
    torch.accelerator.set_device_index(device.index)
    return device


def init_distributed(device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group (gloo for CPU tensors, plus the accelerator's backend) and return this rank's device.

    The timeout bounds every collective: a dead or hung peer fails the surviving ranks, so the
    launcher restarts the job instead of it waiting forever.
    """
    device = rank_device(device)
    if not dist.is_initialized():
        backend = process_group_backend(device)
        store = _file_store()
        if store is None:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        else:
            world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
            )
    return device


def _file_store() -> dist.FileStore | None:
    """A file-based store for a single-node job when the launcher names a directory for it, else None.

    torchrun hands the ranks a MASTER_PORT it found free and then released; rank 0 binds it seconds
    later, by when another process may hold it (EADDRINUSE). A file needs no port. One file per
    attempt: ranks restarted after a failure must not read the keys of the attempt before.
    """
    directory = os.environ.get(RENDEZVOUS_DIR_ENV)
    if not directory or os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE"):
        return None
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    path = os.path.join(directory, f"store-{run_id}-attempt{attempt}")
    return dist.FileStore(path, int(os.environ["WORLD_SIZE"]))


def agree_any(flag: bool, device: torch.device, group: dist.ProcessGroup | None = None) -> bool:
    """True on every rank when `flag` is true on any rank (a MAX all-reduce on the rank's own device)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def is_rank0() -> bool:
    """True on the rank that writes files and prints (or in a single process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (after a barrier when healthy: without it a rank can abort in FSDP teardown)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
