"""Inference planning: capacity, replicas and cost per million tokens."""

from __future__ import annotations

import pytest

from jijian.config import HardwareConfig, ModelConfig
from jijian.plan import PlanError, Traffic, make_cluster, plan_serving
from jijian.plan.serving import weight_bytes
from jijian.spec.shape import ModelShape

LLAMA_70B = ModelShape.from_config(ModelConfig(preset="llama3-70b"))


def test_int8_halves_the_linear_weights():
    bf16, int8 = weight_bytes(LLAMA_70B, 16), weight_bytes(LLAMA_70B, 8)
    assert bf16 == pytest.approx(2 * LLAMA_70B.params)
    embedding = LLAMA_70B.vocab * LLAMA_70B.hidden  # the input embedding stays bf16
    assert int8 == pytest.approx(
        (LLAMA_70B.params - embedding - 80 * 2 * 8192 - 8192) + 2 * (embedding + 81 * 8192 * 2 - 8192)
    )


def test_replicas_grow_with_traffic_and_cost_follows_rent():
    cluster = make_cluster("H800", HardwareConfig(rent_per_device_hour=10.0))
    low = plan_serving(LLAMA_70B, cluster, Traffic(1, 1000, 200))
    high = plan_serving(LLAMA_70B, cluster, Traffic(100, 1000, 200))
    assert low.replicas == 1 and high.replicas > low.replicas
    assert high.replicas * high.requests_per_s_per_replica >= 100
    tokens_per_hour = 100 * 3600 * 1200
    assert high.cost_per_million_tokens_rent == pytest.approx(high.devices * 10.0 / tokens_per_hour * 1e6)
    # 141 GB of bf16 weights need at least two 80 GB devices per replica.
    assert low.tp >= 2 and low.kv_capacity_tokens > 0 and low.concurrent_sequences >= 1


def test_int8_needs_fewer_devices_per_replica():
    cluster = make_cluster("A100-80GB")
    bf16 = plan_serving(LLAMA_70B, cluster, Traffic(1, 1000, 200), 16)
    int8 = plan_serving(LLAMA_70B, cluster, Traffic(1, 1000, 200), 8)
    assert int8.tp < bf16.tp


def test_model_too_big_for_a_node_suggests_alternatives():
    big = ModelShape.from_config(ModelConfig(preset="llama3-405b"))
    with pytest.raises(PlanError, match="nearest feasible: --int8 weights"):
        plan_serving(big, make_cluster("A100-40GB"), Traffic(1, 1000, 200))
    with pytest.raises(PlanError, match="requests per second"):
        plan_serving(big, make_cluster("H200"), Traffic(0, 1000, 200))
