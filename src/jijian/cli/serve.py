"""`jijian serve deploy.toml` runs the inference server; `jijian serve bench` loads any such server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from jijian.cli.common import err_console, fail, reports_errors


class _ServeGroup(TyperGroup):
    """`serve <config>` runs the hidden `run` command; `serve bench ...` the sub-command."""

    # Any for click's Context and Command: recent typer releases bundle their own click (typer._click), older
    # ones use the click package, and pyproject allows both (typer>=0.12).
    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


serve_app = typer.Typer(
    cls=_ServeGroup,
    help="Serve a model over an OpenAI-compatible HTTP API (jijian serve deploy.toml), or load-test one.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
model_app = typer.Typer(
    help="Convert models into the Hugging Face format jijian serves.", no_args_is_help=True, rich_markup_mode=None
)


@serve_app.command("run", hidden=True)
@reports_errors
def serve_run(config: Annotated[Path, typer.Argument(help="deploy.toml with a [serve] section")]) -> None:
    """Start the server described by [serve] (and [hardware] for cost metrics)."""
    # PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set before its first
    # such allocation: a decode step streams every weight from memory, and 4 KB pages cost it a TLB miss per
    # page (measured: SmolLM2 int4 decode step 22.2 -> 20.9 ms on one thread). THP_MEM_ALLOC_ENABLE=0 turns it off.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from jijian.config import load_config
    from jijian.serve.server import run_server

    run_server(load_config(config))


@serve_app.command("bench")
@reports_errors
def serve_bench(
    url: Annotated[str, typer.Option(help="base URL of the server")] = "http://127.0.0.1:8000",
    model: Annotated[str | None, typer.Option(help="model name; default: the server's first")] = None,
    concurrency: Annotated[str, typer.Option(help="comma-separated concurrency levels")] = "1,4,16",
    workload: Annotated[
        Path | None,
        typer.Option(
            help='JSONL of requests to replay at every level: {"prompt": ...} or {"messages": [...]}, '
            'optional "max_tokens"; default: synthetic completion prompts'
        ),
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="requests per level (default 32; with --workload: the whole file, cycled)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="output tokens per request (a workload line may set its own)")] = 64,
    prompt_words: Annotated[str, typer.Option(help="min,max words per synthetic prompt (varied)")] = "8,128",
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="tokenizer.json, model directory or deploy.toml whose model counts the streamed text when the "
            "server sends no usage (else chunks with text are counted)"
        ),
    ] = None,
    ignore_eos: Annotated[
        bool, typer.Option(help="ask the server to generate exactly max_tokens (vLLM's and jijian's ignore_eos)")
    ] = True,
    api_key: Annotated[str | None, typer.Option(help="Bearer key, if the server needs one")] = None,
    plot_path: Annotated[Path, typer.Option("--plot", help="PNG to write")] = Path("serve_bench.png"),
) -> None:
    """Replay a workload at each concurrency; print throughput, TTFT/TPOT percentiles, how tokens were counted; plot."""
    import httpx

    from jijian.serve.loadgen import counting_summary, load_tokenizer, load_workload, percentile, plot, sweep
    from jijian.serve.loadgen import synthetic_workload as synthetic

    try:
        levels = [int(c) for c in concurrency.split(",")]
        low, high = (int(w) for w in prompt_words.split(","))
        if min(levels) < 1 or (requests is not None and requests < 1) or max_tokens < 1 or not 1 <= low <= high:
            raise ValueError
    except ValueError:
        raise fail(
            "--concurrency must be positive integers, --requests and --max-tokens positive, "
            "--prompt-words 'min,max' with 1 <= min <= max"
        ) from None
    if workload is not None:
        replay = load_workload(workload, default_max_tokens=max_tokens)
        if requests is not None:
            replay = [replay[i % len(replay)] for i in range(requests)]
    else:
        replay = synthetic(requests or 32, max_tokens, (low, high))
    counter = load_tokenizer(tokenizer) if tokenizer is not None else None
    if model is None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            model = httpx.get(url + "/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise fail(f"cannot list models at {url}: {exc}") from None
    extra = {"ignore_eos": True} if ignore_eos else None
    results = sweep(url, model, replay, levels, api_key, tokenizer=counter, extra_body=extra)
    header = ["conc", "req", "err", "tokens", "tok/s", "TTFT p50", "p90", "p99", "TPOT p50", "p90", "p99"]
    print(" ".join(f"{h:>9}" for h in header) + "  (latencies in ms)")
    for r in results:
        t = [percentile(r.ttft, q) * 1000 for q in (50, 90, 99)]
        p = [percentile(r.tpot, q) * 1000 for q in (50, 90, 99)]
        row = [r.concurrency, r.requests, r.errors, r.output_tokens, round(r.tokens_per_s, 1)]
        row += [round(v, 1) for v in (*t, *p)]
        print(" ".join(f"{v:>9}" for v in row))
    print(f"output tokens counted by {counting_summary(results)}")
    for r in results:
        for message in r.error_messages:
            err_console.print(f"concurrency {r.concurrency}: {message}", markup=False, soft_wrap=True)
    err_console.print(f"plot: {plot(results, plot_path)}")
    if any(r.errors for r in results):
        raise typer.Exit(code=1)


@model_app.command("import-gguf")
@reports_errors
def model_import_gguf(
    file: Annotated[Path, typer.Argument(help="a llama.cpp GGUF file (Llama family)")],
    to: Annotated[Path, typer.Option("--to", help="HF-format directory to write")],
    weights: Annotated[
        str,
        typer.Option(
            help="fp32: dequantise everything; int4 / int8: keep the projections quantised for "
            '[serve] weights = "int4" / "int8" (Q4_0/Q4_1 codes are kept as they are at group size 32)'
        ),
    ] = "fp32",
    group_size: Annotated[int, typer.Option(help="int4 group size ([serve] int4_group_size): 32, 64, 128 or 256")] = 32,
) -> None:
    """Convert a GGUF file into an HF-format directory (config.json, safetensors, tokenizer)."""
    from jijian.model.gguf import import_gguf

    import_gguf(file, to, weights, group_size)
    err_console.print(f"wrote {to}")
