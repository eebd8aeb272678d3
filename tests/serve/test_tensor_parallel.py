"""Serving on a device and dtype of choice, and tensor-parallel serving over 2 processes (gloo on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from jijian.config import DeployConfig, ModelConfig
from jijian.model import build_model
from jijian.model.device import DeviceError
from jijian.model.gguf import smollm2_gguf_path
from jijian.model.hf import load_hf, save_hf
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams
from jijian.serve.server import load_model
from jijian.serve.tensor_parallel import (
    TensorParallelError,
    even_split,
    load_shard,
    shard_model,
    start_tensor_parallel,
)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    from typer.testing import CliRunner

    from jijian.cli.main import app

    directory = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    result = CliRunner().invoke(app, ["model", "import-gguf", str(smollm2_gguf_path()), "--to", str(directory)])
    assert result.exit_code == 0, result.output
    return directory


def serve_config(model_dir, **serve) -> DeployConfig:
    return DeployConfig.model_validate({"serve": {"model_path": str(model_dir), "device": "cpu", **serve}})


def test_heads_and_ffn_rows_are_dealt_as_evenly_as_possible():
    assert even_split(3, 2) == [(0, 2), (2, 3)]
    assert even_split(1536, 2) == [(0, 768), (768, 1536)]
    assert even_split(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_tensor_parallel_wider_than_the_kv_heads_names_the_field():
    cfg = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=64)
    with torch.device("meta"):
        model = build_model(cfg)
    with pytest.raises(TensorParallelError, match=r"serve\.tensor_parallel = 4 exceeds the model's 2 key/value heads"):
        shard_model(model, 0, 4)


@pytest.mark.parametrize(
    "shape",
    [
        {"architecture": "qwen2", "attention_bias": True, "tie_embeddings": True},  # biases split with their rows
        {"architecture": "llama"},
    ],
)
def test_a_rank_reads_exactly_its_shard_from_the_files(tmp_path, shape):
    # 3 KV heads over 2 ranks (2 + 1) and FFN rows 96 = 48 + 48; several safetensors files (an index).
    cfg = ModelConfig(dim=96, n_layers=2, n_heads=6, n_kv_heads=3, ffn_dim=96, vocab_size=80, **shape)
    torch.manual_seed(0)
    full = build_model(cfg).eval()
    save_hf(full, None, tmp_path / "model", max_shard_bytes=40_000)
    assert (tmp_path / "model" / "model.safetensors.index.json").is_file()
    for rank in range(2):
        expected = shard_model(load_hf(tmp_path / "model")[0], rank, 2).state_dict()
        got = load_shard(tmp_path / "model", rank, 2, torch.float32).state_dict()
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), name


@pytest.mark.model
@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the error of a machine without accelerator")
def test_a_missing_accelerator_or_an_impossible_dtype_names_the_field(smollm2_dir):
    with pytest.raises(DeviceError, match=r"serve\.device = 'cuda' but this machine has no accelerator"):
        load_model(serve_config(smollm2_dir, device="cuda"))
    with pytest.raises(DeviceError, match=r"serve\.dtype = 'fp16' but the CPU cannot run it"):
        load_model(serve_config(smollm2_dir, dtype="fp16"))


@pytest.mark.multiprocess
@pytest.mark.model
def test_two_rank_tensor_parallel_greedy_equals_one_rank_on_smollm2(smollm2_dir):
    config = serve_config(smollm2_dir, tensor_parallel=2)
    model, tokenizer, _ = load_model(serve_config(smollm2_dir))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template(question)),
        tokenizer.encode("def fibonacci(n):\n"),
        tokenizer.encode("上海是"),
    ]
    params = SamplingParams(max_tokens=12)
    expected = LLMEngine(model, tokenizer, EngineConfig(num_blocks=64, block_size=16)).generate(prompts, params)

    split, _, _ = load_model(config)
    runner = start_tensor_parallel(config, split, num_blocks=64)
    try:
        # SmolLM2 has 3 KV heads and 9 query heads: rank 0 keeps 2 KV heads (6 query heads), rank 1 one (3).
        assert runner.cache.keys.shape[1] == 2
        engine = LLMEngine(split, tokenizer, EngineConfig(num_blocks=64, block_size=16), runner=runner)
        got = engine.generate(prompts, params)
    finally:
        runner.close()
    assert not dist.is_initialized()
    assert got == expected
    assert tokenizer.decode(got[0]).startswith("The capital of France is Paris")


@pytest.mark.model
def test_the_engine_serves_bf16_weights_with_a_bf16_kv_cache(smollm2_dir):
    fp32, tokenizer = load_hf(smollm2_dir)
    bf16, _, _ = load_model(serve_config(smollm2_dir, dtype="bf16"))
    assert next(bf16.parameters()).dtype == torch.bfloat16
    engine = LLMEngine(bf16, tokenizer, EngineConfig(num_blocks=32, block_size=16))
    assert engine.runner.cache.keys.dtype == torch.bfloat16
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}]))
    # The bf16 runner's logits track fp32's closely, and decoding through the paged bf16 cache completes.
    reference = LLMEngine(fp32, tokenizer, EngineConfig(num_blocks=32, block_size=16))
    logits_bf16 = engine.runner.execute([prompt], [0], [list(range(len(prompt) // 16 + 1))], [1])
    logits_fp32 = reference.runner.execute([prompt], [0], [list(range(len(prompt) // 16 + 1))], [1])
    cosine = torch.nn.functional.cosine_similarity(logits_bf16, logits_fp32).item()
    assert cosine > 0.99, cosine
    out = engine.generate([prompt], SamplingParams(max_tokens=8))[0]
    assert len(out) >= 1 and all(0 <= t < bf16.cfg.vocab_size for t in out)
