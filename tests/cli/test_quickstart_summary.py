"""The quick start's summary shows the knowledge base's retrieval quality and the sources the answer cites."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from jijian.cli.quickstart import summary_table
from jijian.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.toml"


def test_summary_prints_recall_at_5_and_cited_sources(tmp_path):
    config = load_config(EXAMPLE)
    summary = {
        "loss_step_10": None, "val_loss": None, "steps": None, "built": ["kb", "serve"], "total_seconds": 12.0,
        "kb": {"path": "runs/kb", "collection": "stdlib-docs", "count": 3000,
               "retrieval": {"questions": 161, "recall@5": 0.925, "mrr": 0.85}},
        "rag": {"question": "How do I read a gzip file?", "model": "SmolLM2", "answer": "Use gzip.open.",
                "citations": [{"index": 1, "id": "gzip", "source": "/usr/lib/python3.11/gzip.py", "score": 0.03}]},
    }  # fmt: skip
    console = Console(record=True, width=200)
    console.print(summary_table(summary, config, tmp_path))
    text = console.export_text()
    assert "hybrid recall@5 0.93 on 161 labelled English questions" in text
    assert "[1] gzip (gzip.py)" in text
