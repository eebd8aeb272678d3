"""A load generator for any OpenAI-compatible server: sweeps concurrency, measures throughput and latency."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class RequestTiming:
    """One streamed request: time to first token, time per output token after it, tokens generated."""

    ttft: float
    tpot: float | None
    tokens: int


@dataclass
class LevelResult:
    """Aggregates at one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    wall_s: float
    output_tokens: int
    ttft: list[float]
    tpot: list[float]

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time."""
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


async def _one(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, headers: dict
) -> RequestTiming:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    began = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {(await reply.aread())[:200]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    tpot = (end - first) / (tokens - 1) if tokens > 1 else None
    return RequestTiming(ttft=first - began, tpot=tpot, tokens=tokens)


async def run_level(
    url: str, model: str, prompts: Sequence[str], concurrency: int, max_tokens: int, api_key: str | None = None
) -> LevelResult:
    """Send every prompt, at most `concurrency` at a time, and aggregate the timings."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    semaphore = asyncio.Semaphore(concurrency)
    timings: list[RequestTiming] = []
    errors = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(None)) as client:

        async def worker(prompt: str) -> None:
            nonlocal errors
            async with semaphore:
                try:
                    timings.append(await _one(client, url, model, prompt, max_tokens, headers))
                except (httpx.HTTPError, RuntimeError):
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(p) for p in prompts))
        wall = time.perf_counter() - began
    return LevelResult(
        concurrency=concurrency,
        requests=len(prompts),
        errors=errors,
        wall_s=wall,
        output_tokens=sum(t.tokens for t in timings),
        ttft=[t.ttft for t in timings],
        tpot=[t.tpot for t in timings if t.tpot is not None],
    )


def sweep(
    url: str, model: str, prompts: Sequence[str], levels: Sequence[int], max_tokens: int, api_key: str | None = None
) -> list[LevelResult]:
    """run_level at each concurrency, one after another."""
    return [asyncio.run(run_level(url, model, prompts, c, max_tokens, api_key)) for c in levels]


def plot(results: Sequence[LevelResult], path: str | Path) -> Path:
    """PNG with throughput and p50/p90 latencies against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r.concurrency for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(levels, [r.tokens_per_s for r in results], marker="o")
    left.set(xlabel="concurrency", ylabel="output tokens/s", title="throughput")
    for q in (50, 90):
        right.plot(levels, [percentile(r.ttft, q) * 1000 for r in results], marker="o", label=f"TTFT p{q}")
        right.plot(levels, [percentile(r.tpot, q) * 1000 for r in results], marker="s", label=f"TPOT p{q}")
    right.set(xlabel="concurrency", ylabel="ms", title="latency")
    right.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
