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
    from jijian.config import load_config
    from jijian.up.estimate import estimate_training

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


def test_finetune_example_quick_variant_trains_a_lora_adapter_and_serves_it(examples_copy):
    """The example end to end with 2 steps, the tiny stand-in base and the offline hashing embedder."""
    import json

    config = examples_copy / "examples" / "finetune-and-serve.toml"
    quick = config.with_name("finetune-quick.toml")
    text = (
        config.read_text(encoding="utf-8")
        .replace("steps = 20", "steps = 2")
        .replace("warmup_steps = 4", "warmup_steps = 1")
    )
    # The stand-in base holds 512 positions: short chunks and one of them keep the RAG prompt inside.
    text = text.replace('index = "flat"', 'index = "flat"\nembedding_model = "hashing"\nchunk_tokens = 48')
    quick.write_text(
        text.replace("question_max_tokens = 64", "question_max_tokens = 8\nrag_top_k = 1"), encoding="utf-8"
    )
    result = CliRunner().invoke(app, ["up", str(quick)])
    assert result.exit_code == 0, result.output
    adapter = examples_copy / "runs" / "finetune" / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "adapter_model.safetensors").is_file()
    records = [json.loads(p.read_text()) for p in (examples_copy / "runs" / "finetune" / "up").rglob("*.json")]
    served = [r for r in records if "asked_model" in json.dumps(r)]
    assert served, result.output
    assert '"asked_model": "harbor-lane"' in json.dumps(served[0])
