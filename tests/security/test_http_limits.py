"""Finding 7: stop and embedding caps, rate limits per principal with bounded memory, log-in throttling and
CSRF, an audit entry cap, and Host/Origin checks against DNS rebinding."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from http_helpers import ALICE, BOB, MODEL, bearer, make_app

from jijian.guard.http_auth import RateLimiter
from jijian.serve.dashboard.routes import LOGIN_CSRF_COOKIE
from jijian.serve.server import serve_in_thread


class CountingEmbedder:
    name = "mini"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return [[1.0, 0.0] for _ in texts]


@pytest.fixture
def app_and_audit(tiny_model, tmp_path):
    guard = {"max_audit_field_chars": 500}
    app, _, audit = make_app(tiny_model, tmp_path, allow_anonymous=True, rate_limit_per_minute=3, dashboard=True,
                             allowed_hosts=["localhost", "127.0.0.1"], guard=guard)  # fmt: skip
    return app, audit


def test_stop_strings_are_capped(app_and_audit):
    app, _ = app_and_audit
    with TestClient(app, base_url="http://localhost") as client:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "stop": [f"s{i}" for i in range(5)]}
        reply = client.post("/v1/completions", json=body, headers=bearer(ALICE))
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "stop"


def test_the_embeddings_batch_is_capped(tiny_model, tmp_path):
    from jijian.guard.apikeys import KeyRing
    from jijian.guard.http_auth import HttpAuth
    from jijian.serve.api import ApiSettings, create_app
    from jijian.serve.async_engine import AsyncEngine
    from jijian.serve.engine import EngineConfig, LLMEngine

    model, tokenizer = tiny_model
    embedder = CountingEmbedder()
    engine = AsyncEngine(LLMEngine(model, tokenizer, EngineConfig(num_blocks=32, block_size=4)))
    auth = HttpAuth(KeyRing(), allow_anonymous=True)
    app = create_app(engine, tokenizer, ApiSettings(model_name=MODEL, max_embedding_inputs=8), auth=auth,
                     embedder=embedder)  # fmt: skip
    with TestClient(app) as client:
        too_many = client.post("/v1/embeddings", json={"model": "mini", "input": ["x"] * 9})
        fine = client.post("/v1/embeddings", json={"model": "mini", "input": ["x"] * 8})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "input"
    assert fine.status_code == 200 and embedder.calls == 1


def test_rate_limits_are_per_principal_and_per_address_for_anonymous(app_and_audit):
    app, _ = app_and_audit
    with TestClient(app, base_url="http://localhost") as client:
        alice = [client.get("/v1/models", headers=bearer(ALICE)).status_code for _ in range(4)]
        bob = [client.get("/v1/models", headers=bearer(BOB)).status_code for _ in range(4)]
        anonymous = [client.get("/v1/models").status_code for _ in range(4)]
    assert alice == bob == anonymous == [200, 200, 200, 429]


def test_the_rate_limiter_table_is_bounded():
    limiter = RateLimiter(10, max_callers=100)
    for i in range(10_000):
        limiter.allow(f"address:10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def login(client: TestClient, key: str, csrf: str | None = "from-form") -> httpx.Response:
    client.get("/ui/login")
    token = client.cookies.get(LOGIN_CSRF_COOKIE) if csrf == "from-form" else csrf
    form = {"api_key": key, "next": "/ui/serving", **({"csrf": token} if token is not None else {})}
    return client.post("/ui/login", data=form, follow_redirects=False)


def test_login_needs_the_forms_csrf_token(app_and_audit):
    app, _ = app_and_audit
    with TestClient(app, base_url="http://localhost") as client:
        assert login(client, ALICE, csrf=None).status_code == 403
        assert login(client, ALICE, csrf="forged").status_code == 403
        assert login(client, ALICE).status_code == 303


def test_failed_logins_are_throttled_per_address(app_and_audit):
    app, _ = app_and_audit
    with TestClient(app, base_url="http://localhost") as client:
        codes = [login(client, f"jj-guess-{i}").status_code for i in range(6)]
        assert codes == [401] * 5 + [429]
        assert login(client, ALICE).status_code == 429  # even the right key waits the minute out


def test_an_audit_entry_is_capped(app_and_audit):
    app, audit = app_and_audit
    with TestClient(app, base_url="http://localhost") as client:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "tell me about lunch " * 2000}],
            "max_tokens": 1,
        }
        # (The prompt is then too long for the tiny model's context: screening and its audit come first.)
        assert client.post("/v1/chat/completions", json=body, headers=bearer(ALICE)).status_code in (200, 400)
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    request = next(e for e in entries if e["event"]["type"] == "request")
    assert len(request["event"]["prompt"]) < 600 and "truncated" in request["event"]["prompt"]
    assert max(len(line) for line in audit.read_text().splitlines()) < 4000


def test_foreign_hosts_and_origins_are_refused(app_and_audit):
    app, _ = app_and_audit
    with serve_in_thread(app) as url:
        port = url.rsplit(":", 1)[1]
        rebinding = httpx.get(url + "/v1/models", headers={**bearer(ALICE), "Host": f"evil.example:{port}"})
        assert rebinding.status_code == 421
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        cross = httpx.post(
            url + "/v1/completions", json=body, headers={**bearer(ALICE), "Origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "invalid_origin"
        same = httpx.post(
            url + "/v1/completions", json=body, headers={**bearer(ALICE), "Origin": f"http://localhost:{port}"}
        )
        assert same.status_code == 200
        login_from_elsewhere = httpx.post(
            url + "/ui/login", data={"api_key": ALICE}, headers={"Origin": "https://evil.example"}
        )
        assert login_from_elsewhere.status_code == 403
