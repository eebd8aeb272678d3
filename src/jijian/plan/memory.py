"""Model-state bytes per device under ZeRO sharding (activation and KV-cache bytes are in jijian.spec.shape)."""

from __future__ import annotations

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
