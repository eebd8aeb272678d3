"""The HTTP API through real sockets: the official openai client, errors, auth, limits, RAG, metrics."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from jijian.guard.http_auth import HttpAuth, RateLimiter
from jijian.guard.principals import Principal
from jijian.model.generate import generate
from jijian.serve.api import ApiSettings, create_app
from jijian.serve.async_engine import AsyncEngine
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.rag import InMemoryRetriever, Passage
from jijian.serve.server import serve_in_thread as running_server

MODEL = "small"
KEY = "sk-test-alice"


class FakeEmbedder:
    """Deterministic 3-d vectors: enough to check the wire format (the kb supplies the real model)."""

    name = "all-MiniLM-L6-v2"

    def embed(self, texts):
        return [[float(len(t)), float(t.count(" ")), 1.0] for t in texts]


def make_app(model, tokenizer, **settings):
    engine = AsyncEngine(
        LLMEngine(model, tokenizer, EngineConfig(num_blocks=256, block_size=4, max_batch_tokens=64)),
        max_queue=settings.pop("max_queue", 64),
    )
    retriever = InMemoryRetriever(
        {
            "docs": [
                Passage("d1", "capitals.txt", "The capital of France is Paris.", 0.0),
                Passage("d2", "rivers.txt", "The Seine flows through Paris.", 0.0),
                Passage("d3", "python.txt", "Python lists are mutable sequences.", 0.0),
            ]
        }
    )
    limit = settings.pop("rate_limit_per_minute", None)
    auth = HttpAuth.with_keys({KEY: Principal("alice")}, rate_limit_per_minute=limit)
    defaults = {"model_name": MODEL, "price_per_hour": 2.0}
    return create_app(
        engine,
        tokenizer,
        ApiSettings(**{**defaults, **settings}),
        auth=auth,
        retriever=retriever,
        embedder=FakeEmbedder(),
    )


@pytest.fixture(scope="module")
def server(small_model):
    model, tokenizer = small_model
    with running_server(make_app(model, tokenizer)) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def test_openai_client_completion_matches_the_reference_generator(client, small_model):
    model, tokenizer = small_model
    prompt = "def main(args):"
    result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    expected = generate(model, tokenizer.encode(prompt, add_bos=True), 12, eos_id=tokenizer.eos_id)
    assert result.choices[0].text == tokenizer.decode(expected)
    assert result.usage.completion_tokens == len(expected)
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt, add_bos=True))


def test_openai_client_streaming_gives_the_same_text(client):
    kwargs = {"model": MODEL, "prompt": "import os\nimport", "max_tokens": 10, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_openai_client_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "What is a list?"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == whole.choices[0].message.content


def test_models_and_embeddings(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    vectors = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a b", "abc"])
    assert [d.embedding for d in vectors.data] == [[3.0, 1.0, 1.0], [3.0, 0.0, 1.0]]


def test_rag_puts_passages_in_the_prompt_and_returns_citations(server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 4,
        "rag": {"collection": "docs", "top_k": 2},
    }
    reply = httpx.post(server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert [c["id"] for c in data["citations"]] == ["d1", "d2"]
    assert data["citations"][0]["source"] == "capitals.txt"
    plain = {**body}
    del plain["rag"]
    no_rag = httpx.post(server + "/v1/chat/completions", json=plain, headers={"Authorization": f"Bearer {KEY}"})
    # The passages went into the prompt: it is longer by at least their text.
    assert data["usage"]["prompt_tokens"] > no_rag.json()["usage"]["prompt_tokens"] + 10
    missing = httpx.post(
        server + "/v1/chat/completions",
        json={**body, "rag": {"collection": "nope"}},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "rag.collection"


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        ('{"model": "small", "prompt": "x"', 400, None),  # bad JSON
        ('{"model": "gpt-9", "prompt": "x"}', 404, "model"),
        ('{"model": "small", "prompt": "x", "max_tokens": -5}', 400, "max_tokens"),
        ('{"model": "small", "prompt": "' + "word " * 1200 + '"}', 400, "prompt"),  # longer than the context
        ('{"model": "small"}', 400, "prompt"),
        ('{"model": "small", "prompt": "x", "temperature": "hot"}', 400, "temperature"),
    ],
    ids=["bad-json", "unknown-model", "negative-max-tokens", "too-long", "no-prompt", "bad-type"],
)
def test_malformed_requests_get_openai_style_4xx_and_the_server_keeps_serving(server, client, content, status, param):
    reply = httpx.post(
        server + "/v1/completions",
        content=content,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert client.completions.create(model=MODEL, prompt="ok", max_tokens=2).choices[0].text is not None


def test_unknown_model_raises_the_openai_not_found_error(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x", max_tokens=2)


def test_api_keys_are_required(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_metrics_report_latency_throughput_and_cost(server, client):
    client.completions.create(model=MODEL, prompt="for i in", max_tokens=6, temperature=0)
    text = httpx.get(server + "/metrics").text
    for name in (
        "jijian_time_to_first_token_seconds_count",
        "jijian_time_per_output_token_seconds_count",
        "jijian_output_tokens_per_second",
        "jijian_queue_depth",
        "jijian_kv_cache_usage_ratio",
        "jijian_batch_size",
        "jijian_cost_per_million_output_tokens",
    ):
        assert name in text, name
    cost = next(line for line in text.splitlines() if line.startswith("jijian_cost_per_million_output_tokens "))
    assert float(cost.split()[1]) > 0


def test_client_disconnect_cancels_the_request(server):
    body = {"model": MODEL, "prompt": "class A:", "max_tokens": 200, "stream": True, "temperature": 0}
    with (
        httpx.Client() as http,
        http.stream("POST", server + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as reply,
    ):
        lines = reply.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        # Leaving the block closes the connection mid-stream.
    deadline = time.monotonic() + 20
    metrics = ""
    while time.monotonic() < deadline:
        metrics = httpx.get(server + "/metrics").text
        if 'jijian_requests_total{outcome="cancelled"}' in metrics:
            break
        time.sleep(0.2)
    assert 'jijian_requests_total{outcome="cancelled"}' in metrics


def test_a_full_queue_answers_429(small_model):
    model, tokenizer = small_model
    app = make_app(model, tokenizer, max_queue=0)
    with running_server(app) as url:
        reply = httpx.post(
            url + "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 2},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert reply.status_code == 429 and reply.json()["error"]["code"] == "queue_full"


def test_per_key_rate_limit(small_model):
    model, tokenizer = small_model
    with running_server(make_app(model, tokenizer, rate_limit_per_minute=2)) as url:
        headers = {"Authorization": f"Bearer {KEY}"}
        codes = [httpx.get(url + "/v1/models", headers=headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.allow("k") for _ in range(60))
    assert not limiter.allow("k")
    now[0] += 1.0
    assert limiter.allow("k") and not limiter.allow("k")
    assert limiter.allow("other")


def test_request_timeout_gives_504(small_model):
    model, tokenizer = small_model
    with running_server(make_app(model, tokenizer, request_timeout_s=0.0)) as url:
        reply = httpx.post(
            url + "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 50},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert reply.status_code == 504 and reply.json()["error"]["type"] == "timeout"
