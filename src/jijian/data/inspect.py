"""What `jijian data inspect` shows: totals, shards, filter and duplicate counts, decoded samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jijian.data.build import TOKENIZER_DIR
from jijian.data.loader import PackedTokens
from jijian.data.shards import DatasetError, check_tokenizer, read_manifest, verify_checksums
from jijian.model.tokenizer import Tokenizer


def sample_documents(
    tokens: PackedTokens, tokenizer: Tokenizer, count: int, seed: int = 0, max_tokens: int = 200
) -> list[str]:
    """Up to `count` randomly chosen documents of a split, decoded (each cut at `max_tokens`)."""
    n_docs = len(tokens.doc_starts)
    if n_docs == 0:
        return []
    chosen = np.sort(np.random.default_rng(seed).choice(n_docs, size=min(count, n_docs), replace=False))
    ends = [*tokens.doc_starts[1:].tolist(), len(tokens)]
    samples = []
    for doc in chosen:
        start = int(tokens.doc_starts[doc])
        length = min(int(ends[doc]) - start, max_tokens)
        ids = np.empty(length, dtype=np.int64)
        tokens.read_into(start, ids)
        samples.append(tokenizer.decode(ids.tolist()))
    return samples


def describe_dataset(directory: Path, *, samples: int = 3, verify: bool = False, seed: int = 0) -> dict[str, Any]:
    """A summary of a built dataset: manifest totals and stats, shards, decoded samples, checksum result."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    tokenizer_dir = directory / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise DatasetError(f"{directory}: no {TOKENIZER_DIR}/ directory to decode samples with")
    tokenizer = Tokenizer.load(tokenizer_dir)
    check_tokenizer(manifest, tokenizer.fingerprint(), tokenizer_dir)
    summary: dict[str, Any] = {
        "directory": str(directory),
        "tokenizer": manifest["tokenizer"],
        "dtype": manifest["dtype"],
        "shard_tokens": manifest["shard_tokens"],
        "splits": manifest["splits"],
        "stats": manifest["stats"],
        "samples": {},
    }
    for split in manifest["splits"]:
        if manifest["splits"][split]["tokens"]:
            summary["samples"][split] = sample_documents(PackedTokens(directory, split), tokenizer, samples, seed)
    if verify:
        summary["corrupt_shards"] = verify_checksums(directory, manifest)
    return summary
