"""Findings 4 and 5: authentication fails closed, keyless callers are anonymous, and there is one key system."""

from __future__ import annotations

import httpx
import pytest
from http_helpers import ALICE, BOB, MODEL, SECRET, bearer, make_app
from typer.testing import CliRunner

from jijian.cli.main import app as cli
from jijian.config import load_config
from jijian.config.loader import ConfigError
from jijian.guard.apikeys import add_key
from jijian.guard.http_auth import AuthSetupError
from jijian.serve.server import build_server, serve_in_thread


def write_config(tmp_path, model_dir, guard: str = "", serve: str = "") -> object:
    path = tmp_path / "deploy.toml"
    path.write_text(f'[serve]\nmodel_path = "{model_dir}"\nkv_cache_mb = 4\n{serve}\n[guard]\n{guard}\n')
    return path


@pytest.fixture
def model_dir(tmp_path, tiny_model):
    from jijian.model.hf import save_hf

    model, tokenizer = tiny_model
    save_hf(model, tokenizer, tmp_path / "model")
    return tmp_path / "model"


def serve_cli(config) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["serve", str(config)])
    return result.exit_code, result.output


def test_a_missing_key_file_stops_the_server_naming_it(tmp_path, model_dir):
    config = write_config(tmp_path, model_dir, guard='api_keys = "keyz.toml"')
    code, output = serve_cli(config)
    assert code == 2 and "[guard] api_keys" in output and "keyz.toml" in output and "does not exist" in output


def test_an_empty_key_file_stops_the_server_naming_it(tmp_path, model_dir):
    (tmp_path / "keys.toml").write_text("")
    config = write_config(tmp_path, model_dir, guard='api_keys = "keys.toml"')
    code, output = serve_cli(config)
    assert code == 2 and "keys.toml" in output and "holds no keys" in output and "jijian guard add-key" in output


def test_no_keys_at_all_needs_the_explicit_setting(tmp_path, model_dir):
    code, output = serve_cli(write_config(tmp_path, model_dir))
    assert code == 2 and "allow_anonymous" in output and "jijian guard add-key" in output
    server = build_server(load_config(write_config(tmp_path, model_dir, guard="allow_anonymous = true")))
    with serve_in_thread(server.app) as url:
        assert httpx.get(url + "/v1/models").status_code == 200


def test_plaintext_serve_api_keys_are_refused_with_the_migration(tmp_path, model_dir):
    config = write_config(tmp_path, model_dir, serve='api_keys = { "sk-bob" = "bob" }')
    with pytest.raises(ConfigError, match=r"jijian guard add-key.*\[guard\] api_keys"):
        load_config(config)
    code, output = serve_cli(config)
    assert code == 2 and "[serve] api_keys" in output and "jijian guard add-key" in output


def test_keys_from_the_key_ring_authenticate_with_their_roles(tmp_path, model_dir):
    key = add_key(tmp_path / "keys.toml", "alice", ["finance"])
    server = build_server(load_config(write_config(tmp_path, model_dir, guard='api_keys = "keys.toml"')))
    with serve_in_thread(server.app) as url:
        assert httpx.get(url + "/v1/models", headers=bearer(key)).status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401  # no key, no allow_anonymous
        assert httpx.get(url + "/v1/models", headers=bearer("sk-bob")).status_code == 401


@pytest.fixture(scope="module")
def anonymous_server(tiny_model, tmp_path_factory):
    app, engine, _ = make_app(tiny_model, tmp_path_factory.mktemp("anon"), allow_anonymous=True)
    with serve_in_thread(app) as url:
        yield url, engine


def rag(url: str, headers: dict) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What moves to Project Heron in March?"}],
            "max_tokens": 2, "temperature": 0, "rag": {"collection": "wiki", "top_k": 5}}  # fmt: skip
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_a_request_without_a_key_is_anonymous_and_gets_public_documents_only(anonymous_server, tiny_model):
    url, engine = anonymous_server
    _, tokenizer = tiny_model
    reply = rag(url, {})
    assert reply.status_code == 200, reply.text
    assert [c["id"] for c in reply.json()["citations"]] == ["hours"]
    assert SECRET not in tokenizer.decode(engine.prompts[-1])
    assert [c["id"] for c in rag(url, bearer(BOB)).json()["citations"]] == ["hours"]
    reader = rag(url, bearer(ALICE))
    assert {c["id"] for c in reader.json()["citations"]} == {"hours", "heron"}
    assert SECRET in tokenizer.decode(engine.prompts[-1])
    assert rag(url, bearer("jj-wrong")).status_code == 401  # a wrong key is never anonymous


def test_up_serve_stage_authenticates_through_the_key_ring(tmp_path, model_dir):
    from jijian.up.stages.serve import stage_auth

    key = add_key(tmp_path / "keys.toml", "alice", ["finance"])
    config = load_config(write_config(tmp_path, model_dir, guard='api_keys = "keys.toml"'))
    auth, stage_key = stage_auth(config)
    assert auth.principal_for_key(key).user == "alice"
    assert auth.principal_for_key(stage_key).user == "jijian-up" and not auth.principal_for_key(stage_key).roles
    missing = load_config(write_config(tmp_path, model_dir, guard='api_keys = "gone.toml"'))
    with pytest.raises(AuthSetupError, match=r"gone\.toml"):
        stage_auth(missing)
