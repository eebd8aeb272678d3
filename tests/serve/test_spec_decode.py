"""N-gram speculative decoding: the proposer, and greedy outputs unchanged with fewer engine steps."""

from __future__ import annotations

import pytest
import torch

from jijian.model.generate import generate
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams
from jijian.serve.spec_decode import NgramProposer

GREEDY_24 = SamplingParams(max_tokens=24, ignore_eos=True)


def engine_for(model, tokenizer=None, **overrides) -> LLMEngine:
    config = {"num_blocks": 128, "block_size": 4, "max_batch_tokens": 64, "max_num_seqs": 16, **overrides}
    return LLMEngine(model, tokenizer, EngineConfig(**config))


def test_the_proposer_continues_the_latest_earlier_match_of_the_longest_tail():
    proposer = NgramProposer(num_tokens=3, min_n=1, max_n=3)
    #        0  1  2  3  4  5  6  7  8  9 10
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 1, 2]
    # The tail (1, 2) last occurred at 5..6, followed by 3, 7, 1; a 2-token match drafts 2 tokens.
    assert proposer.propose("a", tokens, limit=5) == [3, 7]
    # (1, 2, 3) matches at 5..7 (the index grows with the tokens); the limit caps the draft.
    assert proposer.propose("a", [*tokens, 3], limit=2) == [7, 1]
    assert proposer.propose("a", [*tokens, 3], limit=5) == [7, 1, 2]
    assert proposer.propose("b", [4, 5, 6], limit=3) == []  # no earlier occurrence of any tail
    assert proposer.propose("b", [4, 5, 6, 4], limit=3) == [5]  # only the 1-gram (4) matches
    assert proposer.propose("c", [8, 8, 8], limit=0) == []
    proposer.forget("a")
    assert proposer.propose("a", [5, 5], limit=2) == [5]  # a fresh index
    assert NgramProposer(num_tokens=4, min_n=2, max_n=4).propose("d", [4, 5, 6, 4], limit=4) == []
    with pytest.raises(ValueError):
        NgramProposer(num_tokens=2, min_n=3, max_n=2)


@pytest.mark.slow
def test_speculative_decoding_keeps_greedy_outputs_and_needs_fewer_steps(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([3, 40, 7, 61, 1, 18, 25, 9], model.cfg.vocab_size, 11)
    prompts.append([5, 6, 7, 8] * 12)  # text that repeats, so drafts get accepted
    # A small token budget puts chunked prefills, drafted decodes and plain decodes in one batch.
    plain = engine_for(model, max_batch_tokens=48)
    expected = plain.generate(prompts, GREEDY_24)
    spec = engine_for(model, max_batch_tokens=48, num_speculative_tokens=3)
    assert spec.generate(prompts, GREEDY_24) == expected
    for prompt, out in zip(prompts, expected, strict=True):
        assert out == generate(model, prompt, 24)
    assert spec.stats.accepted_tokens > 0 and spec.stats.draft_tokens >= spec.stats.accepted_tokens
    assert spec.stats.steps < plain.stats.steps
    assert spec.stats.generated_tokens == plain.stats.generated_tokens == 24 * len(prompts)
    assert spec.kv_cache.usage() == 0.0


@pytest.mark.slow
def test_speculative_decoding_survives_preemption_and_keeps_prefix_caching_correct(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = prompts_of_lengths([10, 14, 8, 12, 9, 11], model.cfg.vocab_size, 4)
    prompts[0] = [3, 1, 4] * 4
    engine = engine_for(model, num_blocks=16, max_batch_tokens=32, num_speculative_tokens=4)
    outs = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert engine.stats.preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 16)
    # Blocks published for reuse hold only accepted tokens: a rerun served from the cache agrees.
    again = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert again == outs and engine.stats.prompt_tokens_cached > 0
    assert engine.kv_cache.usage() == 0.0


def test_accepted_drafts_stop_at_max_tokens_and_at_a_stop_token(small_model):
    model, _ = small_model
    prompt = [5, 6, 7, 8] * 12
    free = engine_for(model, num_speculative_tokens=4).generate([prompt], GREEDY_24)[0]
    for max_tokens in (1, 2, 5, 13):
        engine = engine_for(model, num_speculative_tokens=4)
        out = engine.generate([prompt], SamplingParams(max_tokens=max_tokens, ignore_eos=True))[0]
        assert out == free[:max_tokens]
    stop_token = free[len(free) // 2]
    engine = engine_for(model, num_speculative_tokens=4)
    request = engine.add_request(prompt, SamplingParams(max_tokens=24, ignore_eos=True, stop_token_ids=(stop_token,)))
    while not request.finished:
        engine.step()
    assert request.finish_reason == "stop"
    assert request.output_token_ids == free[: free.index(stop_token) + 1]


def test_sampled_and_penalised_requests_decode_one_token_at_a_time(small_model, prompts_of_lengths):
    model, _ = small_model
    prompts = [[5, 6, 7, 8] * 6, *prompts_of_lengths([6, 30], model.cfg.vocab_size, 5)]
    sampled = SamplingParams(max_tokens=12, temperature=0.9, top_k=50, seed=7, ignore_eos=True)
    penalised = SamplingParams(max_tokens=12, repetition_penalty=1.3, ignore_eos=True)
    for params in (sampled, penalised):
        engine = engine_for(model, num_speculative_tokens=3)
        assert engine.generate(prompts, params) == engine_for(model).generate(prompts, params)
        assert engine.stats.draft_tokens == 0


@pytest.mark.slow
def test_decode_rows_attend_in_groups_of_similar_context_length(small_model, prompts_of_lengths, monkeypatch):
    from jijian.serve import runner

    blocks = torch.tensor([1, 9, 1, 10, 1, 10, 2, 10])
    short, long = runner._split_by_context(torch.arange(8), blocks)
    assert sorted(short.tolist()) == [0, 2, 4, 6] and sorted(long.tolist()) == [1, 3, 5, 7]
    assert len(runner._split_by_context(torch.arange(4), torch.tensor([5, 5, 6, 6]))) == 1  # too little saved
    assert len(runner._split_by_context(torch.arange(3), torch.tensor([1, 1, 30]))) == 1  # too few rows

    splits = []
    original = runner._split_by_context
    monkeypatch.setattr(runner, "_split_by_context", lambda m, c: splits.append(len(r := original(m, c))) or r)
    model, _ = small_model
    prompts = prompts_of_lengths([3, 90, 7, 120, 1, 100, 9, 110], model.cfg.vocab_size, 12)
    # The dynamic path (compile_decode "off"): static decode steps pad every row to one context width.
    outs = engine_for(model, num_blocks=256, max_batch_tokens=512, compile_decode="off").generate(prompts, GREEDY_24)
    assert 2 in splits  # short and long contexts were split apart, and the outputs are still exact
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 24)
