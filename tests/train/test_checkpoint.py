"""Checkpoints in one process: atomic files and validation, bitwise resume, skipping corrupt ones, rollback, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import load_config
from jijian.files import drop_torn_tail, read_json_lines
from jijian.files.rundir import summarize_goodput
from jijian.train import trainer as trainer_module
from jijian.train.checkpoint import (
    LATEST,
    MANIFEST,
    CheckpointError,
    committed_checkpoints,
    retained,
    validate_checkpoint,
)
from jijian.train.export import export_checkpoint
from jijian.train.run import run_training
from jijian.train.trainer import TrainingUnstable

MODEL = {
    "dim": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "ffn_dim": 64,
    "vocab_size": 512,
    "max_seq_len": 32,
    "tie_embeddings": False,
}


def write_config(
    root: Path, name: str, steps: int, *, checkpoint: dict | None = None, train: dict | None = None
) -> Path:
    config = {
        "model": MODEL,
        "tokenizer": {"path": str(root / "tokenizer")},
        "data": {"sources": [str(root / "corpus.jsonl")], "validation_fraction": 0},
        "train": {
            "output_dir": str(root / name),
            "steps": steps,
            "batch_size": 4,
            "seq_len": 16,
            "lr": 3e-3,
            "warmup_steps": 1,
            "lr_schedule": "constant",
            "log_every": 1,
            "device": "cpu",
            **(train or {}),
        },
        "checkpoint": {"enabled": True, "interval": 2, "keep_last": 3, **(checkpoint or {})},
    }
    path = root / f"{name}-{steps}.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer, corpus_texts):
    root = tmp_path_factory.mktemp("ckpt")
    tokenizer.save(root / "tokenizer")
    with (root / "corpus.jsonl").open("w") as f:
        for text in corpus_texts[:6]:
            f.write(json.dumps({"text": text[:4000]}) + "\n")
    return root


def test_retention_keeps_the_last_k_and_every_nth():
    assert retained([2, 4, 6, 8, 10, 12], keep_last=2, keep_every=0) == {10, 12}
    assert retained([2, 4, 6, 8, 10, 12], keep_last=2, keep_every=4) == {4, 8, 10, 12}


@pytest.mark.slow
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(root):
    whole = run_training(load_config(write_config(root, "whole", 8)))
    # The same run, stopped after 4 steps and started again with the full step count: it resumes at 4.
    run_training(load_config(write_config(root, "split", 4)))
    split = run_training(load_config(write_config(root, "split", 8)))
    a = load_file(whole.model_dir / "model.safetensors")
    b = load_file(split.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = events(root / "split")
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [4]
    assert sorted(r["step"] for r in records if "loss" in r) == list(range(1, 9))  # appended, not truncated
    assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in events(root / "whole") if "loss" in r]

    ckpts = committed_checkpoints(root / "split" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_000008", "step_000006", "step_000004"]  # keep_last = 3
    assert (root / "split" / "checkpoints" / LATEST).read_text().strip() == "step_000008"
    assert all(validate_checkpoint(p) is None for p in ckpts)
    ledger = summarize_goodput(read_json_lines(root / "split" / "goodput.jsonl"))
    assert ledger["attempts"] == 2 and 0 < ledger["goodput"] <= 1
    assert ledger["checkpoint_blocking_s"] > 0

    result = CliRunner().invoke(app, ["train", "report", str(root / "split")])
    assert result.exit_code == 0, result.output
    assert "goodput" in result.output and "attempts / rollbacks" in result.output


def test_a_record_cut_short_by_a_kill_is_dropped_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    drop_torn_tail(path)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"ste')
    drop_torn_tail(path)
    assert path.read_text() == ""


def _damage(checkpoint: Path, how: str) -> None:
    shard = max(checkpoint.glob("*.distcp"), key=lambda p: p.stat().st_size)
    if how == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif how == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif how == "manifest":
        (checkpoint / MANIFEST).write_text("{not json")
    else:
        shard.unlink()


def test_a_truncated_shard_makes_the_resume_use_the_previous_checkpoint_and_say_so(root):
    run_training(load_config(write_config(root, "damaged", 6)))
    checkpoints = root / "damaged" / "checkpoints"
    pristine = root / "pristine_step_000006"
    shutil.copytree(checkpoints / "step_000006", pristine)
    _damage(checkpoints / "step_000006", "truncate")
    run_training(load_config(write_config(root, "damaged", 8)))
    records = events(root / "damaged")
    skipped = [r for r in records if r.get("event") == "checkpoint_skipped"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("step_000006") and "truncated" in skipped[0]["reason"]
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [4]

    # Every other kind of damage is caught by the same validation.
    for how, reason in [("flip", "CRC-32"), ("manifest", "unreadable"), ("delete", "missing")]:
        copy = root / f"damaged_{how}"
        shutil.copytree(pristine, copy)
        assert validate_checkpoint(copy) is None
        _damage(copy, how)
        assert reason in (validate_checkpoint(copy) or ""), how


def _poison_loss(monkeypatch, bad_calls: set[int] | None):
    """Make the loss of the given training forward passes (1-based count) NaN; None = every one."""
    calls = {"n": 0}
    real = trainer_module.cross_entropy_loss

    def loss(logits, targets):
        calls["n"] += 1
        value = real(logits, targets)
        return value * float("nan") if bad_calls is None or calls["n"] in bad_calls else value

    monkeypatch.setattr(trainer_module, "cross_entropy_loss", loss)


@pytest.mark.slow
def test_a_nan_rolls_back_skips_the_batch_and_finishes(root, monkeypatch):
    _poison_loss(monkeypatch, {5})  # step 5 of a run with checkpoints every 2 steps
    run = run_training(load_config(write_config(root, "nan", 8)))
    assert run.result.steps == 8
    assert all(v == v for v in run.result.losses.values())  # no NaN reached the model
    rollbacks = [r for r in events(root / "nan") if r.get("event") == "rollback"]
    assert len(rollbacks) == 1
    assert rollbacks[0]["bad_step"] == 5 and rollbacks[0]["to_step"] == 4 and rollbacks[0]["skipped_batches"] == [4]
    assert "non-finite" in rollbacks[0]["reason"]
    state = json.loads((root / "nan" / "checkpoints" / "step_000008" / "trainer.json").read_text())
    assert state["skip_batches"] == [4] and state["batches_drawn"] == 9  # the bad batch was drawn and dropped
    # Until a checkpoint holds it, a restart learns the skip list from the run directory.
    assert json.loads((root / "nan" / "instability.json").read_text()) == {"skip_batches": [4], "rollbacks": 1}

    # A job that died right after that rollback restarts from step 4, skips the same batch, ends identical.
    run_training(load_config(write_config(root, "nan_restart", 4)))
    shutil.copy(root / "nan" / "instability.json", root / "nan_restart" / "instability.json")
    restarted = run_training(load_config(write_config(root, "nan_restart", 8)))
    a, b = load_file(run.model_dir / "model.safetensors"), load_file(restarted.model_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summarize_goodput(read_json_lines(root / "nan" / "goodput.jsonl"))["rollbacks"] == 1


def test_instability_past_the_limit_stops_with_a_clear_error(root, monkeypatch):
    _poison_loss(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingUnstable, match="max_rollbacks = 2"):
        run_training(load_config(write_config(root, "unstable", 8, train={"max_rollbacks": 2})))


def test_export_writes_a_model_transformers_loads(root):
    transformers = pytest.importorskip("transformers")
    run_training(load_config(write_config(root, "exported", 4)))
    out, source = export_checkpoint(root / "exported", root / "hf_export")
    assert source.name == "step_000004"
    result = CliRunner().invoke(app, ["train", "export", str(root / "exported"), "--to", str(root / "hf_cli")])
    assert result.exit_code == 0, result.output
    assert (root / "hf_cli" / "model.safetensors").is_file()
    result = CliRunner().invoke(app, ["train", "export", str(root / "nowhere"), "--to", str(root / "x")])
    assert result.exit_code == 2 and "deploy.toml" in result.output
    trained = load_file(root / "exported" / "model" / "model.safetensors")
    exported = load_file(out / "model.safetensors")
    assert trained.keys() == exported.keys()
    assert all(torch.equal(trained[k], exported[k]) for k in trained)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert model(ids).logits.shape == (1, 4, MODEL["vocab_size"])
    assert (out / "tokenizer.json").is_file()


def test_a_checkpoint_of_another_model_shape_is_refused_naming_the_tensor(root):
    run_training(load_config(write_config(root, "reshaped", 2)))
    before = sorted(p.name for p in (root / "reshaped" / "checkpoints").iterdir())
    wider = write_config(root, "reshaped", 4)
    config = load_config(wider).model_copy(
        update={"model": load_config(wider).model.model_copy(update={"ffn_dim": 96})}
    )
    with pytest.raises(CheckpointError, match=r"another model shape: .*mlp.*\(64, 32\) there but \(96, 32\)"):
        run_training(config)
    # Nothing already written is touched: the checkpoints are still there, unchanged.
    assert sorted(p.name for p in (root / "reshaped" / "checkpoints").iterdir()) == before
