"""The on-disk format of a packed dataset: token shards, their document indexes, and the manifest.

    DIR/manifest.json          written last: its presence means the build finished
    DIR/train_00000.bin        raw little-endian token ids (uint16, or uint32 for vocabularies > 65536)
    DIR/train_00000.idx.npy    int64 global token offsets of the documents that start in this shard
    DIR/val_00000.bin ...      the validation split, same layout

Every file is written under a temporary name and renamed, so a reader never sees half a shard.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jijian.config.errors import UserInputError
from jijian.files import write_atomic

FORMAT = "jijian-shards/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


class DatasetError(UserInputError):
    """A packed dataset directory is missing, unfinished, corrupt or made for another tokenizer."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class ShardInfo:
    """One shard file as recorded in the manifest."""

    file: str
    tokens: int
    documents: int
    sha256: str

    @property
    def index_file(self) -> str:
        """Name of the shard's document-offset index."""
        return self.file.removesuffix(".bin") + ".idx.npy"


@dataclass
class ShardWriter:
    """Packs a stream of documents' tokens into fixed-size shards of one split, written in order."""

    directory: Path
    split: str
    shard_tokens: int
    dtype: np.dtype
    shards: list[ShardInfo] = field(default_factory=list)
    # Tokens not yet written: the tail of the current shard, carried across a resume.
    pending: list[np.ndarray] = field(default_factory=list)
    pending_starts: list[int] = field(default_factory=list)
    pending_tokens: int = 0
    written_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Tokens written plus pending."""
        return self.written_tokens + self.pending_tokens

    def add(self, ids: np.ndarray) -> list[ShardInfo]:
        """Append one document's tokens; returns the shards this completed (usually none)."""
        self.pending_starts.append(self.total_tokens)
        self.pending.append(ids.astype(self.dtype, copy=False))
        self.pending_tokens += len(ids)
        done = []
        while self.pending_tokens >= self.shard_tokens:
            done.append(self._write(self.shard_tokens))
        return done

    def finish(self) -> list[ShardInfo]:
        """Write the last, smaller shard (if any tokens remain)."""
        return [self._write(self.pending_tokens)] if self.pending_tokens else []

    def _write(self, count: int) -> ShardInfo:
        tokens = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        head, tail = tokens[:count], tokens[count:]
        end = self.written_tokens + count
        starts = np.asarray([s for s in self.pending_starts if s < end], dtype=np.int64)
        name = f"{self.split}_{len(self.shards):05d}.bin"
        data = np.ascontiguousarray(head).astype(self.dtype.newbyteorder("<"), copy=False)
        info = ShardInfo(name, count, len(starts), hashlib.sha256(data.data).hexdigest())
        index = io.BytesIO()
        np.save(index, starts)
        write_atomic(self.directory / info.index_file, index.getbuffer())
        write_atomic(self.directory / name, data.data)
        self.shards.append(info)
        self.pending = [tail] if len(tail) else []
        self.pending_starts = [s for s in self.pending_starts if s >= end]
        self.pending_tokens = len(tail)
        self.written_tokens = end
        return info


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a finished build; a clear error when the directory holds none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        hint = (
            " (the build did not finish: run `jijian data build` again to resume it)"
            if any((Path(directory) / name).is_file() for name in ("build_state.json", "build_state.pkl"))
            else ""
        )
        raise DatasetError(f"{directory}: no {MANIFEST}; not a built dataset{hint}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable manifest: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def check_tokenizer(manifest: dict[str, Any], fingerprint: str, where: Path | str) -> None:
    """Refuse shards made with another tokenizer, naming both fingerprints."""
    built_with = manifest.get("tokenizer", {}).get("fingerprint")
    if built_with != fingerprint:
        raise DatasetError(
            f"{where}: shards were tokenised with tokenizer {built_with} but this run uses tokenizer "
            f"{fingerprint}; rebuild the data with `jijian data build` or use the matching tokenizer"
        )


def split_shards(manifest: dict[str, Any], split: str) -> list[ShardInfo]:
    """The shard list of one split."""
    return [ShardInfo(**s) for s in manifest["splits"][split]["shards"]]


def verify_checksums(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Names of shards whose bytes no longer match their recorded sha256."""
    bad = []
    for split in SPLITS:
        for shard in split_shards(manifest, split):
            digest = hashlib.sha256()
            with open(Path(directory) / shard.file, "rb") as handle:
                for block in iter(functools.partial(handle.read, 1 << 22), b""):
                    digest.update(block)
            if digest.hexdigest() != shard.sha256:
                bad.append(shard.file)
    return bad
