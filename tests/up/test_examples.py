"""The bundled examples: each is a valid config, and `jijian up --dry-run` plans it without writing anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jijian.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def examples_copy(tmp_path_factory, tokenizer):
    """examples/ copied beside an empty runs/, so `../runs/...` paths stay inside the test's directory.

    The fine-tune example starts from SmolLM2 converted by `jijian model import-gguf` into
    runs/models/; a small random Llama in HF format stands in for it (the conversion takes ~25 s and 0.5 GB).
    """
    from jijian.config import ModelConfig
    from jijian.model.hf import save_hf
    from jijian.model.llama import build_model

    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(EXAMPLES, root / "examples")
    torch.manual_seed(0)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=128, vocab_size=tokenizer.vocab_size, max_seq_len=512)
    save_hf(build_model(cfg), tokenizer, root / "runs" / "models" / "SmolLM2-135M-Instruct")
    return root


@pytest.mark.parametrize("name", ["quickstart.toml", "finetune-and-serve.toml", "multinode-gpu.toml"])
def test_example_passes_config_check_and_dry_run_writes_nothing(examples_copy, name):
    config = examples_copy / "examples" / name
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 0, result.output
    before = tree(examples_copy)
    result = CliRunner().invoke(app, ["up", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "will run" in result.output and "train estimate (jijian.plan)" in result.output
    assert "dry run: nothing was built or written" in result.output
    assert tree(examples_copy) == before


def test_multinode_example_uses_the_layout_the_planner_picks(examples_copy):
    from jijian.cli.build.estimate import estimate_training
    from jijian.config import load_config

    config = load_config(examples_copy / "examples" / "multinode-gpu.toml")
    best = estimate_training(config)
    parallel = config.parallel
    degrees = ([f"dp={parallel.dp_replicate}"] if parallel.dp_replicate > 1 else []) + [f"fsdp={parallel.dp_shard}"]
    assert best.devices == 32 and best.layout.startswith(",".join(degrees) + " ")
    assert parallel.dp_replicate * parallel.dp_shard * parallel.tp * parallel.pp == config.up.nnodes * 8


def test_quickstart_example_describes_the_quick_start():
    from jijian.config import load_config

    config = load_config(EXAMPLES / "quickstart.toml")
    assert config.data.sources == ["python-stdlib"] and config.up.kb_sources == ["python-stdlib-docs"]
    assert config.train.output_dir == EXAMPLES.parent / "runs" / "quickstart"
    assert config.up.question and config.up.sample_prompt and config.up.train_minutes
