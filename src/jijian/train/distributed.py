"""Process-group set-up and tear-down for ranks started by torchrun."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


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
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def is_rank0() -> bool:
    """True on the rank that writes files and prints (or in a single process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (after a barrier when healthy: without it a rank can abort in FSDP teardown)."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
