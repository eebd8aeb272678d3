"""Finding 2 (and the size caps of finding 3): a hostile request fails alone, at the door, with a 4xx."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from http_helpers import ALICE, MODEL, bearer, make_app

from jijian.serve.async_engine import AsyncEngine, EngineRequestFailed
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams
from jijian.serve.server import serve_in_thread


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    app, _, audit = make_app(tiny_model, tmp_path_factory.mktemp("sampling"), max_body_bytes=64 * 1024,
                                  max_prompt_chars=2000)  # fmt: skip
    with serve_in_thread(app) as url:
        yield url, audit


def completion(url: str, **fields) -> httpx.Response:
    body = {"model": MODEL, "prompt": "def f(x):", "max_tokens": 3, **fields}
    return httpx.post(url + "/v1/completions", json=body, headers=bearer(ALICE), timeout=60)


def healthy(url: str) -> bool:
    ok = httpx.get(url + "/health").status_code == 200
    return ok and completion(url, temperature=0).status_code == 200


def test_a_seed_past_64_bits_is_a_400_and_the_server_keeps_serving(server):
    url, _ = server
    for seed in (2**64, 18446744073709551616, -(2**63) - 1):
        reply = completion(url, seed=seed, temperature=0.8)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "seed"
    assert completion(url, seed=2**64 - 1, temperature=0.8).status_code == 200  # the largest seed torch takes
    assert healthy(url)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"5": 1000}}, "logit_bias"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": "x" * 300}, "stop"),
        ({"user": "u" * 1000}, "user"),
    ],
)
def test_every_sampling_field_is_range_checked(server, fields, param):
    url, _ = server
    reply = completion(url, **fields)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and param in (error["param"] or "") + error["message"]


def test_nan_and_infinity_are_not_numbers(server):
    url, _ = server
    for raw in (
        '{"model": "tiny", "prompt": "x", "temperature": NaN}',
        '{"model": "tiny", "prompt": "x", "top_p": Infinity}',
    ):
        reply = httpx.post(
            url + "/v1/completions", content=raw, headers={**bearer(ALICE), "content-type": "application/json"}
        )
        assert reply.status_code == 400, reply.text
    assert healthy(url)


def test_token_ids_outside_the_vocabulary_are_a_400_not_a_crash(server):
    url, _ = server
    reply = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": [1, -5, 10**12]}, headers=bearer(ALICE))
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt"


def test_an_oversized_body_is_refused_before_it_is_read(server):
    url, audit = server
    before = audit.read_text() if audit.exists() else ""
    huge = json.dumps({"model": MODEL, "prompt": "-----BEGIN PRIVATE KEY-----" * 5000})
    reply = httpx.post(
        url + "/v1/completions", content=huge, headers={**bearer(ALICE), "content-type": "application/json"}
    )
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert (audit.read_text() if audit.exists() else "") == before  # the guard never saw it
    assert healthy(url)


def test_an_oversized_prompt_is_refused_before_the_guard_runs(server):
    url, audit = server
    before = audit.read_text() if audit.exists() else ""
    messages = [{"role": "user", "content": "-----BEGIN PRIVATE KEY-----" * 40} for _ in range(3)]  # 3240 chars
    reply = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": messages}, headers=bearer(ALICE))
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "prompt_too_long"
    assert (audit.read_text() if audit.exists() else "") == before


def test_an_engine_failure_in_one_request_aborts_only_that_request(tiny_model):
    # A request that slips past validation (constructed directly) and fails while sampling must not take
    # the requests batched with it, or the engine's health, down with it.
    model, tokenizer = tiny_model
    engine = AsyncEngine(LLMEngine(model, tokenizer, EngineConfig(num_blocks=128, block_size=4, max_batch_tokens=64)))
    bad = SamplingParams(max_tokens=8, temperature=0.7)
    object.__setattr__(bad, "seed", 2**64)  # what `"seed": 18446744073709551616` used to reach the sampler as
    good = SamplingParams(max_tokens=8, temperature=0.7, seed=3, ignore_eos=True)

    async def run(request_id, params):
        outputs = [o async for o in engine.generate(request_id, tokenizer.encode("def f(x):"), params)]
        return outputs[-1]

    async def main():
        engine.start()
        try:
            results = await asyncio.gather(run("bad", bad), run("good", good), return_exceptions=True)
            after = await run("after", good)
        finally:
            engine.stop()
        return results, after

    (bad_result, good_result), after = asyncio.run(main())
    assert isinstance(bad_result, EngineRequestFailed) and "Overflow" in str(bad_result)
    assert good_result.finished and good_result.completion_tokens == 8
    assert after.completion_tokens == 8
    assert engine.error is None  # /health answers ok
