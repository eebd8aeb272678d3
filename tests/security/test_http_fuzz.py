"""Fuzzing: schemathesis sends requests generated from each API's own OpenAPI schema; none may get a 5xx, and
the server must still be healthy afterwards. The number of examples is bounded so the run stays short."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from http_helpers import ALICE, MODEL, WRITER, bearer, keyring, make_app
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from jijian.guard.http_auth import HttpAuth
from jijian.kb.api import create_kb_app
from jijian.kb.store import EmbeddedKnowledgeBase, Record

FUZZ = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,  # the same requests every run: a failure reproduces
    phases=[Phase.explicit, Phase.generate],
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def openai_app(tiny_model, tmp_path_factory):
    # A short context keeps every generated request quick on a loaded machine (a timeout would be a 504).
    app, engine, _ = make_app(tiny_model, tmp_path_factory.mktemp("fuzz"), allow_anonymous=True,
                              request_timeout_s=300, embedder=FakeEmbedder(), max_model_len=192)  # fmt: skip
    engine.start()  # schemathesis calls the app without running its lifespan
    yield app
    engine.stop()


@pytest.fixture(scope="module")
def kb_app(tmp_path_factory):
    kb = EmbeddedKnowledgeBase(tmp_path_factory.mktemp("fuzz-kb"))
    records = [Record("a", [1.0, 0, 0, 0], "public"), Record("b", [0, 1.0, 0, 0], "secret", readers=["role:finance"])]
    kb.create_collection("wiki", 4).insert(records)
    yield create_kb_app(kb, HttpAuth(keyring(), allow_anonymous=True))
    kb.close()


def point_at_the_served_model(case) -> None:
    # Random model names only ever reach the 404; most requests name the real one to reach the engine.
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and len(repr(case.body)) % 4:
        case.body["model"] = "mini" if case.path == "/v1/embeddings" else MODEL


def point_at_the_collection(case) -> None:
    # Most requests name the existing collection, so they reach records and ACLs (it is never dropped).
    named = case.path_parameters and "name" in case.path_parameters and case.method != "DELETE"
    if named and len(repr(case.body)) % 4:
        case.path_parameters["name"] = "wiki"


class FakeEmbedder:
    name = "mini"

    def embed(self, texts):
        return [[float(len(t)), 1.0] for t in texts]


def fuzz(app, key: str, adjust=lambda case: None) -> dict[str, int]:
    """Every operation of `app`'s OpenAPI schema, valid and invalid requests; returns how many ran per operation."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran: dict[str, int] = {}

    def runner(operation, mode: GenerationMode, name: str):
        @given(case=operation.as_strategy(generation_mode=mode))
        @FUZZ
        def call(case) -> None:
            adjust(case)
            response = case.call(headers=bearer(key))
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
            ran[name] = ran.get(name, 0) + 1

        return call

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            name = f"{operation.method.upper()} {operation.path} {mode.value}"
            try:
                runner(operation, mode, name)()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, name
    return ran


def test_openai_api_never_answers_5xx_and_stays_healthy(openai_app):
    ran = fuzz(openai_app, ALICE, point_at_the_served_model)
    expected = {"POST /v1/chat/completions positive", "POST /v1/completions negative", "GET /v1/models positive"}
    assert expected <= set(ran)
    client = TestClient(openai_app)
    assert client.get("/health").json()["status"] == "ok"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Where is lunch?"}], "max_tokens": 3}
    assert client.post("/v1/chat/completions", json=body, headers=bearer(ALICE)).status_code == 200


def test_kb_api_never_answers_5xx(kb_app):
    ran = fuzz(kb_app, WRITER, point_at_the_collection)
    assert "POST /collections/{name}/search positive" in ran
