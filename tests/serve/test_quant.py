"""int8 weight-only quantisation: memory, closeness to fp32, and serving through the engine."""

from __future__ import annotations

import copy

import torch

from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.quant import Int8Linear, quantize_int8, weight_bytes
from jijian.serve.request import SamplingParams


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False)
    quantised = Int8Linear.from_linear(linear)
    assert quantised.weight.dtype == torch.int8 and quantised.scale.shape == (32,)
    x = torch.randn(5, 64)
    error = (quantised(x) - linear(x)).abs().max() / linear(x).abs().max()
    assert error < 0.02


def test_quantised_model_uses_under_55_percent_of_the_memory_and_mostly_agrees(small_model, prompts_of_lengths):
    model, _ = small_model
    int8 = quantize_int8(copy.deepcopy(model))
    assert weight_bytes(int8) <= 0.55 * weight_bytes(model)
    prompts = prompts_of_lengths([12, 30], model.cfg.vocab_size, 9)
    tokens = torch.tensor([prompts[1]])
    with torch.no_grad():
        full, quant = model(tokens), int8(tokens)
    assert (full.argmax(-1) == quant.argmax(-1)).float().mean() > 0.9
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outs = LLMEngine(int8, None, EngineConfig(num_blocks=64, block_size=4)).generate(prompts, params)
    assert [len(o) for o in outs] == [8, 8]
