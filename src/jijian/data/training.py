"""The trainer's door to the data: build (or reuse) the shards of [data], then open a rank's loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from jijian.config import DeployConfig
from jijian.data.build import build_dataset
from jijian.data.chat import ChatBatches, chat_batches
from jijian.data.loader import PackedLoader, PackedTokens
from jijian.data.pii import Redactor, redact_pii
from jijian.data.shards import DatasetError
from jijian.data.sources import resolve_inputs
from jijian.model.tokenizer import Tokenizer


@dataclass
class TrainingData:
    """A rank's training batches, the fixed validation batches, and the dataset they come from."""

    loader: PackedLoader | ChatBatches
    eval_batches: list[tuple[torch.Tensor, ...]]
    directory: Path
    manifest: dict[str, Any]
    train_tokens: int  # tokens in the training split (chat: the assistant tokens trained on)


def open_train_loader(
    config: DeployConfig,
    tokenizer: Tokenizer,
    rank: int = 0,
    world_size: int = 1,
    *,
    build: bool = True,
    console: Console | None = None,
    redactor: Redactor | None = redact_pii,
) -> TrainingData:
    """Shards of [data] (built from its sources first when they are missing or stale) as this rank's loader.

    In a multi-process run let one rank build (`build=True`) and the others wait, then open with
    `build=False`. With no sources, [data].output_dir must already hold a built dataset.
    """
    data, train = config.data, config.train
    if data.format == "chat":
        return _open_chat_data(config, tokenizer)
    if data.sources and build:
        build_dataset(data, tokenizer, console=console, redactor=redactor)
    elif not data.sources and not (data.output_dir / "manifest.json").is_file():
        raise DatasetError(
            f"data.sources is empty and data.output_dir ({data.output_dir}) holds no built dataset: "
            "name the files, directories or globs to train on, or run `jijian data build`"
        )
    fingerprint = tokenizer.fingerprint()
    tokens = PackedTokens(data.output_dir, "train", tokenizer_fingerprint=fingerprint)
    loader = PackedLoader(
        tokens, seq_len=train.seq_len, batch_size=train.batch_size, seed=train.seed, rank=rank, world_size=world_size
    )
    eval_batches: list[tuple[torch.Tensor, ...]] = []
    val_tokens = tokens.manifest["splits"]["val"]["tokens"]
    if val_tokens > train.seq_len + 1:
        val = PackedTokens(data.output_dir, "val", tokenizer_fingerprint=fingerprint)
        val_loader = PackedLoader(val, seq_len=train.seq_len, batch_size=train.batch_size, shuffle=False, prefetch=0)
        eval_batches = val_loader.fixed_batches(train.eval_batches)
    return TrainingData(loader, eval_batches, data.output_dir, tokens.manifest, len(tokens))


def _open_chat_data(config: DeployConfig, tokenizer: Tokenizer) -> TrainingData:
    """[data] format = "chat": dialogues read, rendered and packed in memory (SFT sets are small)."""
    data, train = config.data, config.train
    if not data.sources:
        raise DatasetError("data.format = 'chat' needs data.sources: JSONL files of {\"messages\": [...]} rows")
    files = resolve_inputs(data.sources)
    loader, val, count = chat_batches(
        files,
        tokenizer,
        seq_len=train.seq_len,
        batch_size=train.batch_size,
        seed=train.seed,
        validation_fraction=data.validation_fraction,
        field=data.messages_field,
    )
    eval_batches = val.fixed_batches(train.eval_batches) if val is not None else []
    manifest = {"stats": {"input_files": len(files), "dialogues": count}}
    return TrainingData(loader, eval_batches, data.output_dir, manifest, loader.tokens)
