"""Tensor and sequence parallelism for the Llama model through DTensor `parallelize_module` plans.

Megatron's split: q/k/v and gate/up column-wise, o/down row-wise, so each block needs one
all-reduce forward and one backward (or, under sequence parallelism, an all-gather before and a
reduce-scatter after, with norms and the residual stream sharded along the sequence). Under SP
the residual stream stays a DTensor so shapes seen by the model are global (RoPE tables, views).

LoRA adapters follow their base layer's split, as in Megatron: a column-parallel layer's B is split
along its output (A replicated), a row-parallel layer's A along its input (B replicated). The adapter
hook runs on the base layer's DTensor output before the TP output hook, so a row-parallel adapter's
partial sum joins the base's and one reduction serves both: adapters add no collective forward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from jijian.model import CausalLM
from jijian.model.llama import DecoderLayer


def apply_tensor_parallel(
    model: CausalLM, tp_mesh: DeviceMesh, sequence_parallel: bool, *, first: bool, last: bool
) -> None:
    """Shard `model` (a whole model or one pipeline stage) over `tp_mesh` in place."""
    # SequenceParallel re-creates the norm weights it replicates as trainable parameters: keep frozen ones frozen.
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    sp = sequence_parallel
    stream = Shard(1) if sp else Replicate()  # layout of the residual stream between blocks
    root_plan: dict[str, ParallelStyle] = {}
    if first:
        root_plan["model.embed_tokens"] = RowwiseParallel(
            input_layouts=Replicate(), output_layouts=stream, use_local_output=not sp
        )
    elif sp:
        # A later pipeline stage receives its sequence shard as a plain tensor: make it a DTensor again.
        # Decoder.forward(hidden, cache, start_pos): only the first input is a tensor.
        root_plan["model"] = PrepareModuleInput(
            input_layouts=(Shard(1), None, None), desired_input_layouts=(Shard(1), None, None), use_local_output=False
        )
    if last:
        if sp:
            root_plan["model.norm"] = SequenceParallel()
        root_plan["lm_head"] = ColwiseParallel(input_layouts=stream, output_layouts=Replicate(), use_local_output=True)
    if root_plan:
        parallelize_module(model, tp_mesh, root_plan)
    if sp and not last:
        # Pipeline stages exchange plain tensors: hand the next stage this rank's sequence shard.
        parallelize_module(
            model,
            tp_mesh,
            PrepareModuleOutput(output_layouts=Shard(1), desired_output_layouts=Shard(1), use_local_output=True),
        )

    for layer in model.model.layers.values():
        attention = cast(DecoderLayer, layer).self_attn  # the decoder's ModuleDict holds only DecoderLayers
        plan = {
            "self_attn": PrepareModuleInput(
                input_layouts=(stream, None, None, None, None),
                desired_input_layouts=(Replicate(), None, None, None, None),
            ),
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(output_layouts=stream, use_local_output=not sp),
            "mlp": PrepareModuleInput(input_layouts=(stream,), desired_input_layouts=(Replicate(),)),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=stream, use_local_output=not sp),
        }
        if attention.q_norm is not None:
            # Qwen3's per-head norms see (batch, seq, local heads, head_dim): replicated weights, heads sharded.
            plan["self_attn.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
            plan["self_attn.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        if sp:
            plan["input_layernorm"] = SequenceParallel()
            plan["post_attention_layernorm"] = SequenceParallel()
        parallelize_adapted(layer, tp_mesh, plan)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)


def parallelize_adapted(module: nn.Module, tp_mesh: DeviceMesh, plan: dict[str, ParallelStyle]) -> None:
    """`parallelize_module(module, tp_mesh, plan)`, with the LoRA adapters of its split linear layers split to match.

    Torch's linear styles treat every module below the layer as a linear to shard alike, so the adapter
    modules are taken off while the plan is applied and put back with DTensor weights: column-parallel
    (output split) -> A replicated, B Shard(0); row-parallel (input split) -> A Shard(1), B replicated.
    """
    adapted = []
    for path, style in plan.items():
        linear = module.get_submodule(path)
        if isinstance(style, (ColwiseParallel, RowwiseParallel)) and hasattr(linear, "lora_A"):
            children = dict(linear.named_children())  # lora_A, lora_B, lora_dropout
            for name in children:
                delattr(linear, name)
            adapted.append((linear, children, isinstance(style, ColwiseParallel)))
    parallelize_module(module, tp_mesh, plan)
    for linear, children, column in adapted:
        _distribute_weight(children["lora_A"], tp_mesh, Replicate() if column else Shard(1))
        _distribute_weight(children["lora_B"], tp_mesh, Shard(0) if column else Replicate())
        for name, child in children.items():
            setattr(linear, name, child)


def _distribute_weight(linear: nn.Module, tp_mesh: DeviceMesh, placement: Placement) -> None:
    weight = cast(nn.Parameter, linear.weight)
    # src_data_rank=None: no broadcast; parameters are (re)initialised from their full values afterwards.
    shard = distribute_tensor(weight.detach(), tp_mesh, [placement], src_data_rank=None)
    linear.weight = nn.Parameter(shard, requires_grad=weight.requires_grad)


@torch.no_grad()
def reduce_partial_gradients(parameters: Sequence[torch.Tensor]) -> None:
    """Sum the partial gradients of replicated parameters over the ranks that hold the partial sums.

    A parameter replicated over the TP ranks (norm weights under SP, the unsplit half of a LoRA adapter)
    gets from DTensor's backward a gradient that is only this rank's partial sum. FSDP reduces those itself;
    without FSDP they are summed here, before clipping and the optimizer read them: one all-reduce per
    (mesh, layout) group of flattened gradients, not one per parameter.
    """
    groups: dict[tuple[DeviceMesh, tuple[Placement, ...], tuple[Placement, ...]], list[DTensor]] = defaultdict(list)
    for param in parameters:
        grad = param.grad
        if not isinstance(grad, DTensor) or not isinstance(param, DTensor) or grad.placements == param.placements:
            continue
        if _differs_only_by_partial_sums(grad.placements, param.placements):
            groups[(grad.device_mesh, grad.placements, param.placements)].append(param)
        else:
            param.grad = grad.redistribute(param.device_mesh, param.placements)
    for (mesh, partial, target), params in groups.items():
        local = [cast(DTensor, param.grad).to_local() for param in params]
        flat = torch.cat([g.reshape(-1) for g in local])
        summed = DTensor.from_local(flat, mesh, partial, run_check=False).redistribute(mesh, target).to_local()
        pieces = torch.split(summed, [g.numel() for g in local])
        for param, grad, piece in zip(params, local, pieces, strict=True):
            param.grad = DTensor.from_local(
                piece.view_as(grad), mesh, target, run_check=False, shape=param.shape, stride=param.stride()
            )


def _differs_only_by_partial_sums(grad: tuple[Placement, ...], param: tuple[Placement, ...]) -> bool:
    return all(g == p or (g.is_partial() and p.is_replicate()) for g, p in zip(grad, param, strict=True))
