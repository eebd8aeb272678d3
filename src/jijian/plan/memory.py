"""Memory per device: model states under ZeRO sharding, activations (Korthikanti et al. 2022), KV cache."""

from __future__ import annotations

from jijian.plan.shape import ModelShape

# Mixed-precision Adam (ZeRO paper, Rajbhandari et al. 2020, section 3.1): bf16 parameters (2 bytes) and
# gradients (2), and fp32 master weights, momentum and variance (4 + 4 + 4) = 16 bytes per parameter.
PARAM_BYTES = 2
GRAD_BYTES = 2
OPTIMIZER_BYTES = 12
# Gradients are reduced across data-parallel ranks in fp32 (FSDP2's reduce_dtype in jijian and torchtitan, Megatron's
# fp32 main_grad buffers), so a sum over hundreds of ranks keeps its low bits: 4 bytes per gradient on the wire.
REDUCE_BYTES = 4
RECOMPUTE_POLICIES = ("none", "selective", "full")


def model_state_bytes_per_param(zero_stage: int, shard: int) -> float:
    """Bytes per parameter on one device when `shard` devices share the states at ZeRO `zero_stage` (0-3)."""
    return sum(model_state_split(zero_stage, shard).values())


def model_state_split(zero_stage: int, shard: int) -> dict[str, float]:
    """Bytes per parameter of parameters, gradients and optimizer states (master weights included) on one device."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0..3, got {zero_stage}")
    return {
        "params": PARAM_BYTES / (shard if zero_stage >= 3 else 1),
        "grads": GRAD_BYTES / (shard if zero_stage >= 2 else 1),
        "optimizer": OPTIMIZER_BYTES / (shard if zero_stage >= 1 else 1),
    }


def activation_bytes_per_layer(
    shape: ModelShape, seq: int, micro_batch: int, tp: int = 1, sequence_parallel: bool = False, recompute: str = "none"
) -> float:
    """Activation bytes one layer keeps for backward, per micro-batch (Korthikanti et al. 2022, section 4).

    For a GPT layer (GeLU MLP of 4h, dropout, materialised scores) this is exactly the paper's
    s*b*h*(34 + 5*a*s/h) without parallelism, s*b*h*(10 + 24/t + 5*a*s/(h*t)) with tensor parallelism,
    s*b*h/t*(34 + 5*a*s/h) with sequence parallelism too, 34*s*b*h/t with selective recomputation, and
    2*s*b*h (the layer input) with full recomputation. Llama layers (SwiGLU, GQA, flash attention, no
    dropout) follow from the same per-tensor accounting; with flash attention, selective recomputation
    recomputes the norm outputs and the MLP activation instead of the (absent) score matrix.
    """
    tokens = seq * micro_batch
    h, a = shape.hidden, shape.heads
    if recompute == "full":
        return 2.0 * tokens * h / (tp if sequence_parallel else 1)
    dropout = 1.0 if shape.dropout else 0.0
    # Replicated across tensor-parallel ranks unless sequence parallelism splits them: the two norm inputs,
    # the attention and MLP inputs (norm outputs) and the two dropout masks.
    replicated = 2 * h + 2 * h + 2 * h + 2 * h + 2 * dropout * h
    q = 2 * a * shape.head_dim
    kv = 2 * 2 * shape.kv_heads * shape.head_dim
    attention_out = 2 * a * shape.head_dim  # input of the output projection
    mlp = (6 if shape.gated else 4) * shape.ffn  # GeLU: input and output; SwiGLU: gate, up and their product
    if shape.flash_attention and recompute == "selective":
        # With no score matrix to drop, selective recomputation (torchtitan's op-level policy) keeps the
        # matmul outputs and recomputes the elementwise ones: the two norm outputs and the MLP activation.
        replicated -= 4 * h
        mlp -= 2 * shape.ffn
    split = q + kv + attention_out + mlp
    if shape.flash_attention:
        scores = 4.0 * a  # flash attention keeps only the fp32 log-sum-exp per head per token
    elif recompute == "selective":
        scores = 0.0  # recomputed in backward (the point of selective recomputation)
    else:
        scores = (2 + 2 * dropout + dropout) * a * seq  # softmax output, dropout output and mask
    per_token = replicated / (tp if sequence_parallel else 1) + (split + scores) / tp
    return tokens * per_token


def kv_cache_bytes_per_token(shape: ModelShape, bytes_per_value: int = 2) -> int:
    """KV-cache bytes per token of context: keys and values of every layer."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * bytes_per_value
