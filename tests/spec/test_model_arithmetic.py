"""The shared model arithmetic and layout rules: one count for the trainer, the server and the planner."""

from __future__ import annotations

import re

import pytest
import torch

from jijian.config import ModelConfig
from jijian.model.llama import CausalLM
from jijian.spec.layout import batch_problem, pipeline_problem, tensor_parallel_problem
from jijian.spec.shape import ModelShape, kv_cache_bytes_per_token, training_flops_per_token

SMALL = ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512)


def test_training_flops_follow_the_palm_count_written_out_by_hand():
    # 6 per weight of every matmul (q,k,v,o, gate/up/down, LM head; not the embedding lookup) + 12·L·H·Q·T.
    matmul = 4 * (64 * 16 * 4 * 2 + 64 * 16 * 2 * 2 + 64 * 160 * 3) + 64 * 512
    assert training_flops_per_token(ModelShape.from_config(SMALL), 128) == 6 * matmul + 12 * 4 * 4 * 16 * 128


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_kv_bytes_match_the_cache_a_model_allocates_per_token(tp):
    model = CausalLM(SMALL)
    per_layer = 2 * SMALL.kv_heads * SMALL.head_size * 4  # keys and values, fp32
    expected = SMALL.n_layers * per_layer * -(-SMALL.kv_heads // tp) // SMALL.kv_heads
    assert kv_cache_bytes_per_token(ModelShape.from_config(model.cfg), 4, tp) == expected


def test_a_rank_with_more_heads_sets_the_kv_budget():
    # 2 key/value heads over 4 ranks: each rank holds one (replicated), not half of one.
    assert kv_cache_bytes_per_token(ModelShape.from_config(SMALL), 2, 4) == 4 * 2 * 1 * 16 * 2


def test_parameter_count_is_the_modules_for_every_architecture_switch():
    for extra in ({}, {"attention_bias": True}, {"qk_norm": True}, {"tie_embeddings": True}):
        cfg = ModelConfig(**{**SMALL.model_dump(), **extra})
        with torch.device("meta"):
            assert ModelShape.from_config(cfg).params == CausalLM(cfg).num_parameters(), extra


@pytest.mark.parametrize(
    ("tp", "facts", "needle"),
    [
        (3, {"heads": 8, "kv_heads": 8, "ffn": 96, "seq_len": 30}, "model.n_heads = 8"),
        (4, {"heads": 8, "kv_heads": 2, "ffn": 96, "seq_len": 32}, r"key/value heads \(2\)"),
        (2, {"heads": 8, "kv_heads": 2, "ffn": 161, "seq_len": 32}, "model.ffn_dim = 161"),
        (2, {"heads": 8, "kv_heads": 2, "ffn": 160, "seq_len": 33}, r"train\.seq_len = 33"),
    ],
)
def test_tensor_parallel_rules_name_the_field(tp, facts, needle):
    problem = tensor_parallel_problem(tp, **facts)
    assert problem is not None and re.search(needle, problem), problem
    assert tensor_parallel_problem(2, heads=8, kv_heads=2, ffn=160, seq_len=33, sequence_parallel=False) is None
    assert tensor_parallel_problem(2, heads=8, kv_heads=2, ffn=160, seq_len=32) is None


def test_pipeline_and_batch_rules():
    ok = {"schedule": "1f1b", "microbatches": 4, "layers": 8, "tied_embeddings": False}
    assert pipeline_problem(4, **ok) is None
    assert "model.n_layers" in pipeline_problem(4, **{**ok, "schedule": "interleaved_1f1b", "layers": 7})
    assert "tie_embeddings" in pipeline_problem(2, **{**ok, "tied_embeddings": True})
    assert "pp_microbatches" in pipeline_problem(4, **{**ok, "microbatches": 2})
    assert pipeline_problem(4, **{**ok, "schedule": "gpipe", "microbatches": 2}) is None
    assert "multiple of pp" in pipeline_problem(2, **{**ok, "schedule": "interleaved_1f1b", "microbatches": 3})
    assert batch_problem(8, 2, 2) is None
    assert "train.batch_size" in batch_problem(8, 3, 1)
    assert "pp_microbatches = 3" in batch_problem(8, 2, 3)
