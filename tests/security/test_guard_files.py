"""Finding 9: files from shared directories cannot run code, leak files, or have their audit chain recomputed."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import jijian
from jijian.cli.main import app
from jijian.config import DataConfig
from jijian.data import build_dataset
from jijian.guard.audit import AuditLog, AuditLogError, verify_audit
from jijian.kb.ingest import expand_paths
from jijian.serve.kv_cache import KVCacheManager, chain_hash
from jijian.train.checkpoint import rng_state, set_rng_state

KEY = b"0123456789abcdef0123456789abcdef"
SRC = Path(jijian.__file__).parent


class _RunsCode:
    """Unpickling this writes a file: the proof that loading the state executed someone else's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _prose(seed: int) -> str:
    rng = random.Random(seed)
    words = [rng.choice(["ka", "lo", "mi", "ne", "po", "ru", "si", "ta"]) + rng.choice("aeiou") for _ in range(300)]
    return "\n".join(" ".join(words[i : i + 12]) + "." for i in range(0, 300, 12))


def test_a_planted_pickle_state_is_never_loaded_and_the_state_is_json_and_arrays(tmp_path, tokenizer):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": _prose(i)}) + "\n" for i in range(12)), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "marker"
    (out / "build_state.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    cfg = DataConfig(sources=[str(corpus)], output_dir=out, workers=0, shard_size_mb=4096 / (1 << 20))

    class Stop(Exception):
        pass

    def stop(_shard):
        raise Stop

    with pytest.raises(Stop):
        build_dataset(cfg, tokenizer, on_shard=stop)
    assert not marker.exists()
    assert not (out / "build_state.pkl").exists()
    state = json.loads((out / "build_state.json").read_text(encoding="utf-8"))
    assert state["key"] and state["arrays_sha256"]
    with np.load(out / "build_state.npz", allow_pickle=False) as arrays:
        assert "dedup_hashes" in arrays.files
    resumed = build_dataset(cfg, tokenizer)
    assert resumed.resumed_shards >= 1 and not marker.exists()


def test_every_torch_load_in_the_package_uses_weights_only_true():
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if is_call and node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch":
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{path.relative_to(SRC)}:{node.lineno}", safe))
    assert calls, "expected the checkpoint's RNG load"
    assert [where for where, safe in calls if not safe] == []


def test_rng_state_round_trips_through_weights_only_load():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_kb_ingest_does_not_follow_links_out_of_the_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("another tenant's salary list")
    (outside / "more.md").write_text("# private")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# how to use the wiki")
    (docs / "leak.txt").symlink_to(outside / "secret.txt")
    (docs / "linked_dir").symlink_to(outside, target_is_directory=True)
    (docs / "alias.md").symlink_to(docs / "guide.md")  # a link that stays inside is fine
    found = {p.name for p in expand_paths([docs])}
    assert found == {"guide.md", "alias.md"}


def test_a_keyed_audit_chain_cannot_be_recomputed_without_the_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY)
    for i in range(3):
        log.append({"type": "request", "user": "alice", "n": i})
    assert verify_audit(path, KEY).ok
    # Someone who can write the log edits an entry and recomputes every hash and the tip, as the plain chain allows.
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    lines[1]["event"]["user"] = "mallory"
    prev = "0" * 64
    for entry in lines:
        entry["prev"] = prev
        body = {k: v for k, v in entry.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        entry["hash"] = prev = hashlib.sha256((entry["prev"] + canonical).encode()).hexdigest()
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines), encoding="utf-8")
    (tmp_path / "audit.jsonl.tip").write_text(json.dumps({"seq": 3, "hash": prev}))
    verdict = verify_audit(path, KEY)
    assert not verdict.ok and verdict.bad_line == 1  # the first recomputed entry no longer carries a valid HMAC
    # Dropping the "keyed" marker to pass as a plain chain does not help either.
    for entry in lines:
        entry.pop("keyed", None)
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines), encoding="utf-8")
    assert not verify_audit(path, KEY).ok


def test_verify_audit_command_takes_the_key_and_rejects_short_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("JIJIAN_AUDIT_KEY", raising=False)
    path = tmp_path / "audit.jsonl"
    AuditLog(path, KEY).append({"type": "request"})
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    runner = CliRunner()
    ok = runner.invoke(app, ["guard", "verify-audit", str(path), "--key-file", str(key_file)])
    assert ok.exit_code == 0, ok.output
    key_file.write_bytes(b"x" * 32)
    wrong = runner.invoke(app, ["guard", "verify-audit", str(path), "--key-file", str(key_file)])
    assert wrong.exit_code == 1 and "HMAC" in wrong.output
    with pytest.raises(AuditLogError, match="at least 16 bytes"):
        AuditLog(path, b"short")


def test_prefix_cache_keys_are_collision_resistant_digests():
    # Python's hash maps 0 and 2**61 - 1 to the same value, so hash((None, (0,))) == hash((None, (2**61 - 1,))).
    assert chain_hash(None, [0]) != chain_hash(None, [2**61 - 1])
    digest = chain_hash(None, [1, 2, 3])
    assert isinstance(digest, bytes) and len(digest) >= 16
    assert chain_hash(digest, [4]) != chain_hash(None, [4]) and chain_hash(digest, [4]) == chain_hash(digest, [4])
    manager = KVCacheManager(num_blocks=8, block_size=2)
    assert all(isinstance(h, bytes) for h in manager.cached)


def test_the_dashboard_checks_the_audit_hmac_with_the_configured_key(tmp_path, monkeypatch):
    from jijian.config import DeployConfig
    from jijian.serve.dashboard.guard_events import audit_view
    from jijian.serve.dashboard.sources import DashboardSources

    path = tmp_path / "audit.jsonl"
    AuditLog(path, KEY).append({"type": "request", "user": "alice"})
    monkeypatch.setenv("JIJIAN_AUDIT_KEY", KEY.decode())
    sources = DashboardSources.from_config(DeployConfig.model_validate({"guard": {"audit_log": str(path)}}))
    assert sources.audit_key == KEY
    assert audit_view(path, None, key=sources.audit_key)["verification"]["ok"]
    assert not audit_view(path, None, key=b"another key, 32 bytes long......")["verification"]["ok"]
