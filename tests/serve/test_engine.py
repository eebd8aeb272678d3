"""The engine against transformers: greedy parity, batching invariance, prefix caching, preemption, sampling."""

from __future__ import annotations

import pytest
import torch

from jijian.model.generate import generate
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import InvalidRequestError, SamplingParams

GREEDY_16 = SamplingParams(max_tokens=16, ignore_eos=True)


def engine_for(model, tokenizer=None, **overrides) -> LLMEngine:
    config = {"num_blocks": 128, "block_size": 4, "max_batch_tokens": 64, "max_num_seqs": 16, **overrides}
    return LLMEngine(model, tokenizer, EngineConfig(**config))


def test_greedy_matches_transformers_generate(small_model, reference_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([5, 23, 70], model.cfg.vocab_size)
    ours = engine_for(model).generate(prompts, GREEDY_16)
    for prompt, out in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        ref = reference_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert out == ref[0, len(prompt) :].tolist()


@pytest.mark.slow
def test_a_request_gives_the_same_greedy_output_alone_or_batched_with_15_others(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([3, 40, 7, 61, 1, 18, 25, 9, 33, 12, 50, 4, 27, 15, 38, 21], model.cfg.vocab_size, 1)
    alone = engine_for(model).generate(prompts[:1], GREEDY_16)[0]
    # A small token budget forces chunked prefill of the long prompts next to other requests' decodes.
    batched = engine_for(model, max_batch_tokens=48).generate(prompts, GREEDY_16)
    assert batched[0] == alone
    for prompt, out in zip(prompts, batched, strict=True):
        assert out == generate(model, prompt, 16)


@pytest.mark.slow
def test_prefix_cache_hits_cut_prefill_tokens(small_model, prompts_of_lengths):
    model, _ = small_model
    shared = prompts_of_lengths([40], model.cfg.vocab_size, 2)[0]
    tails = prompts_of_lengths([5, 6], model.cfg.vocab_size, 3)
    engine = engine_for(model)
    first = engine.generate([shared + tails[0]], GREEDY_16)[0]
    computed_before = engine.stats.prompt_tokens_computed
    second = engine.generate([shared + tails[1]], GREEDY_16)[0]
    second_prefill = engine.stats.prompt_tokens_computed - computed_before
    assert engine.stats.prompt_tokens_cached == 40  # ten full blocks of 4 shared tokens
    assert second_prefill == len(shared) + len(tails[1]) - 40
    # Reused blocks give the same answers as computing everything afresh.
    cold = engine_for(model, enable_prefix_caching=False)
    assert cold.generate([shared + tails[0], shared + tails[1]], GREEDY_16) == [first, second]


@pytest.mark.slow
def test_preemption_under_a_tiny_kv_budget_still_completes_every_request_correctly(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([10, 14, 8, 12, 9, 11], model.cfg.vocab_size, 4)
    # 16 blocks of 4 = 64 slots for 6 requests needing ~27 each: they cannot all stay resident.
    engine = engine_for(model, num_blocks=16, max_batch_tokens=32)
    outs = engine.generate(prompts, GREEDY_16)
    assert engine.stats.preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 16)
    assert engine.kv_cache.usage() == 0.0


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([6, 30, 12], model.cfg.vocab_size, 5)
    params = SamplingParams(max_tokens=12, temperature=0.9, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    alone = engine_for(model).generate(prompts[:1], params)[0]
    together = engine_for(model).generate(prompts, params)
    assert together[0] == alone
    other_seed = engine_for(model).generate(prompts[:1], SamplingParams(**{**params.__dict__, "seed": 8}))[0]
    assert other_seed != alone


@pytest.mark.slow
def test_top_k_1_and_a_huge_repetition_penalty(small_model, prompts_of_lengths):
    model, _ = small_model
    prompt = prompts_of_lengths([8], model.cfg.vocab_size, 6)[0]
    top1 = SamplingParams(max_tokens=10, temperature=1.0, top_k=1, ignore_eos=True)
    assert engine_for(model).generate([prompt], top1)[0] == generate(model, prompt, 10)
    penalised = SamplingParams(max_tokens=30, repetition_penalty=1e6, ignore_eos=True)
    out = engine_for(model).generate([prompt], penalised)[0]
    assert len(set(out)) == len(out) and not set(out) & set(prompt)


def test_stop_strings_and_max_tokens(small_model):
    model, tokenizer = small_model
    prompt = tokenizer.encode("def main(self):\n    return", add_bos=True)
    engine = engine_for(model, tokenizer)
    free = engine.add_request(prompt, SamplingParams(max_tokens=12, ignore_eos=True))
    while not free.finished:
        engine.step()
    assert free.finish_reason == "length" and len(free.output_token_ids) == 12
    text = free.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop
    stopped = engine.add_request(prompt, SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,)))
    deltas = []
    while not stopped.finished:
        deltas += [o.text_delta for o in engine.step()]
    assert stopped.finish_reason == "stop"
    assert "".join(deltas) == stopped.text == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("prompt_len", "params", "param"),
    [
        (0, SamplingParams(), "prompt"),
        (505, SamplingParams(max_tokens=10), "max_tokens"),
        (600, SamplingParams(), "prompt"),
    ],
)
def test_requests_that_cannot_run_are_refused(small_model, prompt_len, params, param):
    model, _ = small_model
    with pytest.raises(InvalidRequestError) as excinfo:
        engine_for(model, num_blocks=128).add_request([7] * prompt_len, params)
    assert excinfo.value.param == param


def test_bad_sampling_parameters_name_the_field():
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(InvalidRequestError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_abort_frees_blocks(small_model, prompts_of_lengths):
    model, _ = small_model
    engine = engine_for(model)
    request = engine.add_request(prompts_of_lengths([20], model.cfg.vocab_size)[0], GREEDY_16)
    engine.step()
    assert engine.kv_cache.usage() > 0
    assert engine.abort(request.request_id)
    assert engine.kv_cache.usage() == 0 and not engine.has_unfinished()


def test_a_sliding_window_model_serves_contexts_longer_than_its_kv_cache():
    from jijian.config import ModelConfig
    from jijian.model import build_model

    torch.manual_seed(5)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=512,
                      architecture="mistral", sliding_window=8)  # fmt: skip
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 512, (n,), generator=generator).tolist() for n in (30, 70, 45)]
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    # 16 blocks of 4 = 64 slots: each request needs up to 130 positions, three run at once, and blocks
    # behind the 8-token window are given back as they advance.
    small = LLMEngine(model, None, EngineConfig(num_blocks=16, block_size=4, max_batch_tokens=16, max_num_seqs=3))
    roomy = LLMEngine(model, None, EngineConfig(num_blocks=128, block_size=4, max_batch_tokens=16, max_num_seqs=3))
    outputs = small.generate(prompts, params)
    assert outputs == roomy.generate(prompts, params)
    for prompt, output in zip(prompts, outputs, strict=True):  # and both are the model's own greedy continuation
        assert output == generate(model, prompt, 60)
    assert small.kv_cache.num_free_blocks == 16
