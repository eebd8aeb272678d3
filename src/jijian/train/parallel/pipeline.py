"""Pipeline parallelism: split the model by layers into stages and drive them with a schedule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.pipelining.schedules import PipelineScheduleMulti, PipelineScheduleSingle

from jijian.model import CausalLM
from jijian.train.layout import Layout

if TYPE_CHECKING:
    # The stage base class torch's schedules are typed against (private, so imported for annotations only).
    from torch.distributed.pipelining.stage import _PipelineStageBase

PipelineSchedule = PipelineScheduleSingle | PipelineScheduleMulti


def stage_layer_ranges(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous layer ranges per stage, the remainder spread over the first stages."""
    base, extra = divmod(n_layers, n_stages)
    ranges, start = [], 0
    for stage in range(n_stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def stage_indices(layout: Layout, pp_rank: int) -> list[int]:
    """Stages this pipeline rank holds: one, or two (rank r holds r and r + pp) when interleaved."""
    return [pp_rank + k * layout.pp for k in range(layout.stages_per_rank)]


def prune_to_stage(model: CausalLM, stage: int, n_stages: int) -> CausalLM:
    """Keep only `stage`'s layers (and the embedding on the first, final norm and head on the last)."""
    keep = stage_layer_ranges(model.cfg.n_layers, n_stages)[stage]
    for name in list(model.model.layers.keys()):
        if int(name) not in keep:
            del model.model.layers[name]
    if stage != 0:
        model.model.embed_tokens = None
    if stage != n_stages - 1:
        model.model.norm = None
        model.lm_head = None
    return model


def build_schedule(
    stages: Sequence[nn.Module],
    stage_ids: list[int],
    layout: Layout,
    device: torch.device,
    group: torch.distributed.ProcessGroup | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> PipelineSchedule:
    """Wrap the stage modules in `PipelineStage`s and the configured schedule."""
    n_stages = layout.pp * layout.stages_per_rank
    pipeline_stages: list[_PipelineStageBase] = [
        PipelineStage(module, stage_id, n_stages, device, group=group)
        for module, stage_id in zip(stages, stage_ids, strict=True)
    ]
    # scale_grads: gradients are averaged over microbatches, so a step equals one full-batch step.
    if layout.pp_schedule == "gpipe":
        return ScheduleGPipe(pipeline_stages[0], layout.pp_microbatches, loss_fn=loss_fn, scale_grads=True)
    if layout.pp_schedule == "1f1b":
        return Schedule1F1B(pipeline_stages[0], layout.pp_microbatches, loss_fn=loss_fn, scale_grads=True)
    return ScheduleInterleaved1F1B(pipeline_stages, layout.pp_microbatches, loss_fn=loss_fn, scale_grads=True)
