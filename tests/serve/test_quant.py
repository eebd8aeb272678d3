"""Weight-only int8/int4 (and bf16) serving: packed kernels against a dequantised reference, errors, the engine."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jijian.config import ModelConfig
from jijian.model.llama import build_model
from jijian.model.quantized import Bf16Linear, Int4Linear, Int8Linear, int4_shape_problem, quantize_int4_weight
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.quant import QuantizationError, quantize_int8, quantize_model, weight_bytes
from jijian.serve.request import SamplingParams

SHAPES = [(16, 64, 32), (48, 128, 64), (160, 256, 128), (32, 512, 256), (576, 1536, 32)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), SHAPES)
@pytest.mark.parametrize("rows", [1, 7])
def test_packed_kernels_match_the_dequantised_reference(out_features, in_features, group_size, rows):
    torch.manual_seed(out_features + rows)
    linear = nn.Linear(in_features, out_features, bias=True)
    x = torch.randn(2, rows, in_features)
    for layer in (Int8Linear.from_linear(linear), Int4Linear.from_linear(linear, group_size)):
        reference = x @ layer.dequantized().T + linear.bias
        got = layer(x)
        assert got.shape == (2, rows, out_features) and got.dtype == torch.float32
        # The kernels multiply in bf16 (8-bit mantissa): a few parts in a thousand of the largest output.
        assert relative_error(got, reference) < 1e-2, type(layer).__name__


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), SHAPES[:3])
def test_quantised_layers_stay_close_to_the_float_layer(out_features, in_features, group_size):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False)
    x = torch.randn(5, in_features)
    want = linear(x)
    assert relative_error(Int8Linear.from_linear(linear)(x), want) < 0.02
    assert relative_error(Bf16Linear.from_linear(linear)(x), want) < 0.01
    assert relative_error(Int4Linear.from_linear(linear, group_size)(x), want) < 0.15
    int4 = Int4Linear.from_linear(linear, group_size)
    # Group-wise 4 bits: every weight within half a step (plus bf16 rounding of scale and zero) of the float one.
    step = int4.scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)
    assert ((int4.dequantized() - linear.weight).abs() <= 0.51 * step + 1e-2 * linear.weight.abs()).all()


def test_int4_codes_round_trip_through_the_nibble_layout():
    torch.manual_seed(1)
    codes, scales, zeros = quantize_int4_weight(torch.randn(32, 64), 32)
    layer = Int4Linear.from_codes(codes, scales, zeros, 32)
    assert layer.qweight.shape == (32, 32) and layer.qweight.dtype == torch.uint8
    assert torch.equal(layer.codes(), codes)
    assert codes.min() >= 0 and codes.max() <= 15


def test_int4_shape_rules_of_the_kernels():
    assert int4_shape_problem(576, 1536, 32, "cpu") is None
    assert "in_features 48" in int4_shape_problem(64, 48, 32, "cpu")
    assert "out_features 24" in int4_shape_problem(24, 64, 32, "cpu")
    assert int4_shape_problem(24, 64, 32, "cuda") is None  # tinygemm tiles 8 rows
    assert "group size 16" in int4_shape_problem(64, 64, 16, "cpu")
    assert "not on xpu" in int4_shape_problem(64, 64, 32, "xpu")


def test_int4_model_with_unpackable_shapes_names_the_model_and_the_tensor():
    cfg = ModelConfig(dim=48, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=256, max_seq_len=64)
    model = build_model(cfg)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(QuantizationError) as error:
        quantize_model(model, "int4", source="/models/odd")
    message = str(error.value)
    assert "/models/odd" in message and "model.layers.0.self_attn.q_proj.weight" in message
    assert "in_features 48" in message and "int4" in message
    # Nothing was replaced: the model serves as it was.
    assert all(type(m) is not Int4Linear for m in model.modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_unknown_weight_format_is_refused():
    with pytest.raises(QuantizationError, match=r"serve\.weights = 'int3'"):
        quantize_model(build_model(ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_dim=128, vocab_size=64)), "int3")


@pytest.mark.parametrize("weights", ["bf16", "int8", "int4"])
def test_weight_formats_save_memory_and_keep_most_greedy_tokens(small_model, prompts_of_lengths, weights):
    model, _ = small_model
    served = quantize_model(copy.deepcopy(model), weights)
    kinds = {"bf16": Bf16Linear, "int8": Int8Linear, "int4": Int4Linear}
    assert isinstance(served.model.layers["0"].mlp.down_proj, kinds[weights])
    assert isinstance(served.lm_head, Int8Linear if weights == "int4" else kinds[weights])  # int4: an int8 head
    # bf16 on the CPU keeps oneDNN's packed copy beside the plain one: no saving claimed there.
    assert weight_bytes(served) <= {"bf16": 1.0, "int8": 0.45, "int4": 0.45}[weights] * weight_bytes(model)
    prompts = prompts_of_lengths([12, 30], model.cfg.vocab_size, 9)
    tokens = torch.tensor([prompts[1]])
    with torch.no_grad():
        full, quant = model(tokens), served(tokens)
    # A random model's logits are nearly flat, so this is a loose bound; SmolLM2's agreement is tested on the model.
    assert (full.argmax(-1) == quant.argmax(-1)).float().mean() >= {"bf16": 0.9, "int8": 0.9, "int4": 0.6}[weights]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outs = LLMEngine(served, None, EngineConfig(num_blocks=64, block_size=4)).generate(prompts, params)
    assert [len(o) for o in outs] == [8, 8]


def test_quantize_int8_keeps_biases(small_model):
    model, _ = small_model
    biased = copy.deepcopy(model)
    linear = biased.model.layers["0"].self_attn.q_proj
    linear.bias = nn.Parameter(torch.randn(linear.out_features))
    quantize_int8(biased)
    q_proj = biased.model.layers["0"].self_attn.q_proj
    assert isinstance(q_proj, Int8Linear) and torch.equal(q_proj.bias, linear.bias.detach())


def test_serve_weights_int4_on_an_unpackable_model_names_the_directory_and_the_tensor(tmp_path, tokenizer):
    from jijian.config import load_config
    from jijian.model.hf import save_hf
    from jijian.serve.server import load_model

    cfg = ModelConfig(dim=48, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=tokenizer.vocab_size)
    directory = save_hf(build_model(cfg), tokenizer, tmp_path / "odd-model")
    (tmp_path / "deploy.toml").write_text(f'[serve]\nmodel_path = "{directory}"\nweights = "int4"\n')
    with pytest.raises(QuantizationError) as error:
        load_model(load_config(tmp_path / "deploy.toml"))
    assert str(directory) in str(error.value) and "model.layers.0.self_attn.q_proj.weight" in str(error.value)
    # int8 has no such constraint: the same model serves.
    (tmp_path / "deploy.toml").write_text(f'[serve]\nmodel_path = "{directory}"\nweights = "int8"\n')
    model, _, _ = load_model(load_config(tmp_path / "deploy.toml"))
    assert isinstance(model.model.layers["0"].self_attn.q_proj, Int8Linear)


def test_a_directory_imported_as_int4_refuses_another_quantisation(small_model_dir):
    from jijian.model.hf import load_hf

    model, _ = load_hf(small_model_dir)
    quantize_model(model, "int4", source="imported")
    assert quantize_model(model, "auto") is model and quantize_model(model, "int4") is model
    with pytest.raises(QuantizationError, match="import-gguf --weights int8"):
        quantize_model(model, "int8", source="imported")


def test_int4_projections_split_for_tensor_parallelism_on_group_boundaries_only():
    from jijian.serve.tensor_parallel import TensorParallelError, _sliced

    torch.manual_seed(0)
    layer = Int4Linear.from_linear(nn.Linear(128, 64), 32)
    by_rows, by_cols = _sliced(layer, rows=slice(16, 48)), _sliced(layer, cols=slice(64, 128))
    assert torch.equal(by_rows.dequantized(), layer.dequantized()[16:48])
    assert torch.equal(by_cols.dequantized(), layer.dequantized()[:, 64:]) and by_cols.bias is None
    with pytest.raises(TensorParallelError, match="groups of 32"):
        _sliced(layer, cols=slice(0, 48))
