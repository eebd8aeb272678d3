"""Qwen2, Qwen3 and Mistral as configurations of the one model: parity with transformers, both ways, and the server."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from jijian.config import ModelConfig
from jijian.config.hf_config import HFFormatError
from jijian.model import build_model
from jijian.model.generate import generate
from jijian.model.hf import load_hf, save_hf
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams

transformers.logging.set_verbosity_error()

VOCAB = 320
WINDOW = 24  # Mistral's sliding window, far shorter than the test sequences so it changes the answer
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
}
ARCHITECTURES = {
    # Qwen2 small sizes tie the embeddings; Qwen3's head_dim differs from hidden / heads as in the real ones.
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": WINDOW}),
}


def reference_model(architecture: str, seed: int = 0) -> transformers.PreTrainedModel:
    config_class, model_class, extra = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    model = model_class(config_class(**COMMON, **extra)).eval()
    # Norms start at one and biases at zero in transformers: randomise both so a missing one would show.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def saved_reference(request, tmp_path_factory):
    """(architecture, transformers model, its save_pretrained directory)."""
    architecture = request.param
    model = reference_model(architecture)
    directory = tmp_path_factory.mktemp(architecture) / "model"
    model.save_pretrained(directory)
    return architecture, model, directory


def test_transformers_model_loads_with_equal_logits(saved_reference):
    architecture, reference, directory = saved_reference
    model, _ = load_hf(directory)
    assert model.cfg.architecture == architecture
    assert model.cfg.attention_bias == (architecture == "qwen2")
    assert model.cfg.qk_norm == (architecture == "qwen3")
    assert model.cfg.sliding_window == (WINDOW if architecture == "mistral" else None)
    tokens = torch.randint(0, VOCAB, (2, 100))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=1e-5, rtol=1e-5)


def test_jijian_model_saves_and_transformers_loads_with_equal_logits(saved_reference, tmp_path):
    architecture, reference, directory = saved_reference
    loaded, _ = load_hf(directory)
    # A fresh jijian model of the same configuration, with its own random weights, saved by jijian.
    torch.manual_seed(5)
    model = build_model(loaded.cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                param.uniform_(0.5, 1.5)
    save_hf(model, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [type(reference).__name__]
    assert config["model_type"] == architecture
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(theirs) is type(reference)
    tokens = torch.randint(0, VOCAB, (2, 100))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), theirs(tokens).logits, atol=1e-5, rtol=1e-5)


def test_sliding_window_changes_long_sequences_only():
    cfg = ModelConfig(
        dim=32, n_layers=2, n_heads=4, ffn_dim=64, vocab_size=VOCAB, architecture="mistral", sliding_window=8
    )
    torch.manual_seed(0)
    windowed = build_model(cfg).eval()
    full = build_model(cfg.model_copy(update={"sliding_window": None}), init=False).eval()
    full.load_state_dict(windowed.state_dict())
    tokens = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        a, b = windowed(tokens), full(tokens)
    torch.testing.assert_close(a[:, :8], b[:, :8])  # the first window sees everything either way
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3


def _reference_greedy(reference, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = reference.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def test_generate_and_the_server_match_transformers_greedy(saved_reference):
    _, reference, directory = saved_reference
    model, _ = load_hf(directory)
    gen = torch.Generator().manual_seed(3)
    # Prompts shorter and longer than Mistral's window; generation runs past it too.
    prompts = [torch.randint(5, VOCAB, (n,), generator=gen).tolist() for n in (5, 30, 70)]
    expected = [_reference_greedy(reference, p, 20) for p in prompts]
    assert [generate(model, p, 20) for p in prompts] == expected
    # Block size 4 and a small token budget: chunked prefill next to decodes, contexts over many blocks.
    engine = LLMEngine(model, None, EngineConfig(num_blocks=128, block_size=4, max_batch_tokens=32, max_num_seqs=8))
    assert engine.generate(prompts, SamplingParams(max_tokens=20, ignore_eos=True)) == expected


def test_an_unsupported_architecture_lists_the_supported_ones(saved_reference, tmp_path):
    _, _, directory = saved_reference
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(HFFormatError, match=r"GPTNeoXForCausalLM.*Qwen2ForCausalLM.*Qwen3ForCausalLM"):
        load_hf(tmp_path)


@pytest.mark.parametrize(
    ("preset", "billions"),
    [("qwen2.5-0.5b", 0.494), ("qwen2.5-7b", 7.62), ("qwen3-0.6b", 0.596), ("qwen3-8b", 8.19), ("mistral-7b", 7.24)],
)
def test_presets_have_the_published_parameter_counts(preset, billions):
    model = build_model(ModelConfig(preset=preset), device="meta")
    assert model.num_parameters() / 1e9 == pytest.approx(billions, rel=0.01)


@pytest.mark.parametrize("preset", ["qwen2.5-0.5b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-8b", "mistral-7b"])
def test_the_planner_knows_the_presets(preset):
    from typer.testing import CliRunner

    from jijian.cli.main import app
    from jijian.spec.shape import ModelShape

    model = build_model(ModelConfig(preset=preset), device="meta")
    # The shared arithmetic counts every parameter the module holds, biases and q/k norms included.
    assert ModelShape.from_config(ModelConfig(preset=preset)).params == model.num_parameters()
    result = CliRunner().invoke(app, ["plan", "--model", preset, "--gpus", "64", "--gpu", "H800", "--tokens", "1T"])
    assert result.exit_code == 0, result.output
