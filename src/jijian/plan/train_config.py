"""The `[parallel]` section of deploy.toml that runs a planned layout with `jijian train`."""

from __future__ import annotations

from typing import Any

from jijian.config import ParallelConfig
from jijian.plan.estimate import Estimate


def parallel_section(result: Estimate) -> dict[str, Any]:
    """ParallelConfig keys for the layout: planner dp -> dp_replicate, fsdp -> dp_shard."""
    layout = result.layout
    section: dict[str, Any] = {
        "dp_replicate": layout.dp,
        "dp_shard": layout.fsdp,
        "tp": layout.tp,
        "sequence_parallel": layout.sequence_parallel,
        "pp": layout.pp,
        "pp_schedule": layout.schedule,
    }
    if layout.pp > 1:
        section["pp_microbatches"] = result.microbatches
    ParallelConfig.model_validate(section)  # what jijian train will read must validate
    return section
