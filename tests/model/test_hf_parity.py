"""Parity with the reference implementation: transformers' LlamaForCausalLM, both directions."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from jijian.config.hf_config import HFFormatError
from jijian.model import build_model
from jijian.model.hf import WEIGHTS_INDEX_NAME, load_hf, save_hf
from jijian.model.llama import rope_inverse_frequencies

transformers.logging.set_verbosity_error()


def reference_model(tie: bool = False, rope_scaling: dict | None = None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,  # GQA: 4 query heads share each KV head
        tie_word_embeddings=tie,
        max_position_embeddings=512,
        rope_theta=500000.0 if rope_scaling else 10000.0,
        rope_scaling=rope_scaling,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).eval()
    # HF initialises norms at one; randomise them so a mix-up of the two norms would show.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.mark.parametrize(
    ("tie", "rope_scaling"), [(False, None), (True, None), (False, LLAMA3_SCALING)], ids=["untied", "tied", "llama3"]
)
def test_transformers_model_loads_with_equal_logits(tmp_path, tie, rope_scaling):
    reference = reference_model(tie, rope_scaling)
    reference.save_pretrained(tmp_path)
    model, tokenizer = load_hf(tmp_path)
    assert tokenizer is None
    tokens = torch.randint(0, 320, (2, 300))  # longer than original_max_position_embeddings: scaling matters
    with torch.no_grad():
        expected = reference(tokens).logits
        actual = model(tokens)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert model.cfg.tie_embeddings == tie


def test_jijian_model_saves_and_transformers_loads_with_equal_logits(tmp_path, tiny_config, tokenizer):
    torch.manual_seed(1)
    model = build_model(tiny_config).eval()
    save_hf(model, tokenizer, tmp_path / "out")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reference).__name__ == "LlamaForCausalLM"
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "def add(a, b):\n    return a + b\n"
    ids = tokenizer.encode(text, add_bos=True)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids[1:]
    tokens = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=1e-5, rtol=1e-5)


def test_llama3_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from jijian.config import ModelConfig

    cfg = ModelConfig(preset="llama3-8b")
    hf_config = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        rope_theta=500000.0,
        rope_scaling={**LLAMA3_SCALING, "original_max_position_embeddings": 8192},
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    torch.testing.assert_close(rope_inverse_frequencies(cfg), expected.float(), atol=0, rtol=0)


def test_sharded_save_writes_an_index_that_transformers_reads(tmp_path, tiny_config):
    model = build_model(tiny_config).eval()
    out = save_hf(model, None, tmp_path / "sharded", max_shard_bytes=64 * 1024)
    index = json.loads((out / WEIGHTS_INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and all((out / name).is_file() for name in shards)
    assert set(index["weight_map"]) == set(model.state_dict())
    reloaded, _ = load_hf(out)
    reference = LlamaForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, 512, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens), model(tokens), atol=0, rtol=0)
        torch.testing.assert_close(reference(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)


def test_bf16_save_and_load_keeps_or_converts_dtype(tmp_path, tiny_config):
    model = build_model(tiny_config)
    out = save_hf(model, None, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    as_stored, _ = load_hf(out, dtype=None)
    assert next(as_stored.parameters()).dtype == torch.bfloat16
    as_fp32, _ = load_hf(out)
    assert next(as_fp32.parameters()).dtype == torch.float32


def test_transformers_v4_config_layout_is_read(tmp_path):
    reference = reference_model(rope_scaling=LLAMA3_SCALING)
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # transformers v4 wrote rope_theta and rope_scaling (with "type") at the top level.
    rope = config.pop("rope_parameters", None) or {}
    config["rope_theta"] = rope.pop("rope_theta", 500000.0)
    config["rope_scaling"] = {"type": rope.pop("rope_type", "llama3"), **rope}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _ = load_hf(tmp_path)
    assert model.cfg.rope_scaling is not None and model.cfg.rope_scaling.factor == 8.0
    tokens = torch.randint(0, 320, (1, 200))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=1e-5, rtol=1e-5)


def test_load_errors_name_the_file(tmp_path, tiny_config):
    with pytest.raises(HFFormatError, match=r"config\.json"):
        load_hf(tmp_path)
    save_hf(build_model(tiny_config), None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "intermediate_size": 99}))
    with pytest.raises(HFFormatError, match=r"mlp\.\w+_proj\.weight has shape"):
        load_hf(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(HFFormatError, match="attention_bias"):
        load_hf(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HFFormatError, match=r"model\.safetensors"):
        load_hf(tmp_path / "m")


def test_a_failed_save_leaves_the_previous_model_intact(tmp_path, tiny_config, monkeypatch):
    import jijian.model.hf as hf

    good = build_model(tiny_config)
    save_hf(good, None, tmp_path / "model")
    before = (tmp_path / "model" / "model.safetensors").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_hf(build_model(tiny_config), None, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging directory left behind
