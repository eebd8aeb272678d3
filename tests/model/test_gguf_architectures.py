"""`jijian model import-gguf` of Qwen2 and Qwen3 files: tiny GGUFs written with the `gguf` package."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_architectures import VOCAB, reference_model
from tokenizers.pre_tokenizers import ByteLevel
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.model.gguf import GGUFFormatError, read_gguf
from jijian.model.hf import load_hf

# HF name pieces -> llama.cpp's, the inverse of what the importer maps.
_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf_name: str) -> str:
    if hf_name.startswith("model.layers."):
        _, _, index, rest = hf_name.split(".", 3)
        module, leaf = rest.rsplit(".", 1)
        return f"blk.{index}.{_LAYER[module]}.{leaf}"
    return {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }[hf_name]


def write_gguf(path: Path, architecture: str, reference) -> None:
    """A GGUF as llama.cpp's converter writes a Qwen model: HF's q/k row order, byte-level BPE tokenizer."""
    config = reference.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(reference.model.layers[0].self_attn.head_dim)
    writer.add_value_length(reference.model.layers[0].self_attn.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    alphabet = sorted(ByteLevel.alphabet())
    tokens = [*alphabet, "ab", "12"]
    tokens += [f"<|extra_{i}|>" for i in range(VOCAB - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(alphabet) + 2) + [3] * (VOCAB - len(alphabet) - 2))
    writer.add_token_merges(["a b", "1 2"])
    writer.add_eos_token_id(len(alphabet) + 2)
    writer.add_add_bos_token(False)
    state = reference.state_dict()
    for name, tensor in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        writer.add_tensor(gguf_name(name), tensor.detach().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3"])
def test_imported_gguf_gives_the_reference_logits(tmp_path, architecture):
    reference = reference_model(architecture)
    write_gguf(tmp_path / "model.gguf", architecture, reference)
    command = ["model", "import-gguf", str(tmp_path / "model.gguf"), "--to", str(tmp_path / "hf")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    model, tokenizer = load_hf(tmp_path / "hf")
    assert model.cfg.architecture == architecture
    assert model.cfg.tie_embeddings == bool(reference.config.tie_word_embeddings)
    tokens = torch.randint(0, VOCAB, (1, 60))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=1e-5, rtol=1e-5)
    # Qwen's pre-tokeniser splits digits one by one, so the "1 2" merge never applies (GPT-2's would).
    assert tokenizer is not None
    assert [tokenizer.decode([i]) for i in tokenizer.encode("ab 12")] == ["ab", " ", "1", "2"]


def test_a_gguf_of_an_unsupported_architecture_is_refused(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "gptneox")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFFormatError, match=r"'gptneox'.*llama, qwen2, qwen3"):
        read_gguf(tmp_path / "other.gguf")
    command = ["model", "import-gguf", str(tmp_path / "other.gguf"), "--to", str(tmp_path / "o")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code != 0 and "gptneox" in result.output
    assert not (tmp_path / "o").exists()
