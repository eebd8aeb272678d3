"""Impossible layouts fail before any rank starts, with a message naming the field."""

from __future__ import annotations

import pytest

from jijian.config import DeployConfig, ModelConfig, ParallelConfig, TrainConfig
from jijian.train.layout import LayoutError, resolve_layout


def config(model: dict | None = None, train: dict | None = None, **parallel) -> DeployConfig:
    base_model = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, tie_embeddings=False)
    return DeployConfig(
        model=ModelConfig(**{**base_model, **(model or {})}),
        train=TrainConfig(**{"batch_size": 8, "seq_len": 32, "warmup_steps": 0, **(train or {})}),
        parallel=ParallelConfig(**parallel),
    )


def test_dp_shard_auto_fills_the_remaining_ranks():
    layout = resolve_layout(config(tp=2), world_size=8)
    assert (layout.dp_shard, layout.tp, layout.world_size) == (4, 2, 8)


def test_three_d_layout_resolves_with_default_microbatches():
    layout = resolve_layout(config(dp_shard=2, tp=2, pp=2), world_size=8)
    assert layout.pp_microbatches == 2 and layout.sequence_parallel


@pytest.mark.parametrize(
    ("cfg", "world", "needle"),
    [
        (dict(dp_shard=2, tp=2), 8, "product must equal"),
        (dict(tp=3), 3, "model.n_heads"),
        (dict(dp_shard=1, tp=4), 4, "key/value heads"),
        (dict(dp_shard=1, pp=8), 8, "model.n_layers"),
        (
            dict(dp_shard=1, pp=2, pp_schedule="interleaved_1f1b", pp_microbatches=2, model={"n_layers": 3}),
            2,
            "n_layers",
        ),
        (dict(dp_shard=1, pp=4, pp_schedule="1f1b", pp_microbatches=2), 4, "pp_microbatches"),
        (dict(dp_shard=1, pp=2, model={"tie_embeddings": True}), 2, "tie_embeddings"),
        (dict(dp_shard=3), 3, "train.batch_size"),
        (dict(tp=3), 6, "does not divide"),
    ],
)
def test_impossible_layouts_name_the_field(cfg, world, needle):
    model = cfg.pop("model", None)
    with pytest.raises(LayoutError, match=needle):
        resolve_layout(config(model=model, **cfg), world_size=world)


def test_sequence_parallel_needs_seq_len_divisible_by_tp():
    with pytest.raises(LayoutError, match=r"train\.seq_len"):
        resolve_layout(config(train={"seq_len": 33}, dp_shard=1, tp=2), world_size=2)
    layout = resolve_layout(config(train={"seq_len": 33}, dp_shard=1, tp=2, sequence_parallel=False), world_size=2)
    assert not layout.sequence_parallel


def test_cpu_offload_without_a_gpu_is_a_clear_error(tmp_path):
    from jijian.train.run import TrainSetupError, run_training

    cfg = config(train={"cpu_offload": True, "device": "cpu", "output_dir": tmp_path / "run"})
    with pytest.raises(TrainSetupError, match=r"train\.cpu_offload"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()
