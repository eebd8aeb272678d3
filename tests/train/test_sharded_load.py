"""Sharded loading of a Hugging Face model: each rank reads only its slices, and they equal a full load bitwise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torchrun_env import run_torchrun

from jijian.config import DeployConfig, UserInputError
from jijian.model.hf import load_hf
from jijian.train.layout import resolve_layout
from jijian.train.parallel import build_model_parts, build_parallel_dims
from jijian.train.run import model_shape

HELPER = Path(__file__).with_name("load_shards.py")


def write_hf_model(directory: Path, *, tied: bool, dtype: torch.dtype) -> Path:
    """A random Llama written by transformers itself, in two safetensors files."""
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(directory, max_shard_size="100KB")
    assert len(list(directory.glob("*.safetensors"))) > 1
    return directory


@pytest.mark.parametrize(("tied", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_one_process_loads_the_same_weights_as_load_hf(tmp_path, tied, dtype):
    hf_dir = write_hf_model(tmp_path / "hf", tied=tied, dtype=dtype)
    config = DeployConfig.model_validate({"model": {"hf_path": str(hf_dir)}, "train": {"device": "cpu"}})
    layout = resolve_layout(config, 1)
    parts = build_model_parts(
        model_shape(config),
        config.train,
        build_parallel_dims(layout, "cpu"),
        torch.device("cpu"),
        lambda a, b: a,
        initial_hf_dir=hf_dir,
    )
    full, _ = load_hf(hf_dir)
    model = parts.parts[0]
    for name, tensor in full.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.cfg.tie_embeddings is tied
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.multiprocess
def test_four_ranks_each_read_only_their_slices_and_equal_the_full_load(tmp_path):
    hf_dir = write_hf_model(tmp_path / "hf", tied=False, dtype=torch.bfloat16)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", str(HELPER)]
    layout = json.dumps({"dp_shard": 2, "tp": 2})
    proc = run_torchrun([*cmd, str(hf_dir), str(tmp_path), layout], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    full_bytes = sum(t.numel() * 4 for t in load_hf(hf_dir)[0].state_dict().values())
    for rank in range(4):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["compared"] > 0 and record["differing"] == [], record
        # dp_shard x tp = 4 ways: each rank holds about a quarter of the fp32 parameters.
        assert record["local_parameter_bytes"] < 0.3 * full_bytes


def test_a_model_directory_whose_weights_do_not_match_its_config_is_refused(tmp_path):
    hf_dir = write_hf_model(tmp_path / "hf", tied=False, dtype=torch.float32)
    config_path = hf_dir / "config.json"
    hf_config = json.loads(config_path.read_text())
    hf_config["intermediate_size"] = 192
    config_path.write_text(json.dumps(hf_config))
    config = DeployConfig.model_validate({"model": {"hf_path": str(hf_dir)}, "train": {"device": "cpu"}})
    with pytest.raises(UserInputError, match=r"mlp\.\w+_proj\.weight has shape \(\d+, \d+\), config\.json implies"):
        build_model_parts(
            model_shape(config),
            config.train,
            build_parallel_dims(resolve_layout(config, 1), "cpu"),
            torch.device("cpu"),
            lambda a, b: a,
            initial_hf_dir=hf_dir,
        )
