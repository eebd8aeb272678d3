"""Weight formats of SmolLM2-135M-Instruct side by side: fp32 against bf16, int8 and int4 weight-only.

For each `[serve] weights` format: weight memory, perplexity on held-out text (teacher-forced, windows
of 512 tokens, through the model's own forward: the same quantised kernels the server's prefill uses),
greedy agreement with fp32 on a fixed set of chat prompts (through the serving engine), and
single-stream speed through the engine: time to first token of a ~100-token prompt and decode
tokens/s of one request, one after another on this machine.

Held-out text: the standard library's last 30 modules (alphabetically), which no test trains on or
reads (the tests use the first 40). No other competitor: each format is compared with fp32 of the same
weights; `benchmarks/serve_vs_llamacpp.py` compares the server with llama.cpp.

    .venv/bin/python benchmarks/serve_quant.py --quick   # 1024 tokens, 4 prompts x 24 tokens, 32 decoded
    .venv/bin/python benchmarks/serve_quant.py           # 4096 tokens, 8 prompts x 48 tokens, 128 decoded

Two int4 rows: "int4" requantises the fp32 weights group-wise (the path of any float model; for SmolLM2
it rounds weights that the GGUF's Q4_1 had rounded already), "int4-gguf" keeps the GGUF's own Q4_1
codes (`jijian model import-gguf --weights int4`, what `jijian serve` does for SmolLM2 with int4).

RESULT lines: perplexity ratio to fp32 (int8 <= 1.02, int4 <= 1.10), greedy agreement with fp32
(tokens equal position by position, so one early divergence costs the rest of the answer: int8 >= 0.7,
int4 >= 0.5), decode speed-up over fp32, and the int4 weight-memory reduction.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from jijian.model.gguf import smollm2_model_dir
from jijian.model.hf import load_hf
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.quant import quantize_model, weight_bytes
from jijian.serve.request import SamplingParams

# "int4-gguf": the GGUF's own Q4_1 codes (`import-gguf --weights int4`), what `jijian serve` uses for SmolLM2;
# "int4": the general path, fp32 weights requantised group-wise (here on top of the Q4_1 rounding).
FORMATS = ("fp32", "bf16", "int8", "int4", "int4-gguf")
QUESTIONS = [
    "What is the capital of France?",
    "Explain what a Python list comprehension is.",
    "Give three tips for writing clear code.",
    "What does HTTP status 429 mean?",
    "Write a haiku about the sea.",
    "How do I reverse a string in Python?",
    "请用一句话介绍长城。",
    "What is the difference between TCP and UDP?",
]


def held_out_ids(tokenizer, n_tokens: int) -> list[int]:
    """The first `n_tokens` tokens of the standard library's last 30 modules (the tests read the first 40)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[-30:]
    return tokenizer.encode("".join(f.read_text(errors="replace") for f in files))[:n_tokens]


@torch.inference_mode()
def perplexity(model, ids: list[int], window: int = 512) -> float:
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window + 1]])
        logits = model(chunk[:, :-1])
        nll += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


def agreement(reference: list[list[int]], outputs: list[list[int]]) -> tuple[float, float]:
    """(tokens equal position by position, tokens before the first divergence) as fractions of all tokens."""
    total = sum(len(x) for x in reference)
    same = sum(a == b for x, y in zip(reference, outputs, strict=True) for a, b in zip(x, y, strict=False))
    prefix = 0
    for x, y in zip(reference, outputs, strict=True):
        prefix += next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), min(len(x), len(y)))
    return same / total, prefix / total


def single_stream(engine: LLMEngine, prompt: list[int], n_new: int, repeats: int) -> tuple[float, float]:
    """(best time to first token in s, best decode tokens/s) of one request at a time."""
    first = SamplingParams(max_tokens=1, ignore_eos=True)
    full = SamplingParams(max_tokens=n_new, ignore_eos=True)
    engine.generate([prompt], full)  # warm-up
    ttft, decode = math.inf, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        engine.generate([prompt], first)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        engine.generate([prompt], full)
        elapsed = time.perf_counter() - start
        ttft = min(ttft, prefill)
        decode = max(decode, (n_new - 1) / max(1e-9, elapsed - prefill))
    return ttft, decode


def result(name: str, value: float, op: str, threshold: float) -> None:
    ok = value >= threshold if op == ">=" else value <= threshold
    print(f"RESULT {name} {value:.3f} target {op} {threshold} {'PASS' if ok else 'FAIL'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jijian-bench-models"))
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size ([serve] int4_group_size)")
    args = parser.parse_args()
    n_tokens, n_prompts, n_new, n_decode, repeats = (1024, 4, 24, 32, 2) if args.quick else (4096, 8, 48, 128, 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    fp32, tokenizer = load_hf(smollm2_model_dir(args.cache))
    ids = held_out_ids(tokenizer, n_tokens)
    chats = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    long_prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": " ".join(QUESTIONS)}]))
    params = SamplingParams(max_tokens=n_new, ignore_eos=True)
    config = EngineConfig(num_blocks=128, block_size=16)

    rows = {}
    for weights in FORMATS:  # one copy at a time: the machine may be short of memory
        if weights == "int4-gguf":
            model = quantize_model(load_hf(smollm2_model_dir(args.cache, "int4"))[0], "int4")
        else:
            model = quantize_model(copy.deepcopy(fp32), weights, group_size=args.group_size)
        ppl = perplexity(model, ids)
        engine = LLMEngine(model, tokenizer, config)
        outputs = engine.generate(chats[:n_prompts], params)
        ttft, tok_s = single_stream(engine, long_prompt, n_decode, repeats)
        rows[weights] = {"ppl": ppl, "outputs": outputs, "ttft": ttft, "tok_s": tok_s, "bytes": weight_bytes(model)}
        print(
            f"{weights:>9}: weights {weight_bytes(model) / 2**20:6.1f} MiB  perplexity {ppl:7.3f}  "
            f"TTFT ({len(long_prompt)}-token prompt) {ttft * 1000:6.1f} ms  decode {tok_s:5.1f} tok/s",
            flush=True,
        )
        del engine, model

    base = rows["fp32"]
    print(f"\nperplexity over {len(ids)} held-out tokens; greedy: {n_prompts} chat prompts x {n_new} tokens")
    print(
        "| weights | MiB | perplexity | ratio | greedy equal | identical prefix | TTFT ms | decode tok/s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for weights, row in rows.items():
        same, prefix = agreement(base["outputs"], row["outputs"])
        row["same"] = same
        print(
            f"| {weights} | {row['bytes'] / 2**20:.1f} | {row['ppl']:.3f} | {row['ppl'] / base['ppl']:.4f} | "
            f"{same:.3f} | {prefix:.3f} | {row['ttft'] * 1000:.1f} | {row['tok_s']:.1f} | "
            f"{row['tok_s'] / base['tok_s']:.2f} |"
        )
    for i, prompt in enumerate(QUESTIONS[:n_prompts]):
        print(prompt)
        for weights in ("fp32", "int4", "int4-gguf"):
            print(f"  {weights:>9}: {tokenizer.decode(rows[weights]['outputs'][i])!r}")
    result("serve_int8_perplexity_ratio", rows["int8"]["ppl"] / base["ppl"], "<=", 1.02)
    result("serve_int4_perplexity_ratio", rows["int4"]["ppl"] / base["ppl"], "<=", 1.10)
    result("serve_int4_gguf_perplexity_ratio", rows["int4-gguf"]["ppl"] / base["ppl"], "<=", 1.10)
    result("serve_int8_greedy_agreement", rows["int8"]["same"], ">=", 0.7)
    result("serve_int4_greedy_agreement", rows["int4"]["same"], ">=", 0.5)
    result("serve_int4_gguf_greedy_agreement", rows["int4-gguf"]["same"], ">=", 0.5)
    result("serve_int8_decode_speedup_vs_fp32", rows["int8"]["tok_s"] / base["tok_s"], ">=", 1.0)
    result("serve_int4_decode_speedup_vs_fp32", rows["int4"]["tok_s"] / base["tok_s"], ">=", 1.0)
    result("serve_int4_weight_memory_reduction_pct", 100 * (1 - rows["int4"]["bytes"] / base["bytes"]), ">=", 45)


if __name__ == "__main__":
    main()
