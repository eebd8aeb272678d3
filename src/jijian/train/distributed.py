"""Process-group set-up and tear-down for ranks started by torchrun."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from jijian.train.launch import RENDEZVOUS_DIR_ENV


def env_world_size() -> int:
    """World size torchrun announced (1 when started as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this rank's device.

    The timeout bounds every collective: a dead or hung peer fails the surviving ranks, so the
    launcher restarts the job instead of it waiting forever.
    """
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
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


def is_rank0() -> bool:
    """True on the rank that writes files and prints (or in a single process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (after a barrier when healthy: without it a rank can abort in FSDP teardown)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
