"""The static-shape decode path (what torch.compile and CUDA graphs run) against the dynamic runner."""

from __future__ import annotations

import pytest
import torch

from jijian.config import DeployConfig, ModelConfig
from jijian.model import build_model
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams
from jijian.serve.runner import ModelRunner, resolve_decode_path
from jijian.serve.static_decode import bucket, capture_sizes, context_widths

GREEDY_24 = SamplingParams(max_tokens=24, ignore_eos=True)


def engine_for(model, path: str, **overrides) -> LLMEngine:
    config = {"num_blocks": 128, "block_size": 4, "max_batch_tokens": 64, "max_num_seqs": 16, **overrides}
    return LLMEngine(model, None, EngineConfig(compile_decode=path, **config))


def test_buckets_cover_every_batch_size_and_context_up_to_the_limits():
    assert capture_sizes(1) == [1]
    assert capture_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert capture_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert context_widths(3) == [3]
    assert context_widths(128) == [4, 8, 16, 32, 64, 128]
    assert context_widths(100) == [4, 8, 16, 32, 64, 100]
    assert [bucket(n, [1, 2, 4, 8]) for n in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, None]


def test_static_decode_gives_the_dynamic_paths_greedy_tokens_for_mixed_batches(small_model, prompts_of_lengths):
    model, _ = small_model
    # Prompts of 1..70 tokens with block size 4: decodes cross block boundaries at different steps, and the
    # batch shrinks from 7 (bucket 8) through every smaller size as the short max_tokens requests finish.
    prompts = prompts_of_lengths([1, 5, 23, 70, 3, 12, 4], model.cfg.vocab_size, 5)
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (24, 3, 17, 9, 24, 6, 13)]
    dynamic = engine_for(model, "off")
    static = engine_for(model, "static")
    assert dynamic.runner.static_decoder is None
    expected = dynamic.generate(prompts, params)
    assert static.generate(prompts, params) == expected
    assert static.runner.static_decoder.steps >= 20  # the decode steps really took the static path
    # Each request alone (batch bucket 1) gives the same tokens as inside the batch.
    for prompt, param, out in zip(prompts[:3], params[:3], expected[:3], strict=True):
        assert engine_for(model, "static").generate([prompt], param)[0] == out


def test_static_decode_logits_equal_the_dynamic_runner_within_fp32_rounding(small_model, prompts_of_lengths):
    model, _ = small_model
    engine = engine_for(model, "static")
    prompts = prompts_of_lengths([6, 15, 33], model.cfg.vocab_size, 6)
    requests = [engine.add_request(p, GREEDY_24) for p in prompts]
    for _ in range(4):  # prefill, then a few decode steps
        engine.step()
    runner, static = engine.runner, engine.runner.static_decoder
    for r in requests:  # what the scheduler does before a step: room for the new token
        assert engine.kv_cache.allocate(r.request_id, r.num_computed_tokens + 1)
    tokens = [[r.all_token_ids[r.num_computed_tokens]] for r in requests]
    starts = [r.num_computed_tokens for r in requests]
    tables = [engine.kv_cache.block_ids(r.request_id) for r in requests]
    before = static.steps
    padded = runner.execute(tokens, starts, tables, [1, 1, 1])
    assert static.steps == before + 1
    runner.static_decoder = None  # the same step through the dynamic path (it rewrites the same slots)
    reference = runner.execute(tokens, starts, tables, [1, 1, 1])
    runner.static_decoder = static
    assert padded.shape == reference.shape == (3, model.cfg.vocab_size)
    torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-5)


def test_static_decode_respects_a_sliding_window(prompts_of_lengths):
    torch.manual_seed(3)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=256,
                      sliding_window=8)  # fmt: skip
    model = build_model(cfg).eval()
    prompts = prompts_of_lengths([3, 21, 40], cfg.vocab_size, 7)
    assert engine_for(model, "static").generate(prompts, GREEDY_24) == engine_for(model, "off").generate(
        prompts, GREEDY_24
    )


def test_batches_the_static_path_cannot_hold_fall_back_to_the_dynamic_path(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([5, 9, 7], model.cfg.vocab_size, 8)
    # max_num_seqs 2: three decodes never share a step, but every request still completes correctly.
    expected = engine_for(model, "off").generate(prompts, GREEDY_24)
    assert engine_for(model, "static", max_num_seqs=2).generate(prompts, GREEDY_24) == expected
    # Drafts (speculative decoding) verify several tokens per request: those steps go the dynamic way.
    spec = engine_for(model, "static", num_speculative_tokens=3)
    assert spec.generate(prompts, GREEDY_24) == expected


def test_decode_path_setting_resolves_per_device_and_rejects_unknown_values():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_decode_path(s, cpu) for s in ("auto", "on", "off")] == ["static", "compile", "dynamic"]
    assert [resolve_decode_path(s, cuda) for s in ("auto", "on", "off")] == ["graphs", "graphs", "dynamic"]
    with pytest.raises(ValueError, match="compile_decode"):
        resolve_decode_path("fast", cpu)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        ModelRunner(build_model(ModelConfig(preset="llama-tiny")), 8, 4, decode="graphs")
    with pytest.raises(ValueError, match="compile_decode"):
        DeployConfig.model_validate({"serve": {"compile_decode": "fast"}})
    assert DeployConfig.model_validate({}).serve.compile_decode == "auto"
    # "auto" on the CPU: the static path for small batches only (larger ones group rows by context length).
    model = build_model(ModelConfig(preset="llama-tiny"))
    assert ModelRunner(model, 8, 4, decode="auto", max_num_seqs=64).static_decoder.sizes == [1, 2, 4]
    assert ModelRunner(model, 8, 4, decode="static", max_num_seqs=64).static_decoder.sizes[-1] == 64


@pytest.mark.slow
def test_the_compiled_static_step_matches_the_dynamic_path(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([5, 11], model.cfg.vocab_size, 9)
    # One batch bucket and one width bucket keep this to a single compilation.
    config = {"max_num_seqs": 2, "block_size": 8, "max_model_len": 32}
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    compiled = engine_for(model, "on", **config)
    assert compiled.runner.static_decoder.mode == "compile"
    assert compiled.generate(prompts, params) == engine_for(model, "off", **config).generate(prompts, params)
