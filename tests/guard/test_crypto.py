"""Encryption at rest: round trip, wrong key and tampering raise clear errors, writes are atomic."""

from __future__ import annotations

import base64
import os

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.guard import crypto
from jijian.guard.crypto import (
    DecryptionError,
    KeyMaterialError,
    NotEncryptedError,
    decrypt_bytes,
    decrypt_file,
    encrypt_file,
    generate_key,
    is_encrypted,
    load_key,
)


@pytest.fixture
def key():
    return base64.b64decode(generate_key())


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(crypto, "CHUNK_SIZE", 1000)  # several chunks from a few KB


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 4321])
def test_round_trip(tmp_path, key, size):
    data = os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "enc", key)
    assert is_encrypted(tmp_path / "enc")
    if size >= 16:
        assert data[:16] not in (tmp_path / "enc").read_bytes()
    decrypt_file(tmp_path / "enc", tmp_path / "back", key)
    assert (tmp_path / "back").read_bytes() == data
    assert decrypt_bytes(tmp_path / "enc", key) == data


def test_wrong_key_is_a_clear_error_and_leaves_the_target_alone(tmp_path, key):
    (tmp_path / "plain").write_bytes(b"secret weights" * 300)
    encrypt_file(tmp_path / "plain", tmp_path / "enc", key)
    (tmp_path / "out").write_bytes(b"previous contents")
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt_file(tmp_path / "enc", tmp_path / "out", os.urandom(32))
    assert (tmp_path / "out").read_bytes() == b"previous contents"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flip", "truncate_chunk", "drop_last_chunk", "swap_chunks", "header"])
def test_tampering_is_detected(tmp_path, key, damage):
    (tmp_path / "plain").write_bytes(os.urandom(3500))
    encrypt_file(tmp_path / "plain", tmp_path / "enc", key)
    blob = bytearray((tmp_path / "enc").read_bytes())
    header, sealed = crypto.HEADER.size, 1000 + crypto.TAG_SIZE
    if damage == "flip":
        blob[header + 5] ^= 1
    elif damage == "truncate_chunk":
        blob = blob[:-7]
    elif damage == "header":
        blob[7:11] = (2**31).to_bytes(4, "big")  # a huge chunk size must not make us read gigabytes
    elif damage == "drop_last_chunk":
        blob = blob[: header + 3 * sealed]
    else:
        first, second = blob[header : header + sealed], blob[header + sealed : header + 2 * sealed]
        blob[header : header + 2 * sealed] = second + first
    (tmp_path / "enc").write_bytes(bytes(blob))
    with pytest.raises(DecryptionError):
        decrypt_bytes(tmp_path / "enc", key)


def test_encrypting_in_place_and_plain_files(tmp_path, key):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 2500)
    encrypt_file(path, path, key)
    assert is_encrypted(path)
    assert decrypt_bytes(path, key) == b"x" * 2500
    (tmp_path / "plain.txt").write_text("hello, not encrypted")
    with pytest.raises(NotEncryptedError, match="not a jijian-encrypted file"):
        decrypt_bytes(tmp_path / "plain.txt", key)


def test_key_from_env_or_file(tmp_path, monkeypatch):
    key_text = generate_key()
    monkeypatch.delenv("JIJIAN_GUARD_KEY", raising=False)
    with pytest.raises(KeyMaterialError, match="no encryption key"):
        load_key(None)
    (tmp_path / "k").write_text(key_text + "\n")
    assert load_key(tmp_path / "k") == base64.b64decode(key_text)
    monkeypatch.setenv("JIJIAN_GUARD_KEY", base64.b64decode(key_text).hex())
    assert load_key(None) == base64.b64decode(key_text)
    monkeypatch.setenv("JIJIAN_GUARD_KEY", "too-short")
    with pytest.raises(KeyMaterialError, match="JIJIAN_GUARD_KEY"):
        load_key(None)


def test_cli_round_trip_and_wrong_key_exit_code(tmp_path, monkeypatch):
    monkeypatch.delenv("JIJIAN_GUARD_KEY", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["guard", "keygen", str(tmp_path / "key")]).exit_code == 0
    assert runner.invoke(app, ["guard", "keygen", str(tmp_path / "other")]).exit_code == 0
    (tmp_path / "doc.txt").write_text("机密文件 confidential", encoding="utf-8")
    enc = runner.invoke(app, ["guard", "encrypt", str(tmp_path / "doc.txt"), str(tmp_path / "doc.enc"),
                              "--key-file", str(tmp_path / "key")])  # fmt: skip
    assert enc.exit_code == 0, enc.output
    dec = runner.invoke(app, ["guard", "decrypt", str(tmp_path / "doc.enc"), str(tmp_path / "doc.out"),
                              "--key-file", str(tmp_path / "key")])  # fmt: skip
    assert dec.exit_code == 0 and (tmp_path / "doc.out").read_text(encoding="utf-8") == "机密文件 confidential"
    wrong = runner.invoke(app, ["guard", "decrypt", str(tmp_path / "doc.enc"), str(tmp_path / "x"),
                                "--key-file", str(tmp_path / "other")])  # fmt: skip
    assert wrong.exit_code == 2 and "wrong key" in wrong.output and not (tmp_path / "x").exists()


def test_directory_helpers_and_config_key(tmp_path, key, monkeypatch):
    from jijian.config import GuardConfig
    from jijian.guard.crypto import decrypt_tree, encrypt_tree, key_from_config

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"dim": 8}')
    (model / "sub" / "weights.bin").write_bytes(os.urandom(2500))
    originals = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert len(encrypt_tree(model, key)) == 2 and encrypt_tree(model, key) == []  # idempotent
    assert all(is_encrypted(p) for p in originals)
    with pytest.raises(DecryptionError):
        decrypt_tree(model, os.urandom(32))
    assert len(decrypt_tree(model, key)) == 2
    assert {p: p.read_bytes() for p in originals} == originals

    assert key_from_config(GuardConfig()) is None
    (tmp_path / "k").write_text(base64.b64encode(key).decode())
    monkeypatch.delenv("MY_KEY", raising=False)
    config = GuardConfig(encrypt_at_rest=True, key_env="MY_KEY", key_file=tmp_path / "k")
    assert key_from_config(config) == key
