"""Build the model parts a rank trains: meta construction, TP/SP, AC, compile, FSDP2, init, pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from jijian.config import ModelConfig, ParallelConfig, TrainConfig
from jijian.config.errors import UserInputError
from jijian.model import CausalLM
from jijian.model.lora import add_lora, quantize_frozen_base
from jijian.train.layout import Layout
from jijian.train.parallel.activation_checkpoint import apply_activation_checkpointing
from jijian.train.parallel.fsdp import apply_fsdp
from jijian.train.parallel.init import init_parameters, load_hf_shards
from jijian.train.parallel.mesh import ParallelDims
from jijian.train.parallel.pipeline import PipelineSchedule, build_schedule, prune_to_stage, stage_indices
from jijian.train.parallel.tensor_parallel import apply_tensor_parallel


@dataclass
class ModelParts:
    """What one rank trains: its model parts (the whole model, or its pipeline stages) and the schedule."""

    parts: list[CausalLM]
    stage_ids: list[int]
    n_stages: int
    schedule: PipelineSchedule | None = None

    @property
    def has_first_stage(self) -> bool:
        """This rank feeds token ids into the pipeline."""
        return 0 in self.stage_ids

    @property
    def has_last_stage(self) -> bool:
        """This rank computes logits and the loss."""
        return self.n_stages - 1 in self.stage_ids

    def parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter of this rank (tied weights once; frozen LoRA base weights left out)."""
        seen: dict[int, nn.Parameter] = {}
        for part in self.parts:
            for param in part.parameters():
                if param.requires_grad:
                    seen.setdefault(id(param), param)
        return list(seen.values())

    def train(self, mode: bool = True) -> None:
        """Set training mode on every part."""
        for part in self.parts:
            part.train(mode)


def int8_base_problem(train_cfg: TrainConfig, layout: Layout) -> str | None:
    """Why `train.lora.base_weights = "int8"` cannot run on this layout; None if it can (or is not asked for)."""
    if train_cfg.lora is None or train_cfg.lora.base_weights != "int8" or layout.world_size == 1:
        return None
    degrees = {"dp_replicate": layout.dp_replicate, "dp_shard": layout.dp_shard, "tp": layout.tp, "pp": layout.pp}
    named = ", ".join(f"parallel.{k} = {v}" for k, v in degrees.items() if v > 1)
    # FSDP and TP shard parameters as DTensors; int8 codes are buffers they would neither shard nor gather.
    return (
        f'train.lora.base_weights = "int8" runs in one process only; this layout has {named}: '
        'use train.lora.base_weights = "auto" (FSDP/TP then shard the frozen base instead) or one process'
    )


def reshard_after_forward(layout: Layout, policy: str) -> bool:
    """Whether FSDP frees gathered parameters after forward."""
    if policy == "default":
        # Pipeline stages run several microbatches back to back: re-gathering per microbatch costs more.
        return layout.pp == 1
    return policy == "always"


def parallelize_stage(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dims: ParallelDims,
    stage_id: int,
    device: torch.device,
    param_dtype: torch.dtype | None,
    parallel_cfg: ParallelConfig,
) -> CausalLM:
    """Pipeline stage `stage_id` of the model on the meta device, with LoRA, TP/SP, AC, compile and FSDP2 applied.

    Nothing is allocated: the caller materialises it (training) or fills it with fake tensors (the layout trace).
    """
    layout = dims.layout
    n_stages = layout.pp * layout.stages_per_rank
    tp_mesh, fsdp_mesh = dims.submesh("tp"), dims.fsdp_mesh
    with torch.device("meta"):
        model = CausalLM(model_cfg)
    if layout.pp > 1:
        prune_to_stage(model, stage_id, n_stages)
    if train_cfg.lora is not None:
        lora = train_cfg.lora
        add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
    blocks = list(model.model.layers.values())
    if tp_mesh is not None:
        apply_tensor_parallel(
            model, tp_mesh, layout.sequence_parallel, first=stage_id == 0, last=stage_id == n_stages - 1
        )
    apply_activation_checkpointing(blocks, train_cfg.ac)
    if train_cfg.compile:
        for block in blocks:
            block.compile()
    if fsdp_mesh is not None:
        apply_fsdp(
            model,
            blocks,
            fsdp_mesh,
            param_dtype=param_dtype,
            cpu_offload=train_cfg.cpu_offload,
            reshard_after_forward=reshard_after_forward(layout, parallel_cfg.fsdp_reshard_after_forward),
            unit_params=parallel_cfg.fsdp_unit_params,
            explicit_prefetch=device.type == "cpu",
        )
    return model


def build_model_parts(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dims: ParallelDims,
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    param_dtype: torch.dtype | None = None,
    initial_hf_dir: Path | None = None,
    parallel_cfg: ParallelConfig | None = None,
) -> ModelParts:
    """Construct this rank's parts on the meta device, parallelise them, then materialise and initialise.

    `initial_hf_dir` (a Hugging Face model directory) replaces the random init; each rank reads only its slices.
    """
    layout = dims.layout
    problem = int8_base_problem(train_cfg, layout)
    if problem:
        raise UserInputError(problem)
    parallel_cfg = parallel_cfg or ParallelConfig()
    n_stages = layout.pp * layout.stages_per_rank
    stage_ids = stage_indices(layout, dims.pp_rank) if layout.pp > 1 else [0]
    parts = []
    for stage_id in stage_ids:
        model = parallelize_stage(model_cfg, train_cfg, dims, stage_id, device, param_dtype, parallel_cfg)
        model.to_empty(device="cpu" if train_cfg.cpu_offload else device)
        model.tie_weights()
        if initial_hf_dir is None:
            init_parameters(model, train_cfg.seed, device)
        else:
            load_hf_shards(model, initial_hf_dir, device, train_cfg.seed)
        if train_cfg.lora is not None and train_cfg.lora.base_weights == "int8":
            quantize_frozen_base(model)  # from the loaded weights; each layer's float copy is freed as it is replaced
        parts.append(model)
    schedule: PipelineSchedule | None = None
    if layout.pp > 1:
        schedule = build_schedule(parts, stage_ids, layout, device, dims.pp_group, loss_fn)
    return ModelParts(parts=parts, stage_ids=stage_ids, n_stages=n_stages, schedule=schedule)
