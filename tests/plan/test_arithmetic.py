"""Planner formulas against worked examples written out by hand."""

from __future__ import annotations

import pytest

from jijian.config import ModelConfig
from jijian.plan import pf_days
from jijian.plan.comms import all_gather_bytes, all_reduce_bytes, bubble_fraction, pipeline_in_flight
from jijian.plan.memory import model_state_bytes_per_param
from jijian.spec.shape import (
    ModelShape,
    activation_bytes_per_layer,
    kv_cache_bytes_per_token,
    recompute_flops_per_token,
    training_flops_per_token,
)

# GPT-3 175B (Brown et al. 2020): 96 layers, d_model 12288, 96 heads, 4h MLP, 50257-token vocabulary, tied.
GPT3 = ModelShape(96, 12288, 96, 96, 128, 4 * 12288, 50257, gated=False, tied_embeddings=True, dropout=True,
                  flash_attention=False)  # fmt: skip


def test_gpt3_parameters_and_training_compute():
    # 96 * 12 * 12288^2 = 173.95e9 in the layers, plus 0.62e9 of embedding: 174.6B (the paper rounds to 175B).
    assert GPT3.params == pytest.approx(174.6e9, rel=2e-3)
    six_n_t = 6 * GPT3.params * 300e9
    assert six_n_t == pytest.approx(3.14e23, rel=1e-2)
    assert pf_days(six_n_t) == pytest.approx(3640, rel=1e-2)  # the GPT-3 paper's 3.64E+03 PF-days


def test_training_flops_per_token_is_6n_plus_attention():
    # 6 FLOPs per matmul weight (forward 2 + backward 4) plus 12 * layers * d_attn * seq for QK^T and AV.
    matmul_weights = 96 * 12 * 12288**2 + 50257 * 12288
    expected = 6 * matmul_weights + 12 * 96 * 12288 * 2048
    assert training_flops_per_token(GPT3, 2048) == pytest.approx(expected, rel=1e-12)
    # Full recomputation repeats the forward of the layers (2 per weight + attention), not the output head.
    assert recompute_flops_per_token(GPT3, 2048, "full") == pytest.approx(
        2 * 96 * 12 * 12288**2 + 4 * 96 * 12288 * 2048, rel=1e-12
    )
    assert recompute_flops_per_token(GPT3, 2048, "none") == 0


def test_llama3_8b_parameter_count_matches_the_published_model():
    shape = ModelShape.from_config(ModelConfig(preset="llama3-8b"))
    # 32 x (attention 4096*128*(2*32+2*8) + MLP 3*4096*14336 + norms 2*4096) + 2 x 128256*4096 + final norm.
    assert shape.params == 32 * (4096 * 128 * 80 + 3 * 4096 * 14336 + 2 * 4096) + 2 * 128256 * 4096 + 4096
    assert shape.params == 8_030_261_248


@pytest.mark.parametrize(
    ("stage", "expected_gb"),
    # ZeRO paper, Figure 1: a 7.5B model on 64 data-parallel ranks needs 120 / 31.4 / 16.6 / 1.88 GB per device.
    [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.88)],
)
def test_zero_model_states_per_device(stage, expected_gb):
    assert 7.5e9 * model_state_bytes_per_param(stage, 64) / 1e9 == pytest.approx(expected_gb, rel=5e-3)


def test_zero_bytes_per_parameter_exactly():
    assert model_state_bytes_per_param(0, 8) == 16  # 2 + 2 + 12
    assert model_state_bytes_per_param(1, 8) == 2 + 2 + 12 / 8
    assert model_state_bytes_per_param(2, 8) == 2 + (2 + 12) / 8
    assert model_state_bytes_per_param(3, 8) == 16 / 8
    with pytest.raises(ValueError):
        model_state_bytes_per_param(4, 8)


def test_korthikanti_activation_formula_for_gpt3_shape():
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    # No parallelism: s*b*h*(34 + 5*a*s/h).
    assert activation_bytes_per_layer(GPT3, s, b) == s * b * h * (34 + 5 * a * s / h)
    # Tensor parallelism: s*b*h*(10 + 24/t + 5*a*s/(h*t)) = 2048*12288*(10 + 3 + 10) bytes.
    assert activation_bytes_per_layer(GPT3, s, b, tp=t) == s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    assert activation_bytes_per_layer(GPT3, s, b, tp=t) == 578_813_952
    # Tensor + sequence parallelism: s*b*h/t*(34 + 5*a*s/h).
    assert activation_bytes_per_layer(GPT3, s, b, tp=t, sequence_parallel=True) == s * b * h / t * (34 + 5 * a * s / h)
    # Selective recomputation with sequence parallelism drops the score terms: 34*s*b*h/t.
    selective = activation_bytes_per_layer(GPT3, s, b, tp=t, sequence_parallel=True, recompute="selective")
    assert selective == 34 * s * b * h / t
    # Full recomputation keeps only each layer's input: 2*s*b*h (divided by t with sequence parallelism).
    assert activation_bytes_per_layer(GPT3, s, b, tp=t, recompute="full") == 2 * s * b * h
    assert activation_bytes_per_layer(GPT3, s, b, tp=t, sequence_parallel=True, recompute="full") == 2 * s * b * h / t


def test_llama_activations_have_no_score_matrix_with_flash_attention():
    shape = ModelShape.from_config(ModelConfig(preset="llama3-8b"))
    short, long = (activation_bytes_per_layer(shape, seq, 1) / seq for seq in (1024, 8192))
    assert short == pytest.approx(long)  # linear in the sequence: nothing grows with s^2


def test_kv_cache_per_token_llama3_70b():
    shape = ModelShape.from_config(ModelConfig(preset="llama3-70b"))
    assert kv_cache_bytes_per_token(shape) == 2 * 80 * 8 * 128 * 2 == 327_680  # 320 KiB per token


def test_ring_collectives_and_pipeline_bubbles():
    assert all_reduce_bytes(1e9, 8) == pytest.approx(1.75e9)  # 2 (n-1)/n
    assert all_gather_bytes(1e9, 8) == pytest.approx(0.875e9)  # (n-1)/n
    assert all_reduce_bytes(1e9, 1) == 0
    assert bubble_fraction("1f1b", 8, 32) == 7 / 32
    assert bubble_fraction("gpipe", 8, 32) == 7 / 32
    assert bubble_fraction("interleaved_1f1b", 8, 32, chunks=2) == 7 / 64
    assert bubble_fraction("1f1b", 1, 32) == 0
    # 1F1B holds at most p micro-batches in flight on the first stage; GPipe holds all m.
    assert pipeline_in_flight("1f1b", 8, 32) == 8
    assert pipeline_in_flight("gpipe", 8, 32) == 32


def test_zero_paper_worked_example_through_a_dp64_layout():
    # The ZeRO paper's 7.5B model on 64 data-parallel ranks, stage by stage, through the planner's layout.
    from jijian.plan.estimate import Layout, zero_sharding

    for zero, expected_gb in ((None, 120.0), (1, 31.4), (2, 16.6)):
        stage, shard = zero_sharding(Layout(dp=64, zero_stage=zero))
        assert 7.5e9 * model_state_bytes_per_param(stage, shard) / 1e9 == pytest.approx(expected_gb, rel=5e-3)
    stage, shard = zero_sharding(Layout(fsdp=64))
    assert 7.5e9 * model_state_bytes_per_param(stage, shard) / 1e9 == pytest.approx(1.875)
