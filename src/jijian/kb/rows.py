"""A collection's rows in SQLite: records, their lexical index, tombstones and ingestion bookkeeping.

Every write is one SQLite transaction in WAL mode with `synchronous=FULL`, so a write is on disk
when the call returns (NORMAL could lose the last commits on power loss, and an acknowledged insert
must survive). Rowids only grow (AUTOINCREMENT), which is what lets the index file name the rows it
holds by one number (`jijian.kb.durability`). Field values go through the collection's codec
(`jijian.kb.codec`), so this module never asks whether they are sealed.

Not thread-safe on its own: the owning collection holds its lock around every call.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jijian.kb.backend import OUTPUT_FIELDS, KBError, Record
from jijian.kb.codec import RowCodec


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One validated record in its stored form, ready to insert."""

    id: str
    vector: bytes | str
    text: bytes | str
    metadata: bytes | str
    readers: list[str] | None
    lexical: str


class RowStore:
    """The SQLite database of one collection (`rows.sqlite`)."""

    def __init__(self, path: Path, codec: RowCodec, dim: int) -> None:
        self.codec, self.dim = codec, dim
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # Reads through a memory map skip a read() call per page: fetching a search's hits costs half.
        self.db.execute("PRAGMA mmap_size=1073741824")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS rows (
                rowid INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                vector BLOB NOT NULL,
                text TEXT NOT NULL,
                metadata TEXT NOT NULL,
                readers TEXT
            );
            CREATE TABLE IF NOT EXISTS tombstones (rowid INTEGER PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS sources (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, ids TEXT NOT NULL);
            CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text);
            """
        )
        # rowid -> id of every live row, so a search answers ids without reading SQLite. Changed only
        # after a write commits, so it always mirrors the committed rows.
        self.ids: dict[int, str] = dict(self.db.execute("SELECT rowid, id FROM rows"))

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    # -- encoding -------------------------------------------------------------------------------

    def stored_row(self, record_id: str, vector: np.ndarray, record: Record, readers: list[str] | None) -> StoredRow:
        """A record in its stored form: fields through the codec, text through the lexical index's terms."""
        text = record.text or ""
        store = self.codec.store
        return StoredRow(
            record_id,
            store(record_id, "vector", vector.tobytes()),
            store(record_id, "text", text.encode("utf-8")),
            store(record_id, "metadata", json.dumps(record.metadata).encode("utf-8")),
            readers,
            self.codec.lexical(text),
        )

    def text_of(self, record_id: str, stored: Any) -> str:
        """A stored text in clear."""
        text: str = self.codec.load(record_id, "text", stored)
        return text

    def metadata_of(self, record_id: str, stored: Any) -> dict[str, Any]:
        """A stored metadata object, decoded."""
        metadata: dict[str, Any] = json.loads(self.codec.load(record_id, "metadata", stored))
        return metadata

    # -- writes ---------------------------------------------------------------------------------

    def write(self, rows: Sequence[StoredRow], replace: bool, collection: str) -> tuple[list[int], list[int]]:
        """Insert `rows` in one transaction (replacing rows with the same ids if `replace`).

        Returns (new rowids, rowids replaced); the replaced ones are tombstoned.
        """
        ids = [row.id for row in rows]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            replaced: list[int] = []
            if replace:
                replaced = self._delete_rows(ids)
            else:
                taken = self.db.execute(
                    "SELECT id FROM rows WHERE id IN (SELECT value FROM json_each(?)) LIMIT 1", (json.dumps(ids),)
                ).fetchone()
                if taken:
                    raise KBError(f"id {taken[0]!r} already exists in {collection!r} (use upsert to replace it)")
            new_rowids = []
            for row in rows:
                cursor = self.db.execute(
                    "INSERT INTO rows (id, vector, text, metadata, readers) VALUES (?, ?, ?, ?, ?)",
                    (
                        row.id,
                        row.vector,
                        row.text,
                        row.metadata,
                        None if row.readers is None else json.dumps(row.readers),
                    ),
                )
                rowid = cursor.lastrowid
                assert rowid is not None
                new_rowids.append(rowid)
                self.db.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (rowid, row.lexical))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for rowid in replaced:
            del self.ids[rowid]
        self.ids.update(zip(new_rowids, ids, strict=True))
        return new_rowids, replaced

    def delete(self, ids: Sequence[str]) -> list[int]:
        """Delete rows by id in one transaction; returns their rowids (now tombstones)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._delete_rows(ids)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for rowid in deleted:
            del self.ids[rowid]
        return deleted

    def _delete_rows(self, ids: Sequence[str]) -> list[int]:
        doomed = [
            row[0]
            for row in self.db.execute(
                "SELECT rowid FROM rows WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),)
            )
        ]
        for rowid in doomed:
            self.db.execute("DELETE FROM rows WHERE rowid = ?", (rowid,))
            self.db.execute("DELETE FROM fts WHERE rowid = ?", (rowid,))
            self.db.execute("INSERT OR IGNORE INTO tombstones (rowid) VALUES (?)", (rowid,))
        return doomed

    def reindex_lexical(self) -> None:
        """Rebuild the FTS5 index with the current terms, in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM fts")
            for rowid, record_id, text in self.db.execute("SELECT rowid, id, text FROM rows").fetchall():
                lexical = self.codec.lexical(self.text_of(record_id, text))
                self.db.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (rowid, lexical))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- tombstones and the rowid sequence ------------------------------------------------------

    def tombstones(self) -> set[int]:
        """Rowids deleted here but perhaps still in the index file."""
        return {row[0] for row in self.db.execute("SELECT rowid FROM tombstones")}

    def forget_tombstones(self, above: int = 0) -> None:
        """Forget the tombstones above a rowid (all by default)."""
        self.db.execute("DELETE FROM tombstones WHERE rowid > ?", (above,))

    def last_rowid(self) -> int:
        """The highest rowid ever given out (deleted rows included)."""
        found = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name='rows'").fetchone()
        return found[0] if found else 0

    # -- reads ----------------------------------------------------------------------------------

    def count(self) -> int:
        """Live rows."""
        count: int = self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        return count

    def vectors(self, after: int = 0, rowids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, vectors) of the live rows after a rowid, or of the given rowids, in rowid order."""
        if rowids is None:
            cursor = self.db.execute("SELECT rowid, vector, id FROM rows WHERE rowid > ? ORDER BY rowid", (after,))
        else:
            cursor = self.db.execute(
                "SELECT rowid, vector, id FROM rows WHERE rowid IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                (json.dumps(list(rowids)),),
            )
        found = cursor.fetchall()
        ids_out = np.array([row[0] for row in found], dtype=np.int64)
        blobs = (self.codec.load(row[2], "vector", row[1]) for row in found)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, self.dim)
        return ids_out, vectors

    def get(self, record_id: str) -> Record | None:
        """The record with this id, or None."""
        row = self.db.execute(
            "SELECT id, vector, text, metadata, readers FROM rows WHERE id = ?", (record_id,)
        ).fetchone()
        if row is None:
            return None
        vector = np.frombuffer(self.codec.load(row[0], "vector", row[1]), dtype=np.float32).copy()
        readers = None if row[4] is None else json.loads(row[4])
        return Record(row[0], vector, self.text_of(row[0], row[2]), self.metadata_of(row[0], row[3]), readers)

    def restricted(self) -> list[tuple[str, str, list[str]]]:
        """(id, text, readers) of every row with an ACL."""
        rows = self.db.execute("SELECT id, text, readers FROM rows WHERE readers IS NOT NULL").fetchall()
        return [(record_id, self.text_of(record_id, text), json.loads(readers)) for record_id, text, readers in rows]

    def metadata_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(rowid, metadata) of every live row, decoded: for filters that cannot run in SQL."""
        for rowid, record_id, metadata in self.db.execute("SELECT rowid, id, metadata FROM rows"):
            yield rowid, self.metadata_of(record_id, metadata)

    def columns(self, rowids: Sequence[int], columns: tuple[str, ...]) -> dict[int, tuple[Any, Any, Any]]:
        """rowid -> (text, metadata JSON, readers JSON) in clear, NULL for the columns not asked for; ONE read."""
        wanted = sorted(set(rowids))
        # A literal IN list is the fastest lookup for a search's few hits; json_each keeps big batches
        # under SQLite's limit on bound parameters.
        where = f"IN ({','.join('?' * len(wanted))})" if len(wanted) <= 500 else "IN (SELECT value FROM json_each(?))"
        params = wanted if len(wanted) <= 500 else [json.dumps(wanted)]
        # Always select all three columns (NULL for those not asked for): one row shape, decoded positionally.
        picked = ", ".join(column if column in columns else "NULL" for column in OUTPUT_FIELDS)
        found = self.db.execute(f"SELECT rowid, {picked} FROM rows WHERE rowid {where}", params)
        return self.codec.load_hit_rows(found, self.ids)

    # -- ingestion bookkeeping ------------------------------------------------------------------

    def source(self, path: str) -> tuple[str, list[str]] | None:
        """(sha256, ids) recorded for a source path."""
        row = self.db.execute(
            "SELECT sha256, ids FROM sources WHERE path = ?", (self.codec.source_name(path),)
        ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def record_source(self, path: str, sha256: str, ids: Sequence[str]) -> None:
        """Remember a source path's hash and the ids of its records."""
        self.db.execute(
            "INSERT OR REPLACE INTO sources (path, sha256, ids) VALUES (?, ?, ?)",
            (self.codec.source_name(path), sha256, json.dumps(list(ids))),
        )
