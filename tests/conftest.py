"""Shared fixtures: small model configs and a tokenizer trained once per session on real text."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The planner's "cpu" is this machine when `jijian plan calibrate` has profiled it; tests must not depend on
# whether the developer has, so they point at a profile that does not exist unless a test writes one.
os.environ["JIJIAN_HARDWARE_PROFILE"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / "jijian-tests-no-profile.json")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def stdlib_sample(n_files: int = 40) -> list[Path]:
    """A fixed handful of real Python files from the interpreter's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(root.glob("*.py"))[:n_files]


@pytest.fixture(scope="session")
def stdlib_paths() -> list[Path]:
    return stdlib_sample()


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_sample()]


@pytest.fixture(scope="session")
def tokenizer(corpus_texts):
    from jijian.model.tokenizer import train_tokenizer

    return train_tokenizer(corpus_texts, vocab_size=512)


@pytest.fixture
def tiny_config():
    """A small GQA model (4 query heads over 2 KV heads), untied, fast enough for unit tests."""
    from jijian.config import ModelConfig

    return ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=256, rope_theta=10000.0
    )
