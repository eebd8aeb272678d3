"""Fixtures for the HTTP trust-boundary tests (helpers live in http_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """A random 1-layer Llama over the session tokenizer (which has ChatML special tokens and a chat template)."""
    from jijian.config import ModelConfig
    from jijian.model.llama import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=tokenizer.vocab_size,
                      max_seq_len=1024)  # fmt: skip
    return build_model(cfg).eval(), tokenizer
