"""Inference planning: replicas, KV-cache capacity and cost per million tokens for a traffic level.

Decoding is a roofline: one step of a batch of B sequences reads every weight once plus each sequence's
KV cache, and does 2 FLOPs per weight per sequence; the step takes the longer of the two. Prefill is
compute-bound. A replica serves as many sequences at once as its KV cache holds at the average
context length. Two assumptions are not calibrated against measurements: the achieved fraction of HBM
bandwidth (HBM_EFFICIENCY) and the workspace kept free for activations (WORKSPACE_FRACTION).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from jijian.plan.errors import PlanError
from jijian.plan.hardware import (
    GB,
    Cluster,
    accelerator_names,
    capital_cost_per_device_hour,
    kwh_per_device_hour,
    make_cluster,
)
from jijian.plan.search import divisors
from jijian.spec.shape import ModelShape, kv_cache_bytes_per_token

HBM_EFFICIENCY = 0.8  # achieved fraction of peak HBM bandwidth in decode kernels (assumed)
WORKSPACE_FRACTION = 0.05  # device memory kept for activations and sampling buffers (assumed)
MAX_BATCH = 512  # sequences one replica schedules at once (like vLLM's max_num_seqs)


@dataclass(frozen=True)
class Traffic:
    """Requests per second and the average prompt and output lengths in tokens."""

    requests_per_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass
class ServePlan:
    """The serving deployment for one weight format."""

    weights: str  # "bf16" or "int8"
    weight_gb: float
    tp: int
    replicas: int
    devices: int
    kv_cache_gb_per_replica: float
    kv_capacity_tokens: int
    concurrent_sequences: int
    decode_step_s: float
    time_to_first_token_s: float
    requests_per_s_per_replica: float
    output_tokens_per_s_per_replica: float
    cost_per_million_tokens_rent: float
    cost_per_million_tokens_buy: float
    cost_per_million_output_tokens_rent: float
    currency: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def weight_bytes(shape: ModelShape, weight_bits: int) -> float:
    """Weights on device: matmul weights at `weight_bits` (int8 quantises linear layers only), the rest bf16."""
    linear = shape.layers * (shape.attention_params + shape.mlp_params)
    if not shape.tied_embeddings:
        linear += shape.vocab * shape.hidden  # the output head is a linear layer too
    return linear * weight_bits / 8 + (shape.params - linear) * 2


def plan_serving(shape: ModelShape, cluster: Cluster, traffic: Traffic, weight_bits: int = 16) -> ServePlan:
    """Size a deployment that serves `traffic` with weights of `weight_bits` (16 or 8)."""
    check_traffic(traffic)
    device, calib = cluster.accelerator, cluster.calibration
    weights = weight_bytes(shape, weight_bits)
    usable = device.memory_bytes * (calib.usable_memory_fraction - WORKSPACE_FRACTION)
    average_context = traffic.prompt_tokens + traffic.output_tokens / 2
    kv_per_token = kv_cache_bytes_per_token(shape)
    options = [t for t in divisors(cluster.devices_per_node) if shape.heads % t == 0]
    # The smallest tensor-parallel group whose spare memory holds at least one full-length sequence.
    tp = next(
        (t for t in options if t * usable - weights >= kv_per_token * (traffic.prompt_tokens + traffic.output_tokens)),
        None,
    )
    if tp is None:
        raise PlanError(_no_fit_message(shape, cluster, traffic, weight_bits, weights))
    kv_budget = tp * usable - weights
    capacity = int(kv_budget // kv_per_token)
    batch = max(1, min(MAX_BATCH, int(capacity // average_context)))

    flops_per_token = 2.0 * (shape.layers * (shape.attention_params + shape.mlp_params) + shape.vocab * shape.hidden)
    attention_per_token = 4.0 * shape.layers * shape.heads * shape.head_dim
    compute_rate = tp * device.peak_flops * calib.gemm_efficiency
    read_rate = tp * device.memory_bandwidth_gbs * 1e9 * HBM_EFFICIENCY
    decode_compute = batch * (flops_per_token + attention_per_token * average_context) / compute_rate
    decode_memory = (weights + batch * average_context * kv_per_token) / read_rate
    step_s = max(decode_compute, decode_memory)
    prompt = traffic.prompt_tokens
    prefill_s = prompt * (flops_per_token + attention_per_token * prompt / 2) / compute_rate
    per_request_s = prefill_s + traffic.output_tokens * step_s / batch
    replica_rps = 1.0 / per_request_s
    replicas = max(1, math.ceil(traffic.requests_per_s / replica_rps))

    devices = replicas * tp
    prices = cluster.prices
    tokens_per_hour = traffic.requests_per_s * 3600 * (traffic.prompt_tokens + traffic.output_tokens)
    output_per_hour = traffic.requests_per_s * 3600 * traffic.output_tokens
    rent_per_hour = devices * prices.rent_per_device_hour
    buy_per_hour = devices * (
        capital_cost_per_device_hour(cluster) + kwh_per_device_hour(cluster) * prices.electricity_price_per_kwh
    )
    return ServePlan(
        weights="int8" if weight_bits == 8 else "bf16",
        weight_gb=weights / GB,
        tp=tp,
        replicas=replicas,
        devices=devices,
        kv_cache_gb_per_replica=kv_budget / GB,
        kv_capacity_tokens=capacity,
        concurrent_sequences=batch,
        decode_step_s=step_s,
        time_to_first_token_s=prefill_s,
        requests_per_s_per_replica=replica_rps,
        output_tokens_per_s_per_replica=replica_rps * traffic.output_tokens,
        cost_per_million_tokens_rent=rent_per_hour / tokens_per_hour * 1e6,
        cost_per_million_tokens_buy=buy_per_hour / tokens_per_hour * 1e6,
        cost_per_million_output_tokens_rent=rent_per_hour / output_per_hour * 1e6,
        currency=prices.currency,
    )


def check_traffic(traffic: Traffic) -> None:
    """Reject traffic that cannot be planned for."""
    if traffic.requests_per_s <= 0:
        raise PlanError(f"requests per second must be positive (got {traffic.requests_per_s:g}); e.g. --rps 10")
    if traffic.prompt_tokens < 1 or traffic.output_tokens < 1:
        raise PlanError("prompt and output tokens must be at least 1; e.g. --prompt-tokens 1000 --output-tokens 200")


def _no_fit_message(shape: ModelShape, cluster: Cluster, traffic: Traffic, weight_bits: int, weights: float) -> str:
    device = cluster.accelerator
    node_gb = cluster.devices_per_node * device.memory_gb
    message = (
        f"{weights / GB:.0f} GB of {'int8' if weight_bits == 8 else 'bf16'} weights plus one sequence's KV cache "
        f"do not fit one node of {cluster.devices_per_node} x {device.name} ({node_gb:.0f} GB)"
    )
    alternatives = []
    if weight_bits == 16 and weight_bytes(shape, 8) < weights:
        alternatives.append("--int8 weights")
    for name in accelerator_names():
        other = make_cluster(name, devices_per_node=cluster.devices_per_node, calib=cluster.calibration)
        if other.accelerator.memory_gb > device.memory_gb:
            try:
                plan_serving(shape, other, traffic, weight_bits)
            except PlanError:
                continue
            alternatives.append(f"--gpu {name}")
            break
    return message + ("; nearest feasible: " + " or ".join(alternatives) if alternatives else "")
