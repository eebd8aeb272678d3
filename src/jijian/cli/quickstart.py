"""The quick start: `jijian up` on the bundled examples/quickstart.toml, then a summary of what it built.

A real, small end-to-end run on any machine with Python, offline: a tokenizer and packed shards from the
running interpreter's standard library, llama-tiny trained for a few minutes, the model exported in
Hugging Face format and sampled, a knowledge base of standard-library docstrings, and SmolLM2 answering
a question through the HTTP server with retrieval. A second run rebuilds nothing and prints the summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jijian.config import UserInputError
from jijian.up.paths import export_dir
from jijian.up.up import UpOptions, up

SUMMARY = "quickstart.json"


def bundled_example(name: str = "quickstart.toml") -> Path:
    """examples/<name> of the repository this jijian is installed from (scripts/quickstart installs it editable)."""
    path = Path(__file__).resolve().parents[3] / "examples" / name
    if not path.is_file():
        raise UserInputError(f"the bundled example {path} is missing: run from a clone of jijian, or pass --config")
    return path


def run_quickstart(config_path: Path, console: Console, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the quick-start deployment (only what is missing or stale) and write and print its summary."""
    started = time.perf_counter()
    outcome = up(config_path, UpOptions(overrides=overrides), console)
    assert outcome.report is not None
    config, results = outcome.config, outcome.report.results
    train, kb, serve = results.get("train", {}), results.get("kb", {}), results.get("serve")
    summary = {
        **{k: train.get(k) for k in ("steps", "tokens", "loss_step_10", "final_loss", "final_over_step_10")},
        "val_loss": None if train.get("val_loss") is None else round(train["val_loss"], 4),
        "train_seconds": None if train.get("elapsed_s") is None else round(train["elapsed_s"], 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "built": outcome.report.ran,
        "sample": results.get("export", {}).get("sample"),
        "kb": kb,
        "rag": serve,
    }
    out = config.train.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(summary_table(summary, config, out))
    console.print(
        f"next: [bold]jijian generate {export_dir(config)} 'import os'[/]  or  [bold]jijian serve {config_path}[/]"
    )
    return summary


def summary_table(summary: dict[str, Any], config: Any, out: Path) -> Table:
    """The quick start's result at a glance."""
    table = Table(title="jijian quick start", show_header=False)
    if summary["loss_step_10"] is not None:
        table.add_row("loss at step 10", f"{summary['loss_step_10']:.3f}")
        table.add_row(
            "final loss (last 10 steps)",
            f"{summary['final_loss']:.3f}  ({summary['final_over_step_10']:.0%} of step 10)",
        )
    if summary["val_loss"] is not None:
        table.add_row("validation loss", f"{summary['val_loss']:.3f}")
    if summary["steps"] is not None:
        table.add_row("steps / tokens", f"{summary['steps']} / {summary['tokens']:,}")
    table.add_row("built now", ", ".join(summary["built"]) or "nothing (everything up to date)")
    table.add_row("time", f"{summary['total_seconds']:.0f} s")
    table.add_row("data (shards + manifest)", str(config.data.output_dir))
    table.add_row("model (HF format)", str(export_dir(config)))
    table.add_row("metrics (JSON lines)", str(out / "metrics.jsonl"))
    kb = summary["kb"]
    if kb:
        table.add_row("knowledge base", f"{kb['path']}/{kb['collection']} ({kb['count']} entries)")
        if kb.get("retrieval"):
            quality = kb["retrieval"]
            table.add_row(
                "retrieval quality",
                f"hybrid recall@5 {quality['recall@5']:.2f} on {quality['questions']} labelled English questions",
            )
    rag = summary["rag"]
    if rag and rag.get("answer") is not None:
        cited = "; ".join(f"[{c['index']}] {c['id']} ({Path(c['source']).name})" for c in rag["citations"])
        table.add_row("question", rag["question"])
        table.add_row(f"answer ({rag['model']})", rag["answer"])
        table.add_row("citations", cited or "none")
    table.add_row("build manifests", str(config.up.state_dir))
    table.add_row("summary", str(out / SUMMARY))
    return table
