"""A small but real deployment for the dashboard tests: a trained run, a knowledge base, guard keys, an audit log.

The model the server loads is the one the tiny training run just exported, so every page shows data
produced by jijian itself: metrics, goodput and checkpoints from `run_training`, collections built
with the hashing embedder, audit entries written by the guard while the tests send requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from jijian.guard.apikeys import add_key
from jijian.kb import EmbeddedKnowledgeBase, Record
from jijian.kb.embed import HashingEmbedder

SALARIES = "Quarterly salaries: the finance team budget for salaries is 4.2 million yuan in Q3."
CAFETERIA = "The cafeteria serves lunch from 11:30 to 13:30 on weekdays; dumplings on Fridays."
BACKUPS = "Backups of the training cluster run every night at 02:00 and are kept for 30 days."


@dataclass(frozen=True)
class Deployment:
    """Paths and keys of the test deployment."""

    config_path: Path
    admin_key: str
    alice_key: str  # role finance: may read the salaries document
    bob_key: str  # role staff


def _config(root: Path, *, served_model: Path | None) -> dict:
    config = {
        "name": "ui-test",
        "model": {
            "dim": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_dim": 64,
            "vocab_size": 512,
            "max_seq_len": 1024,
            "tie_embeddings": False,
        },
        "tokenizer": {"path": str(root / "tokenizer")},
        "data": {"sources": [str(root / "corpus.jsonl")], "validation_fraction": 0},
        "train": {
            "output_dir": str(root / "runs" / "tiny"),
            "steps": 6,
            "batch_size": 4,
            "seq_len": 32,
            "lr": 3e-3,
            "warmup_steps": 1,
            "log_every": 1,
            "device": "cpu",
        },
        "checkpoint": {"enabled": True, "interval": 2, "keep_last": 2},
        "kb": {"path": str(root / "kb"), "embedding_model": "hashing", "index": "flat"},
        "guard": {"audit_log": str(root / "audit" / "audit.jsonl"), "api_keys": str(root / "keys.toml")},
        "hardware": {"rent_per_device_hour": 2.0, "currency": "CNY"},
        "serve": {
            "served_model_name": "tiny-run",
            "kv_cache_mb": 4,
            "block_size": 16,
            "max_num_seqs": 8,
            "max_batch_tokens": 512,
        },
    }
    if served_model is not None:
        config["serve"]["model_path"] = str(served_model)
    return config


def build_deployment(root: Path, tokenizer, corpus_texts: list[str]) -> Deployment:
    """Train a tiny run, build the knowledge base, make keys; returns the deploy.toml that serves it all."""
    from jijian.config import load_config
    from jijian.train.run import run_training

    tokenizer.save(root / "tokenizer")
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for text in corpus_texts[:6]:
            f.write(json.dumps({"text": text[:4000]}) + "\n")
    config_path = root / "deploy.toml"
    config_path.write_text(tomli_w.dumps(_config(root, served_model=None)), encoding="utf-8")
    run = run_training(load_config(config_path))

    embedder = HashingEmbedder()
    kb = EmbeddedKnowledgeBase(root / "kb")
    handbook = kb.create_collection("handbook", embedder.dim, index="flat")
    texts = [SALARIES, CAFETERIA, BACKUPS]
    vectors = embedder.embed(texts)
    handbook.insert(
        [
            Record("salaries", vectors[0], SALARIES, {"source": "finance/salaries.md"}, readers=["role:finance"]),
            Record("cafeteria", vectors[1], CAFETERIA, {"source": "facilities/cafeteria.md"}),
            Record("backups", vectors[2], BACKUPS, {"source": "it/backups.md"}),
        ]
    )
    kb.close()

    keys = root / "keys.toml"
    admin = add_key(keys, "root", ["admin"])
    alice = add_key(keys, "alice", ["finance"])
    bob = add_key(keys, "bob", ["staff"])
    config_path.write_text(tomli_w.dumps(_config(root, served_model=run.model_dir)), encoding="utf-8")
    return Deployment(config_path, admin, alice, bob)
