"""Finding 8: `jijian up` writes the knowledge base encrypted under `[guard] encrypt_at_rest`, and the server
refuses a collection stored in clear when encryption is on."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import load_config
from jijian.guard.crypto import generate_key
from jijian.kb.sealing import CollectionKeyError
from jijian.kb.store import EmbeddedKnowledgeBase, Record

SECRET_LINE = "The Heron budget is 310 million."
CONFIG = """
[kb]
path = "kb"
embedding_model = "hashing"
index = "flat"

[guard]
encrypt_at_rest = true
key_env = "JIJIAN_TEST_SECURITY_KEY"
allow_anonymous = true

[up]
state_dir = "up"
stages = ["kb"]
kb_collection = "notes"
kb_sources = ["docs"]
"""


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    monkeypatch.setenv("JIJIAN_TEST_SECURITY_KEY", generate_key())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "heron.md").write_text(f"# Heron\n\n{SECRET_LINE}\n")
    (tmp_path / "deploy.toml").write_text(CONFIG)
    return tmp_path


def test_up_writes_the_knowledge_base_encrypted(deployment):
    result = CliRunner().invoke(app, ["up", str(deployment / "deploy.toml")])
    assert result.exit_code == 0, result.output
    collection = deployment / "kb" / "notes"
    assert "encryption" in json.loads((collection / "collection.json").read_text())
    for path in collection.rglob("*"):
        if path.is_file():
            assert b"Heron budget" not in path.read_bytes(), path


def test_the_server_refuses_a_plaintext_collection_when_encryption_is_on(deployment):
    from jijian.guard.policy import GuardPolicy
    from jijian.serve.server import knowledge_base_services

    plain = EmbeddedKnowledgeBase(deployment / "kb").create_collection("notes", 4)
    plain.insert([Record("heron", [1.0, 0, 0, 0], SECRET_LINE)])
    plain.checkpoint()
    config = load_config(deployment / "deploy.toml")
    with pytest.raises(CollectionKeyError, match=r"plaintext.*encrypt_at_rest"):
        knowledge_base_services(config, GuardPolicy(config.guard))
