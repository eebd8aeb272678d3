"""`jijian train`: the torchrun launcher, layout errors before any rank starts, and `train report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import load_config
from jijian.train.launch import plan_launch, torchrun_command


def write_config(tmp_path: Path, tokenizer, stdlib_paths, parallel: dict, steps: int = 3) -> Path:
    tokenizer.save(tmp_path / "tok")
    config = {
        "model": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 64, "vocab_size": 512},
        "tokenizer": {"path": str(tmp_path / "tok")},
        "data": {"sources": [str(p) for p in stdlib_paths[:4]]},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "steps": steps,
            "batch_size": 4,
            "seq_len": 16,
            "warmup_steps": 1,
            "log_every": 1,
            "device": "cpu",
        },
        "parallel": parallel,
    }
    path = tmp_path / "deploy.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def test_impossible_layout_fails_before_any_rank_starts(tmp_path, tokenizer, stdlib_paths):
    path = write_config(tmp_path, tokenizer, stdlib_paths, {"dp_shard": 2, "tp": 3})
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "parallel.tp = 3 does not divide model.n_heads" in result.output
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_product_must_match_the_ranks_asked_for(tmp_path, tokenizer, stdlib_paths):
    path = write_config(tmp_path, tokenizer, stdlib_paths, {"dp_shard": 2, "tp": 2})
    result = CliRunner().invoke(app, ["train", str(path), "--nproc-per-node", "2"])
    assert result.exit_code == 2
    assert "the product must equal" in result.output


def test_torchrun_command_for_multi_node(tmp_path, tokenizer, stdlib_paths):
    path = write_config(tmp_path, tokenizer, stdlib_paths, {"dp_shard": -1, "tp": 2})
    plan = plan_launch(load_config(path), nproc_per_node=4, nnodes=2)
    assert plan.world_size == 8 and plan.layout.dp_shard == 4
    cmd = torchrun_command(path, plan, node_rank=1, rdzv_endpoint="10.0.0.1:29500", max_restarts=3)
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and "--rdzv-endpoint=10.0.0.1:29500" in cmd
    assert "--max-restarts=3" in cmd
    assert cmd[-2:] == ["jijian.train.worker", str(path)]


@pytest.mark.multiprocess
def test_train_launches_ranks_and_report_plots_the_run(tmp_path, tokenizer, stdlib_paths):
    path = write_config(tmp_path, tokenizer, stdlib_paths, {"dp_shard": 2})
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "jijian.cli.main", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching 2 ranks" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["event"] == "start" and "dp_shard=2" in start["layout"]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("tokens_per_s", "tokens_per_s_per_device", "mfu", "peak_memory_gb", "data_wait_s", "grad_norm"):
        assert all(r[key] >= 0 for r in steps), key
    assert (tmp_path / "run" / "model" / "config.json").is_file()

    result = CliRunner().invoke(app, ["train", "report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "final loss" in result.output and "MFU" in result.output
    for plot in ("loss.png", "throughput.png", "mfu.png"):
        assert (tmp_path / "run" / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_directory_without_metrics_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "report", str(tmp_path)])
    assert result.exit_code == 2
    assert "metrics.jsonl" in result.output


def test_a_rank_leaves_with_its_code_and_its_output_flushed():
    # Ranks end with os._exit (skipping the interpreter teardown that can abort a finished rank): what they
    # printed must still arrive, and the exit code must be the one main returned.
    script = (
        "import sys; from jijian.train.worker import leave; "
        "print('last line', end=''); sys.stderr.write('err'); leave(3)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (3, "last line", "err")
