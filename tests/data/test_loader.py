"""The packed loader: exact coverage across ranks, resume equivalence, shard-crossing reads, document ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jijian.config import DataConfig, parse_config
from jijian.data import PackedLoader, PackedTokens, build_dataset, open_train_loader
from jijian.data.shards import DatasetError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tokenizer, corpus_texts):
    root = tmp_path_factory.mktemp("packed")
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[:12]), encoding="utf-8")
    # Small shards (2048 tokens) so that many sequences straddle two shards.
    cfg = DataConfig(
        sources=[str(corpus)],
        output_dir=root / "out",
        workers=0,
        shard_size_mb=4096 / (1 << 20),
        validation_fraction=0.2,
    )
    return build_dataset(cfg, tokenizer).directory


def all_tokens(tokens: PackedTokens) -> np.ndarray:
    return np.concatenate([np.asarray(s, dtype=np.int64) for s in tokens.shards])


def test_reads_cross_shard_boundaries(dataset):
    tokens = PackedTokens(dataset)
    assert len(tokens.shards) > 3
    flat = all_tokens(tokens)
    for start in (0, 2040, 4090, len(flat) - 30):
        out = np.empty(30, dtype=np.int64)
        tokens.read_into(start, out)
        assert np.array_equal(out, flat[start : start + 30])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_one_epoch_across_ranks_yields_every_sequence_exactly_once(dataset, world_size):
    tokens = PackedTokens(dataset)
    flat = all_tokens(tokens)
    seq_len, batch_size = 32, 4
    loaders = [
        PackedLoader(tokens, seq_len=seq_len, batch_size=batch_size, seed=7, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    n = loaders[0].num_sequences
    assert n == (len(flat) - 1) // seq_len
    batches = int(np.ceil(n / (batch_size * world_size)))
    seen: dict[int, int] = {}
    for rank, loader in enumerate(loaders):
        for b in range(batches):
            inputs, targets = next(loader)
            assert inputs.dtype == torch.int64 and inputs.shape == (batch_size, seq_len)
            assert torch.equal(inputs[:, 1:], targets[:, :-1])
            for row, index in enumerate(loader.sequence_indices(b)):
                position = (b * batch_size + row) * world_size + rank
                window = flat[index * seq_len : index * seq_len + seq_len + 1]
                assert np.array_equal(inputs[row].numpy(), window[:-1])
                assert np.array_equal(targets[row].numpy(), window[1:])
                if position < n:  # the first epoch of the global stream
                    assert index not in seen, f"sequence {index} served twice"
                    seen[index] = rank
        loader.close()
    assert sorted(seen) == list(range(n))


def test_shuffle_depends_on_the_seed_and_changes_each_epoch(dataset):
    tokens = PackedTokens(dataset)
    a = PackedLoader(tokens, seq_len=32, batch_size=4, seed=1, prefetch=0)
    b = PackedLoader(tokens, seq_len=32, batch_size=4, seed=2, prefetch=0)
    assert not np.array_equal(a.sequence_indices(0), b.sequence_indices(0))
    epoch = a.num_sequences // 4
    assert not np.array_equal(a.sequence_indices(0), a.sequence_indices(epoch))
    again = PackedLoader(tokens, seq_len=32, batch_size=4, seed=1, prefetch=0)
    assert np.array_equal(a.sequence_indices(3), again.sequence_indices(3))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_a_resumed_loader_yields_exactly_the_batches_of_an_uninterrupted_one(dataset, prefetch):
    tokens = PackedTokens(dataset)
    make = lambda: PackedLoader(tokens, seq_len=512, batch_size=8, seed=3, rank=1, world_size=2, prefetch=prefetch)  # noqa: E731
    reference = make()
    # Long enough to cross two epoch boundaries, whatever the split puts into training.
    total = int(2 * reference.batches_per_epoch) + 6
    expected = [next(reference) for _ in range(total)]
    first = make()
    for _ in range(17):
        next(first)
    state = first.state_dict()
    first.close()
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # a checkpoint stores it as plain data
    for want in expected[17:]:
        got = next(resumed)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    resumed.close()
    reference.close()


def test_state_from_a_different_stream_is_refused(dataset):
    tokens = PackedTokens(dataset)
    state = PackedLoader(tokens, seq_len=64, batch_size=4, world_size=2, prefetch=0).state_dict()
    with pytest.raises(DatasetError, match="world_size"):
        PackedLoader(tokens, seq_len=64, batch_size=4, world_size=1, prefetch=0).load_state_dict(state)


def test_document_ids_mark_boundaries_after_each_eos(dataset, tokenizer):
    tokens = PackedTokens(dataset)
    loader = PackedLoader(tokens, seq_len=128, batch_size=8, document_ids=True, prefetch=0)
    crossings = 0
    for _ in range(int(np.ceil(loader.batches_per_epoch))):
        inputs, _, docs = next(loader)
        assert docs.shape == inputs.shape and bool((docs[:, 0] == 0).all())
        step = docs[:, 1:] - docs[:, :-1]
        after_eos = inputs[:, :-1] == tokenizer.eos_id
        assert torch.equal(step, after_eos.long())
        crossings += int(after_eos.sum())
    assert crossings > 0


def test_open_train_loader_builds_then_trains_from_shards(tmp_path, tokenizer, corpus_texts):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts[:10]), encoding="utf-8")
    tokenizer.save(tmp_path / "tok")
    config = parse_config(
        {
            "tokenizer": {"path": "tok"},
            "data": {"sources": [str(corpus)], "output_dir": "data", "validation_fraction": 0.2, "workers": 0},
            "train": {"seq_len": 32, "batch_size": 2, "eval_batches": 3, "warmup_steps": 0, "steps": 5},
        },
        base_dir=tmp_path,
    )
    data = open_train_loader(config, tokenizer, rank=0, world_size=2)
    assert data.directory == tmp_path / "data" and (tmp_path / "data" / "manifest.json").is_file()
    inputs, _targets = next(data.loader)
    assert inputs.shape == (2, 32) and len(data.eval_batches) == 3
    data.loader.close()
    config.data.sources = []  # a built directory alone is enough
    assert open_train_loader(config, tokenizer).train_tokens == data.train_tokens
    config.data.output_dir = tmp_path / "nothing"
    with pytest.raises(DatasetError, match=r"data\.sources is empty"):
        open_train_loader(config, tokenizer)
