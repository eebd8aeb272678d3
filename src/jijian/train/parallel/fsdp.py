"""FSDP2 (`fully_shard`): ZeRO-3 sharding of parameters, gradients and optimizer state per block.

Mixed precision on CUDA keeps bf16 parameters and compute with fp32 gradient reduction (so the
sum over many ranks does not lose bits); CPU stays fp32. HSDP comes from a 2-D mesh.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard


def group_blocks(blocks: list[nn.Module], unit_params: int) -> list[list[nn.Module]]:
    """Consecutive blocks grouped until each group holds at least `unit_params` parameters (0: one each)."""
    units: list[list[nn.Module]] = []
    size = 0
    for block in blocks:
        if not units or size >= unit_params:
            units.append([])
            size = 0
        units[-1].append(block)
        size += sum(p.numel() for p in block.parameters())
    return units


def apply_fsdp(
    model: nn.Module,
    blocks: list[nn.Module],
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None,
    cpu_offload: bool,
    reshard_after_forward: bool,
    unit_params: int = 0,
    explicit_prefetch: bool = False,
) -> None:
    """Shard each unit of blocks, then the root (embedding, final norm, LM head), over `mesh`.

    Small blocks are grouped into one unit (`unit_params`): every unit costs an all-gather and a
    reduce-scatter per step, whose fixed latency dominates when a block holds few parameters.
    `explicit_prefetch` issues each unit's all-gather asynchronously while the unit before it
    computes; on CPU there are no streams, so FSDP2's implicit prefetching cannot overlap anything.
    """
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload: OffloadPolicy = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    units = group_blocks(blocks, unit_params)
    for i, unit in enumerate(units):
        fully_shard(
            unit if len(unit) > 1 else unit[0],
            mesh=mesh,
            mp_policy=mp_policy,
            offload_policy=offload,
            # Backward starts with the last unit right after forward ends: freeing it only to gather
            # it again at once saves no memory (torchtitan does the same).
            reshard_after_forward=reshard_after_forward and i < len(units) - 1,
        )
    # The root's parameters are needed again right at the start of backward: keep them unsharded.
    root = fully_shard(model, mesh=mesh, mp_policy=mp_policy, offload_policy=offload, reshard_after_forward=False)
    if explicit_prefetch and len(units) > 1:
        # A unit's FSDP state hangs on its first module; prefetching it gathers the whole unit.
        # fully_shard swapped each head's class in place: it is an FSDPModule now.
        heads = [cast(FSDPModule, unit[0]) for unit in units]
        for i, head in enumerate(heads):
            if i + 1 < len(heads):
                head.set_modules_to_forward_prefetch([heads[i + 1]])
            if i > 0:
                head.set_modules_to_backward_prefetch([heads[i - 1]])
        root._set_unshard_async_op(True)
