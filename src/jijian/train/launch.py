"""Start the ranks of a training job with torchrun, after checking the layout in this process.

Single-process runs stay in-process; anything larger becomes
`python -m torch.distributed.run ... -m jijian.train.worker deploy.toml`, so users get torchrun's
rendezvous, multi-node flags and elastic restarts without learning its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jijian.config import DeployConfig
from jijian.train.layout import Layout, LayoutError, requested_world_size, resolve_layout

# Set by the launcher for a single-node job: the ranks' process group meets through a file store there.
RENDEZVOUS_DIR_ENV = "JIJIAN_RENDEZVOUS_DIR"


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes on how many nodes, and the layout they will run."""

    nproc_per_node: int
    nnodes: int
    layout: Layout

    @property
    def world_size(self) -> int:
        """Total ranks over all nodes."""
        return self.nproc_per_node * self.nnodes


def default_nproc_per_node(config: DeployConfig, nnodes: int) -> int:
    """One process per accelerator (CUDA, XPU, ...); on CPU, the world size the layout asks for (else 1)."""
    import torch

    if config.train.device != "cpu" and torch.accelerator.is_available():
        return torch.accelerator.device_count()
    requested = requested_world_size(config.parallel)
    if requested is None:
        return 1
    if requested % nnodes:
        raise LayoutError(f"the layout needs {requested} ranks, which {nnodes} nodes cannot share evenly")
    return requested // nnodes


def plan_launch(config: DeployConfig, nproc_per_node: int | None = None, nnodes: int = 1) -> LaunchPlan:
    """Decide the process count and validate the layout for it — before anything starts."""
    if nnodes < 1:
        raise LayoutError(f"--nnodes must be at least 1, not {nnodes}")
    nproc = nproc_per_node if nproc_per_node is not None else default_nproc_per_node(config, nnodes)
    if nproc < 1:
        raise LayoutError(f"--nproc-per-node must be at least 1, not {nproc}")
    return LaunchPlan(nproc, nnodes, resolve_layout(config, nproc * nnodes))


def torchrun_command(
    config_path: Path,
    plan: LaunchPlan,
    *,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
) -> list[str]:
    """The torchrun command line that starts this node's ranks."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={plan.nproc_per_node}",
        f"--nnodes={plan.nnodes}",
        f"--max-restarts={max_restarts}",
    ]
    if plan.nnodes > 1:
        if rdzv_endpoint is None:
            raise LayoutError("--rdzv-endpoint HOST:PORT is required when --nnodes > 1")
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--node-rank={node_rank}"]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "jijian.train.worker", str(config_path)]


def launch(
    config_path: Path,
    plan: LaunchPlan,
    *,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
) -> int:
    """Run torchrun for this node and return its exit code."""
    env = dict(os.environ)
    # Restarted gloo workers must not reuse the agent's rendezvous store (stale peer addresses).
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    command = torchrun_command(
        config_path, plan, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts
    )
    if plan.nnodes > 1:
        return subprocess.call(command, env=env)
    # One node: the ranks meet through a file, not a port torchrun found free and then let go of.
    with tempfile.TemporaryDirectory(prefix="jijian-rendezvous-") as directory:
        env.setdefault(RENDEZVOUS_DIR_ENV, directory)
        return subprocess.call(command, env=env)
