"""Tensor and sequence parallelism for the Llama model through DTensor `parallelize_module` plans.

Megatron's split: q/k/v and gate/up column-wise, o/down row-wise, so each block needs one
all-reduce forward and one backward (or, under sequence parallelism, an all-gather before and a
reduce-scatter after, with norms and the residual stream sharded along the sequence). Under SP
the residual stream stays a DTensor so shapes seen by the model are global (RoPE tables, views).
"""

from __future__ import annotations

from typing import cast

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
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
        parallelize_module(layer, tp_mesh, plan)
