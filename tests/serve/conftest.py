"""Fixtures for the server tests: a small random Llama saved in HF format, loaded by jijian and transformers."""

from __future__ import annotations

import pytest
import torch

from jijian.model.hf import load_hf, save_hf
from jijian.model.llama import build_model


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tokenizer):
    """A random GQA model with the session tokenizer, saved once per session (randomised norms)."""
    from jijian.config import ModelConfig

    cfg = ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=tokenizer.vocab_size, max_seq_len=512
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    directory = tmp_path_factory.mktemp("small-model") / "model"
    save_hf(model, tokenizer, directory)
    return directory


@pytest.fixture(scope="session")
def small_model(small_model_dir):
    """(model, tokenizer) loaded by jijian."""
    return load_hf(small_model_dir)


@pytest.fixture(scope="session")
def reference_model(small_model_dir):
    """The same weights in transformers' LlamaForCausalLM."""
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(small_model_dir, torch_dtype=torch.float32).eval()


def _random_prompts(lengths, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture
def prompts_of_lengths():
    """Random prompts (token ids avoiding special tokens 0..4) of the given lengths: f(lengths, vocab, seed)."""
    return _random_prompts


@pytest.fixture(scope="session")
def ui_deployment(tmp_path_factory, tokenizer, corpus_texts):
    """The dashboard tests' deployment: a tiny trained run, a knowledge base, guard keys (built once)."""
    from ui_deployment import build_deployment

    return build_deployment(tmp_path_factory.mktemp("ui-deployment"), tokenizer, corpus_texts)
