"""One DeviceMesh for every parallel dimension, and the coordinates a rank needs from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from jijian.train.layout import Layout

# Outermost first: pipeline stages talk least often, tensor-parallel ranks most often, so TP ranks
# are neighbours (same node) and PP crosses nodes — the order torchtitan and Megatron use.
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass
class ParallelDims:
    """The layout plus the mesh it runs on (mesh is None for a single process)."""

    layout: Layout
    mesh: DeviceMesh | None

    @property
    def distributed(self) -> bool:
        """True when more than one rank takes part."""
        return self.mesh is not None

    def _local_rank(self, dim: str) -> int:
        return 0 if self.mesh is None else self.mesh.get_local_rank(dim)

    @property
    def pp_rank(self) -> int:
        """This rank's pipeline position."""
        return self._local_rank("pp")

    @property
    def tp_rank(self) -> int:
        """This rank's tensor-parallel position."""
        return self._local_rank("tp")

    @property
    def dp_rank(self) -> int:
        """This rank's position among the data-parallel replicas and shards (which batch rows it reads)."""
        return self._local_rank("dp_replicate") * self.layout.dp_shard + self._local_rank("dp_shard")

    def submesh(self, *dims: str) -> DeviceMesh | None:
        """The sub-mesh over `dims` that have degree > 1, or None if all are 1."""
        wanted = tuple(d for d in dims if getattr(self.layout, d) > 1)
        if self.mesh is None or not wanted:
            return None
        return self.mesh[wanted]

    @property
    def fsdp_mesh(self) -> DeviceMesh | None:
        """Mesh for `fully_shard`: 2-D (replicate, shard) gives HSDP; None when there is no data parallelism."""
        if self.mesh is None or self.layout.dp == 1:
            return None
        if self.layout.dp_replicate > 1:
            # A shard dimension of size 1 makes FSDP2 plain replication (DDP-like) on the same code path.
            return self.mesh["dp_replicate", "dp_shard"]
        return self.mesh["dp_shard"]

    @property
    def pp_group(self) -> dist.ProcessGroup | None:
        """Process group of this rank's pipeline (None without pipeline parallelism)."""
        mesh = self.submesh("pp")
        return None if mesh is None else mesh.get_group()


def build_parallel_dims(layout: Layout, device_type: str) -> ParallelDims:
    """Create the 4-D mesh (pp, dp_replicate, dp_shard, tp) over the initialised process group."""
    if layout.world_size == 1:
        return ParallelDims(layout, None)
    if not dist.is_initialized() or dist.get_world_size() != layout.world_size:
        raise RuntimeError(
            f"layout needs {layout.world_size} ranks; the process group has "
            f"{dist.get_world_size() if dist.is_initialized() else 0}"
        )
    shape = tuple(getattr(layout, d) for d in MESH_DIMS)
    return ParallelDims(layout, init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS))
