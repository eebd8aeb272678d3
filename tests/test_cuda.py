"""Paths that only a CUDA machine runs (`scripts/gpu-check` runs them; skipped elsewhere)."""

from __future__ import annotations

import json

import pytest
import tomli_w
import torch

from jijian.config import DeployConfig, load_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu-check runs these)"),
]


def test_training_on_the_gpu_in_bf16_learns(tmp_path, tokenizer, stdlib_paths):
    from jijian.train.run import run_training

    tokenizer.save(tmp_path / "tokenizer")
    config = {
        "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 160, "vocab_size": 512},
        "tokenizer": {"path": str(tmp_path / "tokenizer")},
        "data": {"sources": [str(p) for p in stdlib_paths[:10]], "output_dir": str(tmp_path / "data")},
        "train": {"output_dir": str(tmp_path / "run"), "steps": 30, "warmup_steps": 2, "batch_size": 8,
                  "seq_len": 64, "lr": 3e-3, "log_every": 1, "device": "auto", "dtype": "bfloat16"},
    }  # fmt: skip
    path = tmp_path / "deploy.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    run = run_training(load_config(path))
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert records[0]["device"].startswith("cuda")
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 0.5


def test_the_engine_serves_on_the_gpu_in_bf16():
    from jijian.config import ModelConfig
    from jijian.model import build_model
    from jijian.serve.engine import EngineConfig, LLMEngine
    from jijian.serve.request import SamplingParams

    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=256)
    model = build_model(cfg).to("cuda", torch.bfloat16).eval()
    engine = LLMEngine(model, None, EngineConfig(num_blocks=64, block_size=16))
    assert engine.runner.cache.keys.device.type == "cuda" and engine.runner.cache.keys.dtype == torch.bfloat16
    outs = engine.generate([[1, 2, 3, 4], [5, 6, 7]], SamplingParams(max_tokens=8, ignore_eos=True))
    assert [len(o) for o in outs] == [8, 8]
    assert DeployConfig.model_validate({"serve": {"device": "cuda", "dtype": "bf16"}}).serve.device == "cuda"


@pytest.mark.parametrize("rows", [1, 16])
def test_int4_and_int8_kernels_on_the_gpu_match_the_dequantised_reference(rows):
    from jijian.model.quantized import Int4Linear, Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(1536, 576, bias=True)
    x = torch.randn(rows, 1536)
    layers = (Int8Linear.from_linear(linear), Int4Linear.from_linear(linear, 32), Int4Linear.from_linear(linear, 128))
    for layer in layers:
        reference = x @ layer.dequantized().T + linear.bias
        gpu = layer.to("cuda")  # the int4 weight is repacked into tinygemm's layout on the first call
        got = gpu(x.to("cuda", torch.bfloat16)).float().cpu()
        assert ((got - reference).abs().max() / reference.abs().max()).item() < 2e-2, type(layer).__name__


def test_the_engine_serves_int4_weights_on_the_gpu():
    from jijian.config import ModelConfig
    from jijian.model import build_model
    from jijian.serve.engine import EngineConfig, LLMEngine
    from jijian.serve.quant import quantize_model
    from jijian.serve.request import SamplingParams

    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=256)
    model = quantize_model(build_model(cfg).to("cuda", torch.bfloat16).eval(), "int4")
    assert type(model.model.layers["0"].mlp.up_proj).__name__ == "Int4Linear"
    outs = LLMEngine(model, None, EngineConfig(num_blocks=64, block_size=16)).generate(
        [[1, 2, 3, 4], [5, 6, 7]], SamplingParams(max_tokens=8, ignore_eos=True)
    )
    assert [len(o) for o in outs] == [8, 8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_replayed_as_cuda_graphs_gives_the_eager_engines_greedy_tokens(dtype):
    from jijian.config import ModelConfig
    from jijian.model import build_model
    from jijian.serve.engine import EngineConfig, LLMEngine
    from jijian.serve.request import SamplingParams

    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=256)
    model = build_model(cfg).to("cuda", dtype).eval()
    generator = torch.Generator().manual_seed(1)
    # Prompts crossing 16-token blocks at different steps; requests finish at different steps, so the
    # decode batch shrinks through several graph buckets (7 -> 8, then 4, 2, 1).
    prompts = [torch.randint(5, 512, (n,), generator=generator).tolist() for n in (1, 5, 23, 70, 3, 12, 40)]
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (40, 3, 17, 9, 33, 6, 21)]

    def engine(path: str) -> LLMEngine:
        return LLMEngine(model, None, EngineConfig(num_blocks=64, block_size=16, max_num_seqs=8,
                                                   compile_decode=path))  # fmt: skip

    graphs = engine("auto")
    decoder = graphs.runner.static_decoder
    assert decoder is not None and decoder.mode == "graphs" and len(decoder.graphs) > 1
    got = graphs.generate(prompts, params)
    assert decoder.replays >= 30 and decoder.replays == decoder.steps  # every decode step was a replay
    # The same padded shapes run eagerly: the same kernels, so the same tokens in any dtype.
    assert got == engine("static").generate(prompts, params)
    if dtype == torch.float32:  # the unpadded eager path multiplies other shapes: compare where rounding is tiny
        assert got == engine("off").generate(prompts, params)


def test_an_int8_lora_base_on_the_gpu_under_bf16_autocast_multiplies_and_back_propagates_by_its_dequantised_weight():
    from jijian.model.quantized import FrozenInt8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(1536, 576, bias=True)
    frozen = FrozenInt8Linear.from_linear(linear).requires_grad_(False).to("cuda")
    x = torch.randn(4, 9, 1536, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = frozen(x)
    upstream = torch.randn_like(out, dtype=torch.float32)
    (out.float() * upstream).sum().backward()
    x_ref = x.detach().cpu().requires_grad_()
    out_ref = torch.nn.functional.linear(x_ref, frozen.dequantized().cpu(), linear.bias.detach())
    (out_ref * upstream.cpu()).sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad is not None and x.grad.dtype == torch.float32
    for got, want in ((out.float().cpu(), out_ref), (x.grad.cpu(), x_ref.grad)):
        assert ((got - want).abs().max() / want.abs().max()).item() < 2e-2
