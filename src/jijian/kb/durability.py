"""A collection's vector index kept consistent with its rows across kill -9: watermark, replay, tombstones.

The FAISS index file records the highest rowid it contains (its watermark) and is replaced
atomically (write, fsync, rename). On open, rows above the watermark are replayed into the index,
so the index is always consistent with SQLite whatever moment the process died at.

Deletes and upserts remove the row and record its rowid as a tombstone; searches exclude tombstones
inside FAISS (an ID selector), and `compact()` rebuilds the index without them.

Not thread-safe on its own: the owning collection holds its lock around every call.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from jijian.kb.backend import KBError
from jijian.kb.codec import RowCodec
from jijian.kb.rows import RowStore
from jijian.kb.vector_index import IndexParams, VectorIndex

INDEX_MAGIC = b"JJKBIDX1"


class DurableIndex:
    """The vector index of one collection, loaded from `index.faiss` and brought up to date with the rows."""

    def __init__(self, path: Path, rows: RowStore, codec: RowCodec, params: IndexParams, checkpoint_rows: int) -> None:
        self.path, self.rows, self.codec, self.checkpoint_rows = path, rows, codec, checkpoint_rows
        self.index, self.watermark = self._load(rows.dim, params)
        self.rows_since_checkpoint = self._replay()
        self.tombstones = rows.tombstones()

    @property
    def tombstones(self) -> set[int]:
        """Rowids deleted from SQLite but still inside the vector index (searches exclude them)."""
        return self._tombstones

    @tombstones.setter
    def tombstones(self, rowids: set[int]) -> None:
        self._tombstones = rowids
        # A new array object whenever the set changes: the index caches its exclusion bitmap by identity.
        self.tombstone_array = np.array(sorted(rowids), dtype=np.int64)

    def _load(self, dim: int, params: IndexParams) -> tuple[VectorIndex, int]:
        if not self.path.exists():
            return VectorIndex(dim, params), 0
        data = self.codec.read_file(self.path)
        if data[:8] != INDEX_MAGIC:
            raise KBError(f"{self.path}: not a jijian index file")
        (watermark,) = struct.unpack("<q", data[8:16])
        return VectorIndex.from_bytes(dim, params, data[16:]), watermark

    def _replay(self) -> int:
        # Rows acknowledged after the last index checkpoint: add them now (the write-ahead part).
        rowids, vectors = self.rows.vectors(after=self.watermark)
        self.add(rowids, vectors)
        # Rows deleted after the checkpoint were never in the loaded index, so they need no tombstone.
        self.rows.forget_tombstones(above=self.watermark)
        return len(rowids)

    def add(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Add committed rows (an IVF index is trained, from every live row, once there are enough)."""
        if not len(rowids):
            return
        if self.index.needs_training and self.rows.count() >= self.index.params.train_min_rows:
            all_ids, all_vectors = self.rows.vectors()
            self.index.rebuild(all_ids, all_vectors)
            self.checkpoint()  # before forgetting tombstones: an older index file may still hold them
            self.forget_tombstones()
        else:
            self.index.add(rowids, vectors)

    def written(self, rowids: np.ndarray, vectors: np.ndarray, replaced: list[int]) -> None:
        """Index rows a write committed (tombstoning those it replaced); checkpoint every `checkpoint_rows`."""
        if replaced:
            self.tombstones = self.tombstones | set(replaced)
        self.add(rowids, vectors)
        self.rows_since_checkpoint += len(rowids)
        if self.rows_since_checkpoint >= self.checkpoint_rows:
            self.checkpoint()

    def deleted(self, rowids: list[int]) -> None:
        """Tombstone rows a delete committed; compact once a quarter of the index is tombstones."""
        self.tombstones = self.tombstones | set(rowids)
        if self.index.size and len(self.tombstones) > self.index.size // 4:
            self.compact()

    def checkpoint(self) -> None:
        """Write the index file atomically with its watermark, so reopening replays nothing."""
        watermark = self.rows.last_rowid()
        self.index.optimize_layout()  # amortised: only after the index has grown by a quarter
        payload = INDEX_MAGIC + struct.pack("<q", watermark) + self.index.to_bytes()
        self.codec.write_file(self.path, payload)  # durable: temporary file, fsync, rename, fsync of the directory
        self.watermark, self.rows_since_checkpoint = watermark, 0

    def forget_tombstones(self) -> None:
        """Forget tombstones: the index no longer holds them."""
        self.rows.forget_tombstones()
        self.tombstones = set()

    def compact(self) -> int:
        """Rebuild the index from live rows (drops tombstones); returns how many were dropped."""
        dropped = len(self.tombstones)
        rowids, vectors = self.rows.vectors()
        self.index.rebuild(rowids, vectors)
        self.checkpoint()
        self.forget_tombstones()
        return dropped

    def close(self) -> None:
        """Checkpoint if anything changed since the last one."""
        if self.rows_since_checkpoint or self.tombstones:
            self.checkpoint()
