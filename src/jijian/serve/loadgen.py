"""A load generator for any OpenAI-compatible server: replays a workload at several concurrencies, measures
throughput, time to first token (TTFT) and time per output token (TPOT) from the stream.

Output tokens come from the stream's `usage` when the server sends it (jijian, vLLM); a server that
sends none (llama.cpp's) is measured by tokenising the streamed text with the model's tokenizer when
one is given, else by counting the chunks that carried text. Each request records which way it counted.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from jijian.config import UserInputError

# Bounds of a workload file: a replay must not exhaust the load tester's memory before the server's.
MAX_WORKLOAD_BYTES = 256 * 2**20
MAX_WORKLOAD_REQUESTS = 100_000
MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 1024
MAX_OUTPUT_TOKENS = 2**20
MESSAGE_ROLES = ("system", "user", "assistant", "tool", "developer")
WORKLOAD_FIELDS = ("prompt", "messages", "max_tokens")
MAX_ERRORS_KEPT = 5

CountedBy = Literal["usage", "tokenizer", "chunks"]


class WorkloadError(UserInputError):
    """A workload file that cannot be replayed; the message names the file and line."""


class TokenCounter(Protocol):
    """Anything with `encode(text) -> token ids` (jijian's Tokenizer, a `tokenizers.Tokenizer` wrapper)."""

    def encode(self, text: str) -> Sequence[int]: ...


@dataclass(frozen=True)
class WorkloadRequest:
    """One request of a workload: a completion `prompt` or chat `messages`, and the output tokens it asks for."""

    max_tokens: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None

    def endpoint(self) -> str:
        """The API path this request goes to."""
        return "/v1/chat/completions" if self.messages is not None else "/v1/completions"

    def body(self, model: str) -> dict[str, Any]:
        """The request body (greedy, streamed), without server-specific extras."""
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "temperature": 0, "stream": True}
        if self.messages is not None:
            body["messages"] = [{"role": role, "content": content} for role, content in self.messages]
        else:
            body["prompt"] = self.prompt
        return body


@dataclass
class RequestTiming:
    """One streamed request: time to first token, time per output token after it, tokens and how they were counted."""

    ttft: float
    tpot: float | None
    tokens: int
    counted_by: CountedBy = "usage"


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
    counted_by: Counter[str] = field(default_factory=Counter)
    error_messages: list[str] = field(default_factory=list)

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


def counting_summary(results: Sequence[LevelResult]) -> str:
    """How the output tokens were counted across `results`, e.g. 'tokenizer (server sent no usage): 64 requests'."""
    totals: Counter[str] = Counter()
    for result in results:
        totals.update(result.counted_by)
    if not totals:
        return "no request completed"
    why = {
        "usage": "the server's usage",
        "tokenizer": "tokenising the streamed text (server sent no usage)",
        "chunks": "counting streamed chunks with text (server sent no usage, no --tokenizer)",
    }
    return "; ".join(f"{why[way]}: {n} requests" for way, n in sorted(totals.items()))


# --- workloads ------------------------------------------------------------------------------------


def synthetic_workload(requests: int, max_tokens: int, prompt_words: tuple[int, int]) -> list[WorkloadRequest]:
    """`requests` completion prompts of varied length (between the word bounds), each asking `max_tokens`."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "the",
        "server",
        "keeps",
        "every",
        "request",
        "moving",
    ]
    low, high = prompt_words
    return [
        WorkloadRequest(
            max_tokens=max_tokens,
            prompt=" ".join(words[(i + j) % len(words)] for j in range(low + (i * 37) % (high - low + 1))),
        )
        for i in range(requests)
    ]


def _parse_messages(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MESSAGES:
        raise WorkloadError(f"{where}: messages must be a list of 1 to {MAX_MESSAGES} {{role, content}} objects")
    messages = []
    chars = 0
    for index, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise WorkloadError(f"{where}: messages[{index}] must be an object with exactly 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in MESSAGE_ROLES:
            raise WorkloadError(f"{where}: messages[{index}].role must be one of {', '.join(MESSAGE_ROLES)}")
        if not isinstance(content, str):
            raise WorkloadError(f"{where}: messages[{index}].content must be a string")
        chars += len(content)
        messages.append((role, content))
    if chars > MAX_PROMPT_CHARS:
        raise WorkloadError(f"{where}: messages have {chars} characters, more than {MAX_PROMPT_CHARS}")
    return tuple(messages)


def parse_workload_line(line: str, where: str, default_max_tokens: int | None) -> WorkloadRequest:
    """One JSONL line: {"prompt": str} or {"messages": [...]}, with "max_tokens" (or the default)."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict):
        raise WorkloadError(f"{where}: each line must be a JSON object with 'prompt' or 'messages'")
    unknown = sorted(set(item) - set(WORKLOAD_FIELDS))
    if unknown:
        raise WorkloadError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(WORKLOAD_FIELDS)})")
    if ("prompt" in item) == ("messages" in item):
        raise WorkloadError(f"{where}: give exactly one of 'prompt' (completions) or 'messages' (chat)")
    max_tokens = item.get("max_tokens", default_max_tokens)
    if max_tokens is None:
        raise WorkloadError(f"{where}: max_tokens is missing and no default was given")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_OUTPUT_TOKENS:
        raise WorkloadError(f"{where}: max_tokens must be an integer from 1 to {MAX_OUTPUT_TOKENS}")
    if "prompt" in item:
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
            raise WorkloadError(f"{where}: prompt must be a string of 1 to {MAX_PROMPT_CHARS} characters")
        return WorkloadRequest(max_tokens=max_tokens, prompt=prompt)
    return WorkloadRequest(max_tokens=max_tokens, messages=_parse_messages(item["messages"], where))


def load_workload(path: str | Path, default_max_tokens: int | None = None) -> list[WorkloadRequest]:
    """Read a JSONL workload (one request per line; blank lines skipped); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    size = path.stat().st_size
    if size > MAX_WORKLOAD_BYTES:
        raise WorkloadError(f"{path}: {size} bytes, more than the {MAX_WORKLOAD_BYTES} a workload may have")
    requests: list[WorkloadRequest] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise WorkloadError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            if len(requests) == MAX_WORKLOAD_REQUESTS:
                raise WorkloadError(f"{path}:{number}: more than {MAX_WORKLOAD_REQUESTS} requests")
            requests.append(parse_workload_line(line, f"{path}:{number}", default_max_tokens))
    if not requests:
        raise WorkloadError(f"{path}: the workload has no requests")
    return requests


def load_tokenizer(path: str | Path) -> TokenCounter:
    """The tokenizer that counts streamed text: a tokenizer.json, a model directory, or a deploy.toml's served model."""
    from jijian.model.tokenizer import Tokenizer

    path = Path(path)
    if path.suffix == ".toml":
        from jijian.config import load_config

        serve = load_config(path).serve
        if serve.model_path is not None:
            return Tokenizer.load(serve.model_path)
        from jijian.model.gguf import smollm2_model_dir

        return Tokenizer.load(smollm2_model_dir(serve.model_cache_dir))
    return Tokenizer.load(path)


# --- one request ----------------------------------------------------------------------------------


def _chunk_text(chunk: Mapping[str, Any]) -> str:
    """The generated text one streamed chunk carries (completions' `text` or chat's `delta.content`)."""
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return ""
    choice = choices[0]
    if "delta" in choice:
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def _usage_tokens(chunk: Mapping[str, Any]) -> int | None:
    usage = chunk.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
    return tokens if isinstance(tokens, int) else None


async def one_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    request: WorkloadRequest,
    headers: Mapping[str, str],
    tokenizer: TokenCounter | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> RequestTiming:
    """Send one streamed request and time it; tokens from `usage`, else the tokenizer, else text chunks."""
    body = {**request.body(model), **(extra_body or {})}
    began = time.perf_counter()
    first: float | None = None
    last: float | None = None
    usage: int | None = None
    chunks_with_text = 0
    pieces: list[str] = []
    async with client.stream("POST", url + request.endpoint(), json=body, headers=dict(headers)) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {(await reply.aread())[:200]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except json.JSONDecodeError:
                raise RuntimeError(f"the stream sent a chunk that is not JSON: {payload[:100]!r}") from None
            if not isinstance(chunk, dict):
                raise RuntimeError(f"the stream sent a chunk that is not a JSON object: {payload[:100]!r}")
            if "error" in chunk:
                error = chunk["error"]
                raise RuntimeError(str(error.get("message", error) if isinstance(error, dict) else error))
            text = _chunk_text(chunk)
            if text:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                chunks_with_text += 1
                pieces.append(text)
            reported = _usage_tokens(chunk)
            usage = reported if reported is not None else usage
    end = time.perf_counter()
    counted_by: CountedBy
    if usage is not None:
        tokens, counted_by = usage, "usage"
    elif tokenizer is not None:
        tokens, counted_by = len(tokenizer.encode("".join(pieces))), "tokenizer"
    else:
        tokens, counted_by = chunks_with_text, "chunks"
    first = first if first is not None else end
    last = last if last is not None else end
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return RequestTiming(ttft=first - began, tpot=tpot, tokens=tokens, counted_by=counted_by)


# --- levels and sweeps ----------------------------------------------------------------------------


async def run_level(
    url: str,
    model: str,
    workload: Sequence[WorkloadRequest],
    concurrency: int,
    api_key: str | None = None,
    tokenizer: TokenCounter | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> LevelResult:
    """Send every request of the workload, at most `concurrency` at a time, and aggregate the timings."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    semaphore = asyncio.Semaphore(concurrency)
    timings: list[RequestTiming] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:

        async def worker(request: WorkloadRequest) -> None:
            async with semaphore:
                try:
                    timings.append(await one_request(client, url, model, request, headers, tokenizer, extra_body))
                except (httpx.HTTPError, RuntimeError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        began = time.perf_counter()
        await asyncio.gather(*(worker(r) for r in workload))
        wall = time.perf_counter() - began
    return LevelResult(
        concurrency=concurrency,
        requests=len(workload),
        errors=len(errors),
        wall_s=wall,
        output_tokens=sum(t.tokens for t in timings),
        ttft=[t.ttft for t in timings],
        tpot=[t.tpot for t in timings if t.tpot is not None],
        counted_by=Counter(t.counted_by for t in timings),
        error_messages=errors[:MAX_ERRORS_KEPT],
    )


def sweep(
    url: str,
    model: str,
    workload: Sequence[WorkloadRequest],
    levels: Sequence[int],
    api_key: str | None = None,
    tokenizer: TokenCounter | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> list[LevelResult]:
    """run_level at each concurrency, one after another, replaying the same workload."""
    return [asyncio.run(run_level(url, model, workload, c, api_key, tokenizer, extra_body)) for c in levels]


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
