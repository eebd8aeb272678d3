"""The runner's decoder forward without module dispatch: the modules' logits bit for bit, and off under hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jijian.config import ModelConfig
from jijian.model.llama import build_model
from jijian.serve.lean_forward import lean_forward
from jijian.serve.quant import quantize_model
from jijian.serve.runner import ModelRunner

VARIANTS = {
    "llama": {},
    "qwen2-bias-window": {"attention_bias": True, "sliding_window": 6},
    "qwen3-qk-norm-tied": {"qk_norm": True, "tie_embeddings": True},
}


def runner_pair(model: nn.Module) -> tuple[ModelRunner, ModelRunner]:
    """Two runners over `model`: one with the lean forward, one made to call the modules."""
    fast = ModelRunner(model, 16, 4, decode="auto", max_num_seqs=4)
    slow = ModelRunner(model, 16, 4, decode="auto", max_num_seqs=4)
    assert fast.lean is not None and fast.static_decoder is not None and fast.static_decoder.lean is not None
    slow.lean = None
    assert slow.static_decoder is not None
    slow.static_decoder.lean = None
    return fast, slow


@pytest.mark.parametrize("weights", ["fp32", "int4"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lean_forward_gives_the_modules_logits_bit_for_bit(variant, weights):
    torch.manual_seed(7)
    cfg = ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=96, **VARIANTS[variant])
    model = quantize_model(build_model(cfg), weights)
    fast, slow = runner_pair(model)
    prompts, tables = [list(range(3, 14)), list(range(20, 27))], [[0, 1, 2, 3], [4, 5, 6, 7]]
    # A prefill of two prompts (the dynamic path), then two decode steps of both (the static path).
    step = ([*prompts], [0, 0], [1, 1])
    for tokens, starts, counts in [step, ([[5], [9]], [11, 7], [1, 1]), ([[6], [10]], [12, 8], [1, 1])]:
        got = fast.execute(tokens, starts, tables, counts)
        want = slow.execute(tokens, starts, tables, counts)
        assert torch.equal(got, want)


def test_hooks_keep_the_modules_calls():
    model = build_model(ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_dim=128, vocab_size=64))
    assert lean_forward(model) is not None
    handle = model.model.layers["0"].mlp.register_forward_hook(lambda module, args, out: out)
    assert lean_forward(model) is None  # a LoRA adapter's hook, say, would be skipped
    handle.remove()
    runner = ModelRunner(model, 8, 4, decode="off")
    assert runner.lean is not None
    calls = []
    global_hook = nn.modules.module.register_module_forward_hook(lambda module, args, out: calls.append(module))
    try:
        runner.execute([[1, 2, 3]], [0], [[0]], [1])
    finally:
        global_hook.remove()
    assert calls  # registered after the runner was built, and still run
