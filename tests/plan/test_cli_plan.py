"""`jijian plan` through typer's CliRunner: config file, flags, --layout, --json, --emit, serve, scaling, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import load_config

runner = CliRunner()
FLAGS = ["--model", "llama3-70b", "--gpus", "1024", "--gpu", "H800", "--tokens", "2T", "--seq", "4096"]


def invoke(*args: str):
    return runner.invoke(app, ["plan", *args])


def write_deploy(tmp_path: Path) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(
        '[model]\npreset = "llama3-8b"\n'
        "[train]\nsteps = 1000\nbatch_size = 32\ngrad_accum_steps = 2\nseq_len = 4096\nwarmup_steps = 10\n"
        '[hardware]\naccelerator = "A100-80GB"\nnodes = 2\ndevices_per_node = 8\nrent_per_device_hour = 12.5\n',
        encoding="utf-8",
    )
    return path


def test_plan_deploy_toml_searches_its_model_and_cluster(tmp_path):
    result = invoke(str(write_deploy(tmp_path)), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    request = payload["request"]
    assert request["gpus"] == 16 and request["accelerator"] == "A100-80GB" and request["seq"] == 4096
    # [train] gives the run: global batch = batch_size 32 (over all data ranks) x 2 accumulation, 1000 steps.
    assert request["global_batch"] == 64 and request["tokens"] == 1000 * 64 * 4096
    best = payload["results"][0]
    assert best["cost_rent"] == best["gpu_hours"] * 12.5
    assert best["layout"]["dp"] * best["layout"]["fsdp"] * best["layout"]["tp"] * best["layout"]["pp"] == 16


def test_plan_flags_print_a_table_with_bottlenecks():
    result = invoke(*FLAGS, "--global-batch", "1024", "--top", "3")
    assert result.exit_code == 0, result.output
    assert "70.6B parameters on 1024 x H800" in result.output
    assert "PF-days" in result.output and "kWh" in result.output
    assert any(word in result.output for word in ("compute", "memory", "network", "bubble"))


def test_plan_json_has_the_documented_fields():
    result = invoke(*FLAGS, "--json", "--top", "2")
    assert result.exit_code == 0, result.output
    results = json.loads(result.output)["results"]
    assert len(results) == 2
    keys = {"mfu", "step_time_s", "tokens_per_s", "memory_per_device_gb", "days", "gpu_hours", "pf_days",
            "energy_kwh", "cost_rent", "cost_buy", "bottleneck", "layout"}  # fmt: skip
    assert keys <= results[0].keys()
    assert results[0]["bottleneck"] in ("compute", "memory", "network", "bubble")


def test_plan_layout_and_emit_write_a_parallel_section_train_accepts(tmp_path):
    emitted = tmp_path / "parallel.toml"
    result = invoke(*FLAGS[:2], "--gpu", "H800", "--tokens", "2T", "--layout", "fsdp=32,tp=8", "--emit", str(emitted))
    assert result.exit_code == 0, result.output
    parallel = tomllib.loads(emitted.read_text(encoding="utf-8"))["parallel"]
    assert (parallel["dp_replicate"], parallel["dp_shard"], parallel["tp"], parallel["pp"]) == (1, 32, 8, 1)
    # Appended to a deploy.toml, the section validates as jijian train's [parallel].
    deploy = tmp_path / "deploy.toml"
    deploy.write_text('[model]\npreset = "llama3-70b"\n' + emitted.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_config(deploy).parallel.dp_shard == 32
    # An existing file is kept unless --force.
    again = invoke(*FLAGS[:2], "--gpu", "H800", "--tokens", "2T", "--layout", "fsdp=32,tp=8", "--emit", str(emitted))
    assert again.exit_code == 2 and "--force" in again.output


def test_plan_serve_compares_bf16_and_int8():
    result = invoke("serve", "--model", "llama3-70b", "--gpu", "H800", "--rps", "20", "--json")
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)["plans"]
    assert [p["weights"] for p in plans] == ["bf16", "int8"]
    assert plans[1]["weight_gb"] < plans[0]["weight_gb"]
    table = invoke("serve", "--model", "llama3-8b", "--gpu", "H20", "--rps", "5")
    assert table.exit_code == 0 and "int8" in table.output


def test_plan_scaling_writes_a_png(tmp_path):
    png = tmp_path / "scaling.png"
    result = invoke("scaling", "--model", "llama3-8b", "--gpu", "A800", "--gpus", "64", "--png", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "efficiency" in result.output and "64" in result.output


def test_impossible_requests_exit_2_with_an_alternative():
    unknown = invoke("--model", "llama3-8b", "--gpu", "H900")
    assert unknown.exit_code == 2 and "did you mean H800" in unknown.output
    zero = invoke("--model", "llama3-8b", "--gpu", "H800", "--tokens", "0")
    assert zero.exit_code == 2 and "--tokens 161B" in zero.output
    too_big = invoke("--model", "llama3-405b", "--gpu", "A100-40GB", "--gpus", "8", "--tokens", "1T")
    assert too_big.exit_code == 2 and "nearest feasible" in too_big.output
    no_model = invoke("--gpus", "8")
    assert no_model.exit_code == 2 and "--model" in no_model.output
    mismatch = invoke("--model", "llama3-70b", "--gpus", "1024", "--layout", "fsdp=32,tp=8", "--tokens", "1T")
    assert mismatch.exit_code == 2 and "nearest: --layout fsdp=128,tp=8" in mismatch.output
    bad_shape = invoke("--layers", "2", "--hidden", "100", "--heads", "3", "--ffn", "64")
    assert bad_shape.exit_code == 2 and "model shape" in bad_shape.output


def test_custom_shape_from_flags():
    result = invoke("--layers", "32", "--hidden", "4096", "--heads", "32", "--kv-heads", "8", "--ffn", "14336",
                    "--vocab", "128256", "--gpus", "64", "--gpu", "H100-SXM", "--tokens", "1T", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"]["params"] == 8_030_261_248


def test_plan_imports_no_torch():
    code = "import sys, jijian.plan, jijian.cli.plan; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_zero_layouts_on_the_command_line(tmp_path):
    ok = invoke(*FLAGS, "--layout", "dp=128,zero=1,tp=8", "--json")
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.output)["results"][0]
    assert result["layout"]["zero_stage"] == 1 and result["jijian_runs"] is False
    low, high = result["mfu_range"]
    assert low < result["mfu"] < high
    bad = invoke(*FLAGS, "--layout", "fsdp=128,zero=1,tp=8")
    assert bad.exit_code == 2
    assert "nearest feasible: 'dp=128,zero=1,tp=8'" in bad.output and "'fsdp=128,tp=8'" in bad.output
    refused = invoke(*FLAGS, "--layout", "dp=128,zero=1,tp=8", "--emit", str(tmp_path / "z1.toml"))
    assert refused.exit_code == 2 and "no ZeRO-1" in refused.output and not (tmp_path / "z1.toml").exists()
    emitted = invoke(*FLAGS, "--layout", "dp=128,zero=2,tp=8", "--emit", str(tmp_path / "p.toml"))
    assert emitted.exit_code == 0, emitted.output
    parallel = tomllib.loads((tmp_path / "p.toml").read_text(encoding="utf-8"))["parallel"]
    assert parallel["dp_shard"] == 128 and parallel["fsdp_reshard_after_forward"] == "never"


def test_local_gpu_without_a_profile_says_how_to_make_one():
    result = invoke("--model", "llama-tiny", "--gpu", "local", "--gpus", "1", "--tokens", "1M")
    assert result.exit_code == 2 and "jijian plan calibrate" in result.output


@pytest.mark.slow  # the probe itself: about 10 s
def test_calibrate_profiles_this_machine_including_a_whole_training_step(tmp_path, monkeypatch):
    path = tmp_path / "profile.json"
    monkeypatch.setenv("JIJIAN_HARDWARE_PROFILE", str(path))
    result = invoke("calibrate", "--seconds", "5")
    assert result.exit_code == 0, result.output
    profile = json.loads(path.read_text(encoding="utf-8"))
    assert profile["reference_step"]["seconds"] > 0 and profile["matmul"] and profile["memory"]
    assert "a whole training step of the reference model" in result.output
    planned = invoke("train", "--model", "llama-tiny", "--gpu", "local", "--gpus", "1", "--tokens", "1M", "--json")
    assert planned.exit_code == 0, planned.output
    assert invoke("calibrate", "--seconds", "61").exit_code == 2
