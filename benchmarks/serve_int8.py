"""int8 weight-only quantisation of SmolLM2-135M-Instruct: weight memory, greedy agreement, perplexity vs fp32.

Held text: standard-library files that no other benchmark or test trains on (teacher-forced
perplexity over `--tokens` tokens in windows of 512), plus greedy generation from chat prompts.
No competitor: the comparison is fp32 against int8 of the same weights.

    .venv/bin/python benchmarks/serve_int8.py --quick   # 1024 tokens, 2 prompts x 24 tokens
    .venv/bin/python benchmarks/serve_int8.py           # 4096 tokens, 4 prompts x 48 tokens

RESULT lines: `serve_int8_weight_memory_reduction_pct` (target >= 45), and for information the
perplexity ratio int8/fp32 (target <= 1.05) and greedy token agreement (target >= 0.8).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sysconfig
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from jijian.model.gguf import smollm2_model_dir
from jijian.model.hf import load_hf
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.quant import quantize_int8, weight_bytes
from jijian.serve.request import SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Explain what a Python list comprehension is.",
    "Give three tips for writing clear code.",
    "What does HTTP status 429 mean?",
]


@torch.inference_mode()
def perplexity(model, ids: list[int], window: int = 512) -> float:
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window + 1]])
        logits = model(chunk[:, :-1])
        nll += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


def result(name: str, value: float, op: str, threshold: float) -> None:
    ok = value >= threshold if op == ">=" else value <= threshold
    print(f"RESULT {name} {value:.3f} target {op} {threshold} {'PASS' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jijian-bench-models"))
    args = parser.parse_args()
    n_tokens, n_prompts, n_new = (1024, 2, 24) if args.quick else (4096, 4, 48)

    fp32, tokenizer = load_hf(smollm2_model_dir(args.cache))
    int8 = quantize_int8(copy.deepcopy(fp32))
    before, after = weight_bytes(fp32), weight_bytes(int8)
    print(f"weights: fp32 {before / 2**20:.1f} MiB, int8 {after / 2**20:.1f} MiB")

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[-30:]  # the tests use the first 40
    ids = tokenizer.encode("".join(f.read_text(errors="replace") for f in files))[:n_tokens]
    ppl_fp32, ppl_int8 = perplexity(fp32, ids), perplexity(int8, ids)
    print(f"perplexity on {len(ids)} held tokens: fp32 {ppl_fp32:.3f}, int8 {ppl_int8:.3f}")

    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    params = SamplingParams(max_tokens=n_new, ignore_eos=True)
    config = EngineConfig(num_blocks=64, block_size=16)
    out_fp32 = LLMEngine(fp32, tokenizer, config).generate(prompts[:n_prompts], params)
    out_int8 = LLMEngine(int8, tokenizer, config).generate(prompts[:n_prompts], params)
    same = sum(a == b for x, y in zip(out_fp32, out_int8, strict=True) for a, b in zip(x, y, strict=True))
    # Agreement until the first divergence (later tokens continue different texts).
    prefix = 0
    for x, y in zip(out_fp32, out_int8, strict=True):
        prefix += next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(x))
    total = sum(len(x) for x in out_fp32)
    for x, y in zip(out_fp32, out_int8, strict=True):
        print(f"fp32: {tokenizer.decode(x)!r}\nint8: {tokenizer.decode(y)!r}")
    print(f"greedy tokens equal position by position: {same}/{total}; identical prefix: {prefix}/{total}")
    result("serve_int8_weight_memory_reduction_pct", 100 * (1 - after / before), ">=", 45)
    result("serve_int8_perplexity_ratio", ppl_int8 / ppl_fp32, "<=", 1.05)
    result("serve_int8_greedy_agreement", same / total, ">=", 0.8)


if __name__ == "__main__":
    main()
