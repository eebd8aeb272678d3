"""The runner's decoder forward without module dispatch, and the CPU's traced decode steps: the modules' logits
bit for bit, and the modules' own calls under hooks."""

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
    slow.static_decoder.lean, slow.static_decoder.trace = None, False
    fast.static_decoder.trace_after = 2  # record a bucket on its second step, replay it from then on
    return fast, slow


@pytest.mark.parametrize("weights", ["fp32", "int4"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lean_forward_gives_the_modules_logits_bit_for_bit(variant, weights):
    torch.manual_seed(7)
    cfg = ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=96, **VARIANTS[variant])
    model = quantize_model(build_model(cfg), weights)
    fast, slow = runner_pair(model)
    prompts, tables = [list(range(3, 14)), list(range(20, 27))], [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    # A prefill of two prompts (the dynamic path), then two decode steps of both (the static path).
    got = fast.execute(prompts, [0, 0], tables, [1, 1])
    assert torch.equal(got, slow.execute(prompts, [0, 0], tables, [1, 1]))
    # Decode steps of both (the static path), fed their own greedy tokens, across block boundaries (block 4)
    # and from two requests to one; on the CPU the fast runner replays each bucket's traced step.
    tokens = [[int(t)] for t in got.argmax(-1)]
    for step in range(8):
        starts = [11 + step, 7 + step][: len(tokens)]
        got = fast.execute(tokens, starts, tables[: len(tokens)], [1] * len(tokens))
        assert torch.equal(got, slow.execute(tokens, starts, tables[: len(tokens)], [1] * len(tokens))), step
        tokens = [[int(t)] for t in got.argmax(-1)][: 2 if step < 3 else 1]
    assert fast.static_decoder is not None
    # int4 steps were traced (buckets (2, w) and (1, w)); oneDNN's packed fp32 weights cannot be, and run eagerly.
    assert len(fast.static_decoder.traced) >= 2 if weights == "int4" else not fast.static_decoder.trace


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
