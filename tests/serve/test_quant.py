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
from jijian.serve.matmul import FusedProjection, QuantizedOrDense, with_packed_linears
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


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int4"])
def test_fused_projections_multiply_like_the_separate_layers(weights):
    # The serving runner's CPU view fuses q/k/v and gate/up (biases too, as Qwen2 has) into one product each.
    torch.manual_seed(3)
    cfg = ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=96, attention_bias=True)
    served = quantize_model(build_model(cfg), weights)
    bytes_before = weight_bytes(served)
    tokens = torch.randint(0, cfg.vocab_size, (1, 11))
    with torch.inference_mode():
        want = served(tokens)
        view = with_packed_linears(served)
        got = view(tokens)
        again = served(tokens)
    attention, mlp = view.model.layers["1"].self_attn, view.model.layers["1"].mlp
    assert isinstance(attention.qkv_proj, FusedProjection) and isinstance(mlp.gate_up_proj, FusedProjection)
    assert attention.qkv_proj.sizes == [128, 64, 64] and mlp.gate_up_proj.sizes == [192, 192]
    assert served.model.layers["1"].self_attn.qkv_proj is None  # the caller's model is not fused
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, want)  # the caller's model multiplies as before
    if weights == "int4":
        # The separate layers' kernel copies became rows of the fused one: no second copy of the weights.
        fused = attention.qkv_proj.product.packed
        parts = [served.model.layers["1"].self_attn.get_submodule(n).packed for n in ("q_proj", "k_proj", "v_proj")]
        assert {p.untyped_storage().data_ptr() for p in parts} == {fused.untyped_storage().data_ptr()}
        assert weight_bytes(served) == bytes_before
    unfused = with_packed_linears(served, fuse=False)
    assert unfused.model.layers["1"].self_attn.qkv_proj is None and unfused.model.layers["1"].mlp.gate_up_proj is None


def test_int4_projections_whose_rows_end_inside_a_kernel_block_stay_unfused():
    # The CPU int4 layout packs rows in blocks of 64: k/v of 32 rows cannot be rows of a fused copy.
    cfg = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=96)
    served = quantize_model(build_model(cfg), "int4")
    tokens = torch.randint(0, cfg.vocab_size, (1, 5))
    with torch.inference_mode():
        want = served(tokens)
        view = with_packed_linears(served)
        got = view(tokens)
    assert view.model.layers["0"].self_attn.qkv_proj is None
    assert isinstance(view.model.layers["0"].mlp.gate_up_proj, FusedProjection)  # 128 + 128 rows: whole blocks
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_auto_serves_the_format_the_model_holds_head_included(small_model):
    # A directory imported with int4 projections (its head float): "auto" keeps int4 and quantises the head
    # as weights = "int4" does (int8), instead of reading a float head every decode step.
    model, _ = small_model
    held = quantize_model(copy.deepcopy(model), "int4")
    held.lm_head = copy.deepcopy(model.lm_head)
    served = quantize_model(held, "auto")
    assert isinstance(served.model.layers["0"].self_attn.q_proj, Int4Linear)
    assert isinstance(served.lm_head, Int8Linear)
    plain = quantize_model(copy.deepcopy(model), "auto")  # float projections: left as they are
    assert type(plain.lm_head) is nn.Linear and type(plain.model.layers["0"].mlp.up_proj) is nn.Linear


def test_quantized_projections_hand_steps_of_many_rows_to_a_float_copy():
    torch.manual_seed(5)
    cfg = ModelConfig(dim=128, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=96)
    served = quantize_model(build_model(cfg), "int4")
    assert not any(isinstance(m, QuantizedOrDense) for m in with_packed_linears(served).modules())  # no copy
    view = with_packed_linears(served, dense_above_rows=4)
    attention = view.model.layers["0"].self_attn
    fused, o_proj, head = attention.qkv_proj.product, attention.o_proj, view.lm_head
    assert all(isinstance(m, QuantizedOrDense) for m in (fused, o_proj, head))
    reference = served.model.layers["0"].self_attn.o_proj.dequantized()
    with torch.inference_mode():
        for rows in (1, 4, 5, 40):
            x = torch.randn(1, rows, 128)
            got = o_proj(x)
            path = o_proj.quantized if rows <= 4 else o_proj.dense
            assert torch.equal(got, path(x)), rows
            # Either way the product of the same (dequantised) weights, to bf16 precision.
            assert relative_error(got, x @ reference.T) < 1e-2
        x = torch.randn(1, 9, 128)
        q, k, v = attention.qkv_proj(x)
        parts = [served.model.layers["0"].self_attn.get_submodule(n) for n in ("q_proj", "k_proj", "v_proj")]
        for got, part in zip((q, k, v), parts, strict=True):
            assert relative_error(got, x @ part.dequantized().T) < 1e-2
    prompts = [list(range(3, 20)), list(range(30, 36)), list(range(40, 52))]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    engine = LLMEngine(served, None, EngineConfig(num_blocks=32, block_size=4, dense_above_rows=2))
    outs = engine.generate(prompts, params)
    assert [len(o) for o in outs] == [6, 6, 6]


def test_the_float_copy_is_the_default_under_auto_only():
    from jijian.config.schema import ServeConfig
    from jijian.serve.server import AUTO_DENSE_ABOVE_ROWS, dense_above_rows

    cfg = ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_dim=128, vocab_size=64)
    int4, plain = quantize_model(build_model(cfg), "int4"), build_model(cfg)
    assert dense_above_rows(ServeConfig(), int4) == AUTO_DENSE_ABOVE_ROWS
    assert dense_above_rows(ServeConfig(), plain) == 0  # float projections: nothing to copy
    assert dense_above_rows(ServeConfig(weights="int4"), int4) == 0  # int4 asked for: the memory it saves
    assert dense_above_rows(ServeConfig(weights="int4", dense_above_rows=16), int4) == 16
