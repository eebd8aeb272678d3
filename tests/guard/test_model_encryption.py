"""Encrypted model export and loading: `jijian train export` seals every file when `[guard] encrypt_at_rest`
is on; the server decrypts in memory with the key; a wrong or missing key is a clear error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import DeployConfig, load_config
from jijian.guard.crypto import (
    DecryptionError,
    KeyMaterialError,
    encrypt_exported_model,
    generate_key,
    is_encrypted,
)
from jijian.model.hf import save_hf
from jijian.model.llama import build_model
from jijian.serve.server import load_model
from jijian.train.run import run_training

MODEL = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 64, "vocab_size": 512, "max_seq_len": 32}


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tokenizer, corpus_texts):
    """A 2-step training run whose deploy.toml asks for encryption at rest with a key file."""
    root = tmp_path_factory.mktemp("encrypted-run")
    tokenizer.save(root / "tokenizer")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t[:2000]}) + "\n" for t in corpus_texts[:4]))
    (root / "guard.key").write_text(generate_key())
    config = {
        "model": MODEL,
        "tokenizer": {"path": str(root / "tokenizer")},
        "data": {"sources": [str(root / "corpus.jsonl")], "validation_fraction": 0},
        "train": {"output_dir": str(root / "run"), "steps": 2, "batch_size": 2, "seq_len": 16, "device": "cpu",
                  "warmup_steps": 1, "log_every": 1},
        "checkpoint": {"enabled": True, "interval": 2},
        "guard": {"encrypt_at_rest": True, "key_env": "JIJIAN_TEST_UNSET_KEY", "key_file": str(root / "guard.key")},
    }  # fmt: skip
    (root / "deploy.toml").write_text(tomli_w.dumps(config))
    run_training(load_config(root / "deploy.toml"))
    return root


def serve_config(model_dir: Path, **guard) -> DeployConfig:
    return DeployConfig.model_validate({"serve": {"model_path": str(model_dir)}, "guard": guard})


def test_export_encrypts_every_file_and_the_server_loads_it_in_memory(trained_run, monkeypatch):
    root = trained_run

    def no_plaintext(*args, **kwargs):
        raise AssertionError("a plaintext write during an encrypted export")

    with monkeypatch.context() as patch:  # the export must not write any file in clear, even for a moment
        patch.setattr("jijian.model.hf.save_file", no_plaintext)
        patch.setattr(Path, "write_bytes", no_plaintext)
        patch.setattr(Path, "write_text", no_plaintext)
        result = CliRunner().invoke(app, ["train", "export", str(root / "run"), "--to", str(root / "sealed")])
    assert result.exit_code == 0, result.output
    assert "encrypted" in result.output
    files = tree(root / "sealed")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files.keys()
    assert all(is_encrypted(root / "sealed" / name) for name in files)
    blob = b"".join(files.values())
    assert b"LlamaForCausalLM" not in blob and b"tok_embeddings" not in blob and b"embed_tokens" not in blob

    config = serve_config(root / "sealed", encrypt_at_rest=True, key_file=str(root / "guard.key"))
    model, tokenizer, _ = load_model(config)
    trained = load_file(root / "run" / "model" / "model.safetensors")  # the run's own plaintext weights
    loaded = model.state_dict()
    assert trained.keys() == loaded.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert tokenizer.decode(tokenizer.encode("def main():")) == "def main():"
    assert tree(root / "sealed") == files  # nothing decrypted was written next to the model


def test_export_without_the_key_fails_before_writing_anything(trained_run, tmp_path):
    root = trained_run
    (root / "guard.key").rename(root / "guard.key.away")
    try:
        result = CliRunner().invoke(app, ["train", "export", str(root / "run"), "--to", str(tmp_path / "out")])
    finally:
        (root / "guard.key.away").rename(root / "guard.key")
    assert result.exit_code == 2
    assert "key file not found" in result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture
def sealed_model(tmp_path, tokenizer):
    from jijian.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL))
    save_hf(model, tokenizer, tmp_path / "model")
    key_file = tmp_path / "key"
    key_file.write_text(generate_key())
    guard = DeployConfig.model_validate({"guard": {"encrypt_at_rest": True, "key_file": str(key_file)}}).guard
    sealed = encrypt_exported_model(tmp_path / "model", guard)
    assert sealed and all(is_encrypted(p) for p in sealed)
    return tmp_path / "model", key_file, model


def test_a_wrong_key_is_a_clear_error_naming_the_file(sealed_model, tmp_path):
    model_dir, _, _ = sealed_model
    wrong = tmp_path / "wrong.key"
    wrong.write_text(generate_key())
    with pytest.raises(DecryptionError, match=r"config\.json: cannot decrypt chunk 0: wrong key"):
        load_model(serve_config(model_dir, encrypt_at_rest=True, key_file=str(wrong)))


def test_an_encrypted_model_without_encryption_configured_names_the_file(sealed_model):
    model_dir, _, _ = sealed_model
    with pytest.raises(KeyMaterialError, match=r"config\.json is encrypted: set \[guard\] encrypt_at_rest"):
        load_model(serve_config(model_dir))


def test_the_key_from_the_environment_loads_the_same_weights(sealed_model, monkeypatch):
    model_dir, key_file, original = sealed_model
    monkeypatch.setenv("MY_MODEL_KEY", key_file.read_text())
    loaded, _, _ = load_model(serve_config(model_dir, encrypt_at_rest=True, key_env="MY_MODEL_KEY"))
    expected = original.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())


def test_encryption_off_leaves_an_export_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert encrypt_exported_model(tmp_path, DeployConfig().guard) == []
    assert (tmp_path / "config.json").read_text() == "{}"
