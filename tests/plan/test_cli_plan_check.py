"""`jijian plan --check`: the planner's figures next to a fake-process-group trace of the engine, and bad layouts.

Small models (Llama 3 8B's width with 2-4 layers) keep each trace to seconds; the full presets are in
benchmarks/plan_vs_engine.py and tests/train/test_layout_trace.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app

runner = CliRunner()
SMALL = ["--model", "llama3-8b", "--layers", "4", "--gpu", "H100-SXM", "--seq", "2048", "--global-batch", "32"]


def invoke(*args: str):
    return runner.invoke(app, ["plan", *args])


@pytest.mark.slow  # a 32-rank fake-group trace, about 6 s
def test_check_traces_a_4d_layout_and_agrees_with_the_planner():
    result = invoke(*SMALL, "--layout", "dp=2,fsdp=4,tp=2,pp=2", "--check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["world_size"] == 32
    assert report["parallel"].startswith("dp_replicate=2 x dp_shard=4 x tp=2 x pp=2")
    # Rank 0 for memory, the last stage's first rank for traffic (the head and the loss are there).
    assert report["traced_ranks"] == [0, 16]
    engine = report["engine"]
    assert all(engine["sent_per_step"][k] > 0 for k in ("tensor_parallel", "pipeline_p2p", "fsdp", "data_parallel"))
    assert engine["model_states"]["optimizer"] == 2 * engine["model_states"]["params"]  # AdamW: two fp32 moments
    assert report["agree"] and report["memory_rel_err"] <= 0.05 and report["comm_rel_err"] <= 0.10


def test_check_prints_both_sides_and_the_verdict():
    result = invoke(*SMALL, "--layout", "fsdp=4,tp=2", "--check")
    assert result.exit_code == 0, result.output
    for text in ("planner", "engine", "rel. error", "sent/step tensor_parallel", "memory total"):
        assert text in result.stdout
    assert "planner and engine agree" in result.stdout


def test_check_rejects_layouts_naming_the_option():
    zero1 = invoke(*SMALL, "--layout", "dp=8,zero=1", "--check")
    assert zero1.exit_code == 2
    assert "--check" in zero1.output and "ZeRO-1" in zero1.output
    heads = invoke(*SMALL, "--layout", "fsdp=2,tp=3", "--check")
    assert heads.exit_code == 2 and "--layout" in heads.output and "tp = 3" in heads.output


def write_deploy(tmp_path: Path, parallel: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(
        '[model]\npreset = "llama3-8b"\nn_layers = 2\n'
        "[train]\nsteps = 10\nbatch_size = 4\nseq_len = 1024\nwarmup_steps = 1\n"
        '[hardware]\naccelerator = "H100-SXM"\nnodes = 1\ndevices_per_node = 4\n'
        f"[parallel]\n{parallel}\n",
        encoding="utf-8",
    )
    return path


def test_check_traces_the_deployments_own_parallel_section(tmp_path):
    result = invoke(str(write_deploy(tmp_path, "dp_shard = 2\ntp = 2\nsequence_parallel = true")), "--check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["parallel"].startswith("dp_shard=2 x tp=2") and report["world_size"] == 4
    assert report["engine"]["sent_per_step"]["tensor_parallel"] > 0


def test_check_names_the_parallel_field_of_a_bad_deployment(tmp_path):
    result = invoke(str(write_deploy(tmp_path, "dp_shard = 1\ntp = 3\n")), "--check")
    assert result.exit_code == 2
    assert "parallel" in result.output and "tp" in result.output
