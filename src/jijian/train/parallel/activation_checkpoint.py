"""Activation checkpointing per transformer block: recompute activations in backward to save memory.

`full` keeps only each block's input; `selective` keeps the outputs of the expensive ops (matmuls,
attention) and recomputes the cheap elementwise ones — most of the memory saving for a fraction of
the recompute (Korthikanti et al. 2022). The block's `forward` is wrapped in place, which keeps
parameter names unchanged (a wrapper module would rename them and break HF-format state dicts).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    # Tensor-parallel outputs (a reduce-scatter's shard under sequence parallelism, else an all-reduce's sum):
    # saving them is cheap and spares re-sending them while recomputing (torchtitan keeps the same list).
    # The all-gathered norm outputs are recomputed and gathered again: storing them would cost tp times more.
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
    torch.ops._c10d_functional.all_reduce.default,
}


def _save_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(forward: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
    if mode == "selective":
        context_fn = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(blocks: list[nn.Module], mode: str) -> None:
    """Wrap each block's forward for `mode` in {"none", "full", "selective"}."""
    if mode == "none":
        return
    if mode not in ("full", "selective"):
        raise ValueError(f"train.ac must be none, full or selective, not {mode!r}")
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward, mode)
