"""The quick start: a real, small end-to-end run on any machine with Python, offline.

Corpus: the running interpreter's standard library (thousands of real small .py files); a byte-level
BPE tokenizer trained on it; the data pipeline cleaning, de-duplicating and packing the files into token
shards; llama-tiny trained from those shards for a few minutes;
the model written in Hugging Face format; a sample continuation of a Python prompt.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from jijian.config import DataConfig, ModelConfig, TrainConfig, parse_config
from jijian.data import build_dataset, python_stdlib_files
from jijian.kb import KnowledgeBase
from jijian.kb.embed import load_embedder
from jijian.kb.stdlib_docs import COLLECTION, SAMPLE_QUERY, build_stdlib_docs, sample_search
from jijian.model import build_model, generate
from jijian.model.hf import load_hf
from jijian.model.tokenizer import train_tokenizer
from jijian.train import Trainer, run_training

TOKENIZER_BYTES = 6 * 1024 * 1024
PROMPT = "def read_config(path):\n    "
SERVE_QUESTION = "How do I read a file compressed with gzip in Python?"
BATCH_SIZE = 8
SEQ_LEN = 256


def run_quickstart(
    out: Path,
    *,
    minutes: float,
    steps: int | None,
    console: Console,
    vocab_size: int = 4096,
    corpus_files: list[Path] | None = None,
    kb_docs: int = 800,
    serve_question: str | None = SERVE_QUESTION,
) -> dict:
    """Build tokenizer → shards → trained model → sample under `out`; returns the summary it writes.

    With `steps=None` the step count is calibrated so that the whole warmup + cosine schedule fits
    in `minutes` on this machine (a run cut off by the clock would end at a high learning rate).
    `corpus_files` replaces the standard library (tests use a handful of files).
    """
    started = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1/6 tokenizer: byte-level BPE on the Python standard library")
    files = corpus_files if corpus_files is not None else python_stdlib_files()
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(_prefix_by_bytes(_read_texts(files), TOKENIZER_BYTES), vocab_size=vocab_size)
    tokenizer_dir = out / "tokenizer"
    tokenizer.save(tokenizer_dir)
    console.print(f"vocab {tokenizer.vocab_size} trained in {time.perf_counter() - t0:.0f} s -> {tokenizer_dir}")

    console.rule("[bold]2/6 data: clean, de-duplicate, tokenise, pack into shards")
    data_section = {
        "sources": [str(path) for path in files],
        "output_dir": str(out / "data"),
        "validation_fraction": 0.02,
        "workers": min(2, os.cpu_count() or 1),
    }
    build = build_dataset(DataConfig.model_validate(data_section, strict=False), tokenizer, console=console)
    totals = build.manifest["stats"]["totals"]
    console.print(
        f"{len(files)} files, {build.input_bytes / 1e6:.1f} MB -> {totals['kept_documents']} documents "
        f"({totals['exact_duplicates']} exact and {totals['near_duplicates']} near duplicates, "
        f"{totals['filtered']} filtered), {totals['train_tokens']:,} train + {totals['val_tokens']:,} validation "
        f"tokens in {len(build.manifest['splits']['train']['shards'])} shard(s) under {build.directory} "
        f"({build.elapsed_s:.0f} s)"
    )

    console.rule("[bold]3/6 train llama-tiny")
    model_section = {"preset": "llama-tiny", "vocab_size": tokenizer.vocab_size}
    if steps is None:
        seconds = seconds_per_step(model_section, BATCH_SIZE, SEQ_LEN)
        steps = max(50, int(minutes * 60 / seconds))
        console.print(
            f"calibrated: {seconds:.2f} s per step of {BATCH_SIZE}×{SEQ_LEN} tokens -> {steps} steps "
            f"in about {minutes:g} minutes"
        )
    config = parse_config(
        {
            "name": "quickstart",
            "model": model_section,
            "tokenizer": {"path": str(tokenizer_dir)},
            # The same [data] as the build above: training reuses its shards instead of rebuilding.
            "data": data_section,
            "train": {
                "output_dir": str(out),
                "steps": steps,
                "batch_size": BATCH_SIZE,
                "seq_len": SEQ_LEN,
                "lr": 2e-3,
                "warmup_steps": min(20, steps),
                "weight_decay": 0.1,
                "log_every": 10,
                "eval_batches": 8,
                # A safety net only (a machine that slows down mid-run): calibration should finish the
                # schedule well inside it, and the quick start must end within 10 minutes in all.
                "max_minutes": minutes + 1.5,
                "device": "cpu",
                "seed": 0,
            },
        },
        source="quickstart",
        base_dir=out,
    )
    run = run_training(config, console=console)
    result = run.result

    console.rule("[bold]4/6 sample")
    # Sample from the saved directory, not the in-memory model: proves the export stands on its own.
    model, saved_tokenizer = load_hf(run.model_dir)
    saved_tokenizer = saved_tokenizer or tokenizer
    ids = saved_tokenizer.encode(PROMPT, add_bos=True)
    new = generate(model, ids, 80, temperature=0.7, top_k=40, eos_id=saved_tokenizer.eos_id, seed=0)
    sample = PROMPT + saved_tokenizer.decode(new)
    console.print(sample, markup=False, highlight=False)

    console.rule("[bold]5/6 knowledge base: standard-library docstrings")
    kb_summary = build_docs_kb(out / "kb", files, console, max_docs=kb_docs)

    rag_summary = None
    if serve_question:
        console.rule("[bold]6/6 serve SmolLM2-135M-Instruct with RAG over the knowledge base")
        rag_summary = serve_rag_answer(out, serve_question, console)

    first = result.losses.get(10, result.losses[min(result.losses)])
    # Single-step losses jitter by about ±0.2 here; the final loss is the mean of the last 10 steps.
    last_steps = sorted(result.losses)[-10:]
    final = sum(result.losses[s] for s in last_steps) / len(last_steps)
    summary = {
        "steps": result.steps,
        "tokens": result.tokens,
        "train_seconds": round(result.elapsed_s, 1),
        "loss_step_10": round(first, 4),
        "final_loss": round(final, 4),
        "last_step_loss": round(result.final_loss, 4),
        "final_over_step_10": round(final / first, 4),
        "val_loss": None if result.val_loss is None else round(result.val_loss, 4),
        "total_seconds": round(time.perf_counter() - started, 1),
        "sample": sample,
        "kb": kb_summary,
        "rag": rag_summary,
    }
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    table = Table(title="jijian quick start", show_header=False)
    table.add_row("loss at step 10", f"{summary['loss_step_10']:.3f}")
    table.add_row(
        "final loss (last 10 steps)", f"{summary['final_loss']:.3f}  ({summary['final_over_step_10']:.0%} of step 10)"
    )
    if summary["val_loss"] is not None:
        table.add_row("validation loss", f"{summary['val_loss']:.3f}")
    table.add_row("steps / tokens", f"{result.steps} / {result.tokens:,}")
    table.add_row("time", f"{summary['total_seconds']:.0f} s")
    table.add_row("data (shards + manifest)", str(build.directory))
    table.add_row("tokenizer", str(tokenizer_dir))
    table.add_row("model (HF format)", str(run.model_dir))
    table.add_row("metrics (JSON lines)", str(run.metrics_path))
    table.add_row("resolved config", str(out / "deploy.toml"))
    table.add_row("knowledge base", f"{kb_summary['path']} ({kb_summary['docs']} docstrings)")
    if rag_summary is not None:
        table.add_row("RAG answer", f"{len(rag_summary['citations'])} citations, {rag_summary['seconds']:.0f} s")
    table.add_row("summary", str(out / "quickstart.json"))
    console.print(table)
    console.print(
        f"next: [bold]jijian generate {run.model_dir} 'import os'[/]  or  [bold]jijian train {out / 'deploy.toml'}[/]"
    )
    return summary


def build_docs_kb(kb_dir: Path, files: list[Path], console: Console, max_docs: int) -> dict:
    """Embed up to `max_docs` stdlib docstrings into a knowledge base and run a sample search."""
    kb = KnowledgeBase(kb_dir)
    embedder = load_embedder()
    docs, seconds = build_stdlib_docs(kb, files, embedder, max_docs=max_docs)
    hits = sample_search(kb, embedder)
    kb.close()
    console.print(f"{docs} docstrings embedded in {seconds:.0f} s -> {kb_dir}; search {SAMPLE_QUERY!r}:")
    for hit in hits:
        console.print(f"  {hit.id}  ({hit.metadata['source']}:{hit.metadata['line']})", markup=False, highlight=False)
    return {"path": str(kb_dir), "docs": docs, "query": SAMPLE_QUERY, "hits": [hit.id for hit in hits]}


def serve_rag_answer(out: Path, question: str, console: Console) -> dict:
    """Start the OpenAI-compatible server (SmolLM2, guard, RAG over `out/kb`) and ask it one question."""
    import httpx

    from jijian.serve.server import build_server, serve_in_thread

    t0 = time.perf_counter()
    config = parse_config(
        {"serve": {"model_cache_dir": str(out / "models"), "max_num_seqs": 4}, "kb": {"path": str(out / "kb")}},
        source="quickstart serve",
    )
    server = build_server(config)
    body = {
        "model": server.settings.model_name,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 96,
        "temperature": 0,
        "rag": {"collection": COLLECTION, "top_k": 3},
    }
    with serve_in_thread(server.app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    answer = response.json()
    text = answer["choices"][0]["message"]["content"]
    console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] {text}", highlight=False)
    for citation in answer["citations"]:
        console.print(f"  [{citation['index']}] {citation['id']}  ({citation['source']})", markup=False)
    return {
        "question": question,
        "answer": text,
        "citations": answer["citations"],
        "model": server.settings.model_name,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def seconds_per_step(
    model_section: dict, batch_size: int, seq_len: int, timed_steps: int = 8, settle_steps: int = 8
) -> float:
    """Wall time of one real training step (the trainer's own, clipping included) on this machine."""
    model = build_model(ModelConfig.model_validate(model_section))
    tokens = torch.randint(0, model.cfg.vocab_size, (batch_size, seq_len + 1))
    batches = itertools.repeat((tokens[:, :-1], tokens[:, 1:]))
    config = TrainConfig(steps=settle_steps + timed_steps, warmup_steps=0, batch_size=batch_size, seq_len=seq_len)
    trainer = Trainer(model, config, batches, device=torch.device("cpu"))
    # The first steps run about 40% slower (allocator and optimizer state settling, measured on 2 cores);
    # timing them would undercount the steps that fit.
    for _ in range(settle_steps):
        trainer.train_step()
    started = time.perf_counter()
    for _ in range(timed_steps):
        trainer.train_step()
    return (time.perf_counter() - started) / timed_steps


def _read_texts(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def _prefix_by_bytes(texts: Iterable[str], limit: int) -> Iterator[str]:
    total = 0
    for text in texts:
        if total >= limit:
            return
        total += len(text)
        yield text
