"""The quick start end to end on a small corpus: every promised output exists and is usable."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from jijian.cli.quickstart import PROMPT, run_quickstart, seconds_per_step


def test_quickstart_writes_corpus_tokenizer_model_metrics_and_sample(tmp_path, stdlib_paths):
    out = tmp_path / "qs"
    with (tmp_path / "log").open("w") as log:
        summary = run_quickstart(
            out,
            minutes=1,
            steps=12,
            console=Console(file=log),
            corpus_files=stdlib_paths,
            kb_docs=60,
            serve_question=None,
        )
    for name in (
        "data/manifest.json",
        "data/train_00000.bin",
        "tokenizer/tokenizer.json",
        "model/config.json",
        "model/model.safetensors",
        "metrics.jsonl",
        "deploy.toml",
        "quickstart.json",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["stats"]["input_files"] == len(stdlib_paths)
    assert manifest["stats"]["totals"]["records"] == len(stdlib_paths)
    # Training read the shards the build wrote (it reused them rather than tokenising again).
    start = next(r for r in logged_records(out) if r.get("event") == "start")
    assert start["data_dir"] == str(out / "data") and start["train_tokens"] == manifest["splits"]["train"]["tokens"]
    assert summary == json.loads((out / "quickstart.json").read_text())
    assert summary["steps"] == 12 and summary["sample"].startswith(PROMPT)
    assert summary["final_over_step_10"] == round(summary["final_loss"] / summary["loss_step_10"], 4)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert next(r["loss"] for r in logged if r.get("step") == 10) == pytest.approx(summary["loss_step_10"], abs=1e-4)
    # The exported model is a plain transformers model.
    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None
    assert AutoTokenizer.from_pretrained(out / "model").eos_token == "<|end_of_text|>"
    # The knowledge base over the corpus files' docstrings answers its sample search.
    assert summary["kb"]["docs"] > 0 and len(summary["kb"]["hits"]) == min(3, summary["kb"]["docs"])
    assert (out / "kb" / "stdlib-docs" / "rows.sqlite").is_file()


def logged_records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_step_calibration_measures_a_positive_time():
    assert (
        seconds_per_step(
            {"preset": "llama-tiny", "n_layers": 1, "vocab_size": 512}, 2, 16, timed_steps=1, settle_steps=1
        )
        > 0
    )
