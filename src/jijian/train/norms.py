"""Norms of whole parameters when each rank holds only a shard, and clipping by the global norm.

LAMB/LARS trust ratios and gradient clipping need the norm of the *whole* tensor, not of the local
shard. Tensors are grouped by mesh and placements; each group's local squared norms are stacked
and summed over the mesh dimensions along which they are split — one collective per group, not
one per parameter. The same code runs on plain tensors, so single-process and sharded runs agree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this rank stores: the shard of a DTensor, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def global_norms(tensors: list[torch.Tensor], like: list[torch.Tensor] | None = None) -> torch.Tensor:
    """L2 norm of each full tensor (fp32, a plain tensor on the tensors' device), whatever the sharding.

    `like[i]`, when given, is a DTensor (or plain tensor) whose sharding `tensors[i]` — a local
    shard laid out the same way, such as an optimizer update — shares.
    """
    if not tensors:
        return torch.zeros(0)
    device = local_part(tensors[0]).device
    groups: dict[tuple[DeviceMesh, tuple[Placement, ...]] | None, list[int]] = defaultdict(list)
    for i, tensor in enumerate(tensors):
        layout = tensor if like is None else like[i]
        key = (layout.device_mesh, tuple(layout.placements)) if isinstance(layout, DTensor) else None
        groups[key].append(i)
    squares = torch.empty(len(tensors), dtype=torch.float32, device=device)
    for key, indices in groups.items():
        local = [local_part(tensors[i]) for i in indices]
        sq = torch.stack(torch._foreach_norm(local)).float().square()
        if key is not None:
            mesh, placements = key
            # Shard and _StridedShard both split the tensor: sum the shards' squares over those dims.
            reduce = [Replicate() if p.is_replicate() else Partial("sum") for p in placements]
            sq = DTensor.from_local(sq, mesh, reduce, run_check=False).full_tensor()
        squares[torch.tensor(indices, device=device)] = sq.to(device)
    return squares.sqrt()


@torch.no_grad()
def clip_grad_norm_(
    parameters: Sequence[torch.Tensor], max_norm: float, pp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Scale gradients so their global norm is at most `max_norm` (0 or inf: no clipping); return the norm.

    Under pipeline parallelism each rank holds different layers, so squares are also summed over the
    pipeline group.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total_sq = global_norms(grads).square().sum()
    if pp_group is not None:
        dist.all_reduce(total_sq, group=pp_group)
    total = total_sq.sqrt()
    if 0 < max_norm < float("inf"):
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_([local_part(g) for g in grads], coef)
    return total
