"""`jijian model import-gguf --weights int4|int8`: quantised projections; bad types and shapes name file and tensor."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_architectures import COMMON
from test_gguf_architectures import gguf_name
from transformers import Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.model.gguf import GGUFFormatError, import_gguf
from jijian.model.hf import load_hf
from jijian.model.quantized import Int4Linear, Int8Linear

Q = gguf.GGMLQuantizationType


def tiny_qwen2(intermediate: int = 128) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(**{**COMMON, "intermediate_size": intermediate}, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


def write_quantized_gguf(path: Path, reference: Qwen2ForCausalLM, kinds: dict[str, gguf.GGMLQuantizationType]) -> None:
    """A Qwen2 GGUF whose projections are stored as kinds[projection name] (e.g. 'ffn_down': Q4_1), the rest F32."""
    config = reference.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    for name, tensor in reference.state_dict().items():
        if name == "lm_head.weight":
            continue
        values = tensor.detach().numpy().astype(np.float32)
        kind = kinds.get(gguf_name(name).split(".")[2]) if name.endswith("proj.weight") else None
        if kind is None:
            writer.add_tensor(gguf_name(name), values)
        elif kind == Q.Q8_1:  # a type the gguf package cannot dequantise: raw bytes of the right size
            block, size = gguf.GGML_QUANT_SIZES[kind]
            raw = np.zeros((values.shape[0], values.shape[1] // block * size), dtype=np.uint8)
            writer.add_tensor(gguf_name(name), raw, raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


ALL_Q4 = {"attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.Q4_1, "attn_output": Q.Q4_1}
ALL_Q4 |= {"ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1, "ffn_down": Q.Q8_0}


def test_int4_import_keeps_the_q4_codes_and_serves_the_same_weights(tmp_path):
    write_quantized_gguf(tmp_path / "m.gguf", tiny_qwen2(), ALL_Q4)
    command = ["model", "import-gguf", str(tmp_path / "m.gguf"), "--to", str(tmp_path / "int4"), "--weights", "int4"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    import_gguf(tmp_path / "m.gguf", tmp_path / "fp32")
    full, _ = load_hf(tmp_path / "fp32")
    int4, _ = load_hf(tmp_path / "int4")
    layer = int4.model.layers["1"]
    assert isinstance(layer.self_attn.q_proj, Int4Linear) and isinstance(layer.mlp.down_proj, Int4Linear)
    assert layer.self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases come along
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj"):
        # Q4_0/Q4_1 codes kept as they are: equal to the fp32 import but for bf16 rounding of scale and zero.
        want = full.get_submodule(f"model.layers.1.{name}").weight
        got = int4.get_submodule(f"model.layers.1.{name}").dequantized()
        assert (got - want).abs().max() <= 0.02 * want.abs().max(), name
    tokens = torch.randint(0, COMMON["vocab_size"], (1, 24))
    with torch.no_grad():
        a, b = full(tokens), int4(tokens)
    assert (a - b).abs().max() <= 0.05 * a.abs().max()
    # Half a byte per projection weight (plus the kernel's packed copy) instead of four bytes.
    assert int4.model.layers["0"].mlp.up_proj.qweight.numel() == full.model.layers["0"].mlp.up_proj.weight.numel() // 2


def test_int8_import_requantises_per_channel(tmp_path):
    write_quantized_gguf(tmp_path / "m.gguf", tiny_qwen2(), ALL_Q4)
    import_gguf(tmp_path / "m.gguf", tmp_path / "int8", weights="int8")
    import_gguf(tmp_path / "m.gguf", tmp_path / "fp32")
    full, _ = load_hf(tmp_path / "fp32")
    int8, _ = load_hf(tmp_path / "int8")
    down = int8.model.layers["0"].mlp.down_proj
    assert isinstance(down, Int8Linear) and down.weight.dtype == torch.int8
    want = full.model.layers["0"].mlp.down_proj.weight
    assert (down.dequantized() - want).abs().max() <= 0.01 * want.abs().max()


def test_an_unsupported_quantisation_type_names_the_file_and_the_tensor(tmp_path):
    write_quantized_gguf(tmp_path / "m.gguf", tiny_qwen2(), {"ffn_up": Q.Q8_1})
    for weights in ("fp32", "int4"):
        with pytest.raises(GGUFFormatError) as error:
            import_gguf(tmp_path / "m.gguf", tmp_path / "out", weights=weights)
        message = str(error.value)
        assert "m.gguf" in message and "blk.0.ffn_up.weight" in message and "Q8_1" in message
    result = CliRunner().invoke(app, ["model", "import-gguf", str(tmp_path / "m.gguf"), "--to", str(tmp_path / "out")])
    assert result.exit_code != 0 and "blk.0.ffn_up.weight" in result.output
    assert not (tmp_path / "out").exists()


def test_int4_import_of_unpackable_shapes_names_the_file_and_the_tensor(tmp_path):
    write_quantized_gguf(tmp_path / "m.gguf", tiny_qwen2(intermediate=176), {})  # 176 inputs: not groups of 32
    with pytest.raises(GGUFFormatError) as error:
        import_gguf(tmp_path / "m.gguf", tmp_path / "out", weights="int4")
    message = str(error.value)
    assert "m.gguf" in message and "blk.0.ffn_down.weight" in message and "176" in message
    assert not (tmp_path / "out").exists()
