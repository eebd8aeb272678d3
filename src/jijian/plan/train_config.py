"""The `[parallel]` section (and matching `[train]` batch settings) that run a planned layout with `jijian train`."""

from __future__ import annotations

from typing import Any

from jijian.config import ParallelConfig
from jijian.plan.errors import PlanError
from jijian.plan.estimate import Estimate, jijian_cannot_run


def parallel_section(result: Estimate) -> dict[str, Any]:
    """ParallelConfig keys for the layout: planner dp -> dp_replicate, fsdp -> dp_shard, dp with zero=2 -> dp_shard
    without resharding after forward; PlanError for a layout jijian train cannot run (zero=1)."""
    layout = result.layout
    problem = jijian_cannot_run(layout)
    if problem:
        raise PlanError(f"layout {layout.describe()}: {problem}")
    zero2 = layout.zero_stage == 2 and layout.dp > 1
    section: dict[str, Any] = {
        "dp_replicate": 1 if zero2 else layout.dp,
        "dp_shard": layout.dp if zero2 else layout.fsdp,
        "tp": layout.tp,
        "sequence_parallel": layout.sequence_parallel,
        "pp": layout.pp,
        "pp_schedule": layout.schedule,
    }
    if layout.pp > 1:
        section["pp_microbatches"] = result.microbatches
    if zero2:  # FSDP2 keeps the gathered parameters from forward to backward: ZeRO-2's memory and traffic
        section["fsdp_reshard_after_forward"] = "never"
    ParallelConfig.model_validate(section)  # what jijian train will read must validate
    return section


def train_settings(result: Estimate) -> dict[str, Any]:
    """The `[train]` keys that give the planned batch: batch_size, grad_accum_steps and ac (recomputation).

    jijian train splits `batch_size` over the data-parallel ranks; with a pipeline each rank's share is
    cut into `pp_microbatches`, without one the planner's micro-batches become gradient accumulation.
    """
    layout = result.layout
    if layout.pp > 1:
        batch_size, accumulation = result.microbatches * layout.micro_batch * layout.data_ranks, 1
    else:
        batch_size, accumulation = layout.micro_batch * layout.data_ranks, result.microbatches
    return {"batch_size": batch_size, "grad_accum_steps": accumulation, "ac": layout.recompute}
