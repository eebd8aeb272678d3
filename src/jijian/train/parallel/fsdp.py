"""FSDP2 (`fully_shard`): ZeRO-3 sharding of parameters, gradients and optimizer state per block.

Mixed precision on CUDA keeps bf16 parameters and compute with fp32 gradient reduction (so the
sum over many ranks does not lose bits); CPU stays fp32. HSDP comes from a 2-D mesh.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard


def apply_fsdp(
    model: nn.Module,
    blocks: list[nn.Module],
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None,
    cpu_offload: bool,
    reshard_after_forward: bool,
) -> None:
    """Shard each block, then the root (embedding, final norm, LM head), over `mesh`."""
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload: OffloadPolicy = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in blocks:
        fully_shard(
            block, mesh=mesh, mp_policy=mp_policy, offload_policy=offload, reshard_after_forward=reshard_after_forward
        )
    # The root's parameters are needed again right at the start of backward: keep them unsharded.
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, offload_policy=offload, reshard_after_forward=False)
