"""The embedded collection store: SQLite (rows, metadata, FTS5) + a FAISS index, durable across kill -9.

Durability: every write is one SQLite transaction in WAL mode with `synchronous=FULL`, so a write
is on disk when the call returns (NORMAL could lose the last commits on power loss, and an
acknowledged insert must survive). Rowids only grow (AUTOINCREMENT); the FAISS index file records
the highest rowid it contains (its watermark) and is replaced atomically (write, fsync, rename).
On open, rows above the watermark are replayed into the index, so the index is always consistent
with SQLite whatever moment the process died at.

Deletes and upserts remove the row and record its rowid as a tombstone; searches exclude
tombstones inside FAISS (an ID selector), and `compact()` rebuilds the index without them.

A collection created with a key (`[guard] encrypt_at_rest`) keeps text, metadata, vectors and the
index file encrypted and its lexical index blinded (`jijian.kb.sealing`); opening it needs the key.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from jijian.config import KBConfig
from jijian.config.errors import UserInputError
from jijian.files import write_atomic, write_json_atomic
from jijian.guard.crypto import decrypt_bytes, encrypt_bytes_to_file
from jijian.guard.principals import Principal, validate_readers
from jijian.kb.filters import matches, parse_filter, to_sql
from jijian.kb.lexical import LEXICAL_SCHEME, fts_query, index_text
from jijian.kb.sealing import CollectionKeyError, RowCipher
from jijian.kb.vector_index import IndexParams, VectorIndex, prepare

SEARCH_MODES = ("vector", "lexical", "hybrid")
OUTPUT_FIELDS = ("text", "metadata", "readers")  # what a hit may carry besides its id and score
RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al.): damps the weight of the very top ranks
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INDEX_MAGIC = b"JJKBIDX1"


class KBError(UserInputError):
    """A bad request to the knowledge base (unknown collection, wrong dimension, duplicate id...)."""


class CollectionNotFound(KBError):
    """The named collection does not exist."""


@dataclass
class Record:
    """One row of a collection."""

    id: str | None
    vector: Sequence[float] | np.ndarray | None
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    readers: list[str] | None = None


@dataclass(slots=True)
class Hit:
    """One search result; `score` is similarity (higher is better) or the fused RRF score.

    Fields left out of a search's `output_fields` keep their empty defaults.
    """

    id: str
    score: float
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    readers: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class Hits(Sequence[Hit]):
    """The hits of a search for ids and scores only, held as two parallel lists.

    Each `Hit` is made when it is read: a search answered from memory costs little more than the
    FAISS call itself, and building ten objects per query would be a measurable share of it. It
    compares equal to any sequence of the same hits, and reads like a list of them.
    """

    __slots__ = ("ids", "scores")

    def __init__(self, ids: list[str], scores: list[float]) -> None:
        self.ids = ids
        self.scores = scores

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Hits(self.ids[index], self.scores[index])
        return Hit(self.ids[index], self.scores[index])

    def __iter__(self) -> Iterator[Hit]:
        return map(Hit, self.ids, self.scores)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass(frozen=True)
class SearchOptions:
    """Tuning knobs shared by every collection of a store."""

    exact_below: int = 20_000  # filtered sets at most this large are searched exactly (recall 1.0)
    checkpoint_rows: int = 10_000  # rewrite the index file after this many new rows (bounds replay time)


def output_columns(output_fields: Sequence[str] | None) -> tuple[str, ...]:
    """The row fields a search must fetch: all of OUTPUT_FIELDS by default, none for `[]` (ids and scores)."""
    if output_fields is None:
        return OUTPUT_FIELDS
    if isinstance(output_fields, str):
        raise KBError(f"output_fields: expected a list of field names, got the string {output_fields!r}")
    for name in output_fields:
        if name not in OUTPUT_FIELDS and name not in ("id", "score"):
            raise KBError(f"output_fields: unknown field {name!r} (choose from {', '.join(OUTPUT_FIELDS)})")
    return tuple(name for name in OUTPUT_FIELDS if name in output_fields)


def write_spec(directory: Path, spec: dict[str, Any]) -> None:
    """Replace a collection's collection.json durably (temporary file, fsync, rename, fsync of the directory)."""
    write_json_atomic(directory / "collection.json", spec)


class Collection:
    """One collection: a directory with `rows.sqlite`, `index.faiss` and `collection.json`."""

    def __init__(self, directory: Path, options: SearchOptions | None = None, key: bytes | None = None) -> None:
        self.directory = directory
        self.options = options or SearchOptions()
        spec = json.loads((directory / "collection.json").read_text(encoding="utf-8"))
        # None for a collection stored in clear; a missing or wrong key fails here, before any read.
        self.cipher = RowCipher.from_spec(spec, key, directory / "collection.json")
        if key is not None and self.cipher is None:
            # With encryption at rest on, a plaintext collection is refused rather than served (and added to).
            raise CollectionKeyError(
                f"{directory / 'collection.json'}: collection {spec['name']!r} is stored in plaintext but "
                "[guard] encrypt_at_rest is on; rebuild it with the key (jijian up, or jijian kb ingest into a "
                "new collection) and delete the plaintext copy"
            )
        self.name: str = spec["name"]
        self.dim: int = spec["dim"]
        self.params = IndexParams(**spec["index"])
        self.db = sqlite3.connect(directory / "rows.sqlite", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # Reads through a memory map skip a read() call per page: fetching a search's hits costs half.
        self.db.execute("PRAGMA mmap_size=1073741824")
        self._create_tables()
        if spec.get("lexical") != LEXICAL_SCHEME:
            self._reindex_lexical(spec)
        self.index, self.watermark = self._load_index()
        self.rows_since_checkpoint = self._replay()
        self.tombstones = {row[0] for row in self.db.execute("SELECT rowid FROM tombstones")}
        # rowid -> id of every live row, so a search answers ids without reading SQLite. Changed only
        # after a write commits, so it always mirrors the committed rows.
        self._ids: dict[int, str] = dict(self.db.execute("SELECT rowid, id FROM rows"))
        self._filter_cache: dict[tuple[str, str], tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]] = {}

    @property
    def tombstones(self) -> set[int]:
        """Rowids deleted from SQLite but still inside the vector index (searches exclude them)."""
        return self._tombstones

    @tombstones.setter
    def tombstones(self, rowids: set[int]) -> None:
        self._tombstones = rowids
        # A new array object whenever the set changes: the index caches its exclusion bitmap by identity.
        self._tombstone_array = np.array(sorted(rowids), dtype=np.int64)

    def _create_tables(self) -> None:
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

    def _reindex_lexical(self, spec: dict[str, Any]) -> None:
        """Rebuild the FTS5 index with the current terms (a collection made before them), then record the scheme.

        One transaction: a crash before collection.json is rewritten only means the rebuild runs again.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM fts")
            for rowid, record_id, text in self.db.execute("SELECT rowid, id, text FROM rows").fetchall():
                if self.cipher is None:
                    lexical = index_text(text)
                else:
                    lexical = self.cipher.blind_text(self.cipher.open(record_id, "text", text).decode("utf-8"))
                self.db.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (rowid, lexical))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        write_spec(self.directory, {**spec, "lexical": LEXICAL_SCHEME})

    # -- the index file and crash recovery ------------------------------------------------------

    def _load_index(self) -> tuple[VectorIndex, int]:
        path = self.directory / "index.faiss"
        if not path.exists():
            return VectorIndex(self.dim, self.params), 0
        data = path.read_bytes() if self.cipher is None else decrypt_bytes(path, self.cipher.file_key)
        if data[:8] != _INDEX_MAGIC:
            raise KBError(f"{path}: not a jijian index file")
        (watermark,) = struct.unpack("<q", data[8:16])
        return VectorIndex.from_bytes(self.dim, self.params, data[16:]), watermark

    def _replay(self) -> int:
        # Rows acknowledged after the last index checkpoint: add them now (the write-ahead part).
        rowids, vectors = self._live_rows(after=self.watermark)
        self._index_add(rowids, vectors)
        # Rows deleted after the checkpoint were never in the loaded index, so they need no tombstone.
        self.db.execute("DELETE FROM tombstones WHERE rowid > ?", (self.watermark,))
        return len(rowids)

    def _live_rows(self, after: int = 0, rowids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if rowids is None:
            cursor = self.db.execute("SELECT rowid, vector, id FROM rows WHERE rowid > ? ORDER BY rowid", (after,))
        else:
            ids = list(rowids)
            cursor = self.db.execute(
                "SELECT rowid, vector, id FROM rows WHERE rowid IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                (json.dumps(ids),),
            )
        found = cursor.fetchall()
        ids_out = np.array([row[0] for row in found], dtype=np.int64)
        blobs = (row[1] if self.cipher is None else self.cipher.open(row[2], "vector", row[1]) for row in found)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, self.dim)
        return ids_out, vectors

    def _index_add(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(rowids):
            return
        if self.index.needs_training and self.count() >= self.params.train_min_rows:
            all_ids, all_vectors = self._live_rows()
            self.index.rebuild(all_ids, all_vectors)
            self.checkpoint()  # before forgetting tombstones: an older index file may still hold them
            self.tombstones_clear()
        else:
            self.index.add(rowids, vectors)

    def checkpoint(self) -> None:
        """Write the index file atomically with its watermark, so reopening replays nothing."""
        watermark = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name='rows'").fetchone()
        watermark = watermark[0] if watermark else 0
        self.index.optimize_layout()  # amortised: only after the index has grown by a quarter
        payload = _INDEX_MAGIC + struct.pack("<q", watermark) + self.index.to_bytes()
        if self.cipher is not None:  # sealed, through the same durable write
            encrypt_bytes_to_file(payload, self.directory / "index.faiss", self.cipher.file_key)
        else:
            write_atomic(self.directory / "index.faiss", payload)
        self.watermark, self.rows_since_checkpoint = watermark, 0

    def tombstones_clear(self) -> None:
        """Forget tombstones: the index no longer holds them."""
        self.db.execute("DELETE FROM tombstones")
        self.tombstones = set()

    def set_ef_search(self, ef_search: int) -> None:
        """Change the HNSW search breadth of this open collection (recall/speed trade-off)."""
        self.params = self.index.params = replace(self.params, ef_search=ef_search)

    def compact(self) -> int:
        """Rebuild the index from live rows (drops tombstones); returns how many were dropped."""
        dropped = len(self.tombstones)
        rowids, vectors = self._live_rows()
        self.index.rebuild(rowids, vectors)
        self.checkpoint()
        self.tombstones_clear()
        return dropped

    def close(self) -> None:
        """Checkpoint the index and close SQLite."""
        if self.rows_since_checkpoint or self.tombstones:
            self.checkpoint()
        self.db.close()

    # -- writes ---------------------------------------------------------------------------------

    def _check_vectors(self, records: Sequence[Record]) -> np.ndarray:
        vectors = []
        for i, record in enumerate(records):
            with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
                vector = np.asarray(record.vector, dtype=np.float32)
            if vector.ndim != 1 or vector.shape[0] != self.dim:
                raise KBError(
                    f"record {i} ({record.id!r}): vector has dimension {vector.shape[-1] if vector.ndim else 0}, "
                    f"collection {self.name!r} expects {self.dim}"
                )
            if not np.all(np.isfinite(vector)):
                raise KBError(f"record {i} ({record.id!r}): vector contains NaN or infinity")
            vectors.append(vector)
        return prepare(np.stack(vectors), self.params.metric) if vectors else np.zeros((0, self.dim), np.float32)

    def _write(self, records: Sequence[Record], replace: bool) -> list[str]:
        vectors = self._check_vectors(records)
        rows, ids = [], []
        for i, record in enumerate(records):
            record_id = record.id if record.id is not None else uuid.uuid4().hex
            if not isinstance(record_id, str) or not record_id:
                raise KBError(f"record {i}: id must be a non-empty string")
            if not isinstance(record.metadata, dict):
                raise KBError(f"record {i} ({record_id!r}): metadata must be a JSON object")
            readers = validate_readers(record.readers, where=f"record {i} ({record_id!r}) readers")
            text, metadata, blob = record.text or "", json.dumps(record.metadata), vectors[i].tobytes()
            lexical = index_text(text) if self.cipher is None else self.cipher.blind_text(text)
            if self.cipher is not None:
                text, metadata, blob = (
                    self.cipher.seal(record_id, "text", text.encode("utf-8")),
                    self.cipher.seal(record_id, "metadata", metadata.encode("utf-8")),
                    self.cipher.seal(record_id, "vector", blob),
                )
            rows.append((record_id, blob, text, metadata, readers, lexical))
            ids.append(record_id)
        if len(set(ids)) != len(ids):
            raise KBError("records: the same id appears twice in one request")
        new_rowids = []
        self._filter_cache.clear()
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
                    raise KBError(f"id {taken[0]!r} already exists in {self.name!r} (use upsert to replace it)")
            for record_id, blob, text, metadata, readers, lexical in rows:
                cursor = self.db.execute(
                    "INSERT INTO rows (id, vector, text, metadata, readers) VALUES (?, ?, ?, ?, ?)",
                    (record_id, blob, text, metadata, None if readers is None else json.dumps(readers)),
                )
                new_rowids.append(cursor.lastrowid)
                self.db.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (cursor.lastrowid, lexical))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self.tombstones = {row[0] for row in self.db.execute("SELECT rowid FROM tombstones")}
            raise
        for rowid in replaced:
            del self._ids[rowid]
        self._ids.update(zip(new_rowids, ids, strict=True))
        self._index_add(np.array(new_rowids, dtype=np.int64), vectors)
        self.rows_since_checkpoint += len(new_rowids)
        if self.rows_since_checkpoint >= self.options.checkpoint_rows:
            self.checkpoint()
        return ids

    def insert(self, records: Sequence[Record]) -> list[str]:
        """Add new records (ids must be new); returns their ids. Durable when it returns."""
        return self._write(records, replace=False)

    def upsert(self, records: Sequence[Record]) -> list[str]:
        """Add or replace records by id; returns their ids."""
        return self._write(records, replace=True)

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
        self.tombstones = self.tombstones | set(doomed)
        return doomed

    def delete(self, ids: Sequence[str]) -> int:
        """Delete records by id; returns how many existed."""
        self._filter_cache.clear()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._delete_rows(ids)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self.tombstones = {row[0] for row in self.db.execute("SELECT rowid FROM tombstones")}
            raise
        for rowid in deleted:
            del self._ids[rowid]
        if self.index.size and len(self.tombstones) > self.index.size // 4:
            self.compact()
        return len(deleted)

    # -- reads ----------------------------------------------------------------------------------

    def count(self) -> int:
        """Live records."""
        return self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]

    def ids(self) -> list[str]:
        """The id of every live record (from memory: no read)."""
        return list(self._ids.values())

    def get(self, record_id: str) -> Record | None:
        """The record with this id, or None."""
        row = self.db.execute(
            "SELECT id, vector, text, metadata, readers FROM rows WHERE id = ?", (record_id,)
        ).fetchone()
        if row is None:
            return None
        vector = np.frombuffer(self._plain(row[0], "vector", row[1]), dtype=np.float32).copy()
        text, metadata = self._plain(row[0], "text", row[2]), self._plain(row[0], "metadata", row[3])
        return Record(row[0], vector, text, json.loads(metadata), None if row[4] is None else json.loads(row[4]))

    def restricted_records(self) -> Iterator[tuple[str, str, list[str]]]:
        """(id, text, readers) of every record with an ACL: what the guard's output leak check must know."""
        rows = self.db.execute("SELECT id, text, readers FROM rows WHERE readers IS NOT NULL").fetchall()
        for record_id, text, readers in rows:
            yield record_id, self._plain(record_id, "text", text), json.loads(readers)

    def _plain(self, record_id: str, field: str, value: Any) -> Any:
        """A stored field in clear: opened (and decoded, for text and metadata) if the collection is encrypted."""
        if self.cipher is None or value is None:
            return value
        opened = self.cipher.open(record_id, field, value)
        return opened if field == "vector" else opened.decode("utf-8")

    def _matching_rowids(self, filter_expr: str) -> list[int]:
        """Rowids whose decrypted metadata matches a filter (sealed metadata cannot be filtered in SQL)."""
        key = ("sealed metadata filter", filter_expr)  # kept with the filter cache, which every write clears
        if key not in self._filter_cache:
            expr = parse_filter(filter_expr)
            found = [
                rowid
                for rowid, record_id, metadata in self.db.execute("SELECT rowid, id, metadata FROM rows")
                if matches(expr, json.loads(self._plain(record_id, "metadata", metadata)))
            ]
            self._filter_cache[key] = (np.array(found, dtype=np.int64), None)
        return self._filter_cache[key][0].tolist()

    def _condition(self, filter_expr: str | None, principal: Principal | None) -> tuple[str, list[Any]] | None:
        clauses, params = [], []
        if filter_expr:
            if self.cipher is None:
                sql, sql_params = to_sql(parse_filter(filter_expr), "rows.metadata")
            else:
                sql = "rows.rowid IN (SELECT value FROM json_each(?))"
                sql_params = [json.dumps(self._matching_rowids(filter_expr))]
            clauses.append(sql)
            params.extend(sql_params)
        if principal is not None and not principal.is_admin:
            # The ACL is a condition like any filter: applied before ranking, never to a top-k afterwards.
            clauses.append(
                "(rows.readers IS NULL OR EXISTS (SELECT 1 FROM json_each(rows.readers) "
                "WHERE value IN (SELECT value FROM json_each(?))))"
            )
            params.append(json.dumps(sorted(principal.reader_tokens())))
        if not clauses:
            return None
        return " AND ".join(clauses), params

    def _hits(self, rankings: Sequence[list[tuple[int, float]]], columns: tuple[str, ...]) -> list[list[Hit]]:
        """Hits for each ranking: ids from memory; the requested columns in ONE SQLite read for all rankings."""
        ids = self._ids
        if not columns:
            id_of = ids.get
            return [
                [Hit(i, score) for rowid, score in ranking if (i := id_of(rowid)) is not None] for ranking in rankings
            ]
        wanted = sorted({rowid for ranking in rankings for rowid, _ in ranking})
        # A literal IN list is the fastest lookup for a search's few hits; json_each keeps big batches
        # under SQLite's limit on bound parameters.
        where = f"IN ({','.join('?' * len(wanted))})" if len(wanted) <= 500 else "IN (SELECT value FROM json_each(?))"
        wanted_params = wanted if len(wanted) <= 500 else [json.dumps(wanted)]
        # Always select all three columns (NULL for those not asked for): one row shape, decoded positionally.
        picked = ", ".join(column if column in columns else "NULL" for column in OUTPUT_FIELDS)
        rows = {
            row[0]: row
            for row in self.db.execute(f"SELECT rowid, {picked} FROM rows WHERE rowid {where}", wanted_params)
        }
        loads = json.loads
        out = []
        for ranking in rankings:
            hits = []
            for rowid, score in ranking:
                row = rows.get(rowid)
                if row is None or (record_id := ids.get(rowid)) is None:
                    continue
                _, text, metadata, readers = row
                if self.cipher is not None:
                    text, metadata = self._plain(record_id, "text", text), self._plain(record_id, "metadata", metadata)
                hits.append(
                    Hit(
                        record_id,
                        score,
                        text or "",
                        {} if metadata is None else loads(metadata),
                        None if readers is None else loads(readers),
                    )
                )
            out.append(hits)
        return out

    def search_batch(
        self, vectors: np.ndarray, k: int = 10, *, output_fields: Sequence[str] | None = None
    ) -> list[list[Hit]]:
        """Unfiltered vector search for many queries at once (one FAISS call, at most one SQLite read)."""
        columns = output_columns(output_fields)
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise KBError(f"query vectors have shape {queries.shape}, collection {self.name!r} expects (n, {self.dim})")
        if k < 1:
            raise KBError(f"k must be at least 1, got {k}")
        return self._nearest(queries, k, columns)

    def _nearest(self, queries: np.ndarray, k: int, columns: tuple[str, ...]) -> list[list[Hit]]:
        """Unfiltered top-k hits for each query (the hot path: no filter, no ACL)."""
        scores, rowids = self.index.search(prepare(queries, self.params.metric), k, exclude=self._tombstone_array)
        if columns:
            return self._hits([self._ranked(s, r) for s, r in zip(scores, rowids, strict=True)], columns)
        # Ids and scores only: straight from FAISS's arrays; padding (-1) is no rowid, so it drops out.
        if self.params.metric == "l2":
            scores = -scores
        id_of = self._ids.get
        found: list[Hits] = []
        for row_scores, row_ids in zip(scores.tolist(), rowids.tolist(), strict=True):
            ids = list(map(id_of, row_ids))
            if None in ids:
                kept = [i for i, found_id in enumerate(ids) if found_id is not None]
                ids, row_scores = [ids[i] for i in kept], [row_scores[i] for i in kept]
            found.append(Hits(ids, row_scores))
        return found  # type: ignore[return-value]

    def _vector_ranking(
        self, query: np.ndarray, k: int, condition: tuple[str, list[Any]] | None
    ) -> list[tuple[int, float]]:
        query = prepare(query.reshape(1, -1), self.params.metric)
        if condition is None:
            scores, rowids = self.index.search(query, k, exclude=self._tombstone_array)
            return self._ranked(scores[0], rowids[0])
        allowed = self._allowed(condition)
        if len(allowed) == 0:
            return []
        if len(allowed) > self.options.exact_below:
            scores, rowids = self.index.search(query, k, allow=allowed, ef_search=max(self.params.ef_search, 4 * k))
            ranked = self._ranked(scores[0], rowids[0])
            if len(ranked) >= min(k, len(allowed)):
                return ranked
        # Exact search over the allowed set: selective filters keep full recall and never return < k.
        rowids, vectors = self._allowed_vectors(condition, allowed)
        scores = -((vectors - query) ** 2).sum(axis=1) if self.params.metric == "l2" else vectors @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(rowids[i]), float(scores[i])) for i in top]  # already higher-is-better for L2

    def _allowed(self, condition: tuple[str, list[Any]]) -> np.ndarray:
        # Evaluating a JSON filter scans every row; the same filter (or principal) usually repeats,
        # so its rowids are kept until the next write.
        key = (condition[0], json.dumps(condition[1]))
        if key not in self._filter_cache:
            if len(self._filter_cache) >= 64:
                self._filter_cache.clear()
            found = self.db.execute(f"SELECT rowid FROM rows WHERE {condition[0]}", condition[1])
            self._filter_cache[key] = (np.array([row[0] for row in found], dtype=np.int64), None)
        return self._filter_cache[key][0]

    def _allowed_vectors(self, condition: tuple[str, list[Any]], allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (condition[0], json.dumps(condition[1]))
        cached = self._filter_cache.get(key)
        if cached is not None and cached[1] is not None:
            return cached[1]
        rows = self._live_rows(rowids=allowed.tolist())
        self._filter_cache[key] = (allowed, rows)
        return rows

    def _ranked(self, scores: np.ndarray, rowids: np.ndarray) -> list[tuple[int, float]]:
        # FAISS L2 returns squared distances; negate so that higher is better, as for the other metrics.
        sign = -1.0 if self.params.metric == "l2" else 1.0
        return [(r, sign * s) for s, r in zip(scores.tolist(), rowids.tolist(), strict=True) if r >= 0]

    def _lexical_ranking(self, text: str, k: int, condition: tuple[str, list[Any]] | None) -> list[tuple[int, float]]:
        query = fts_query(text) if self.cipher is None else self.cipher.fts_query(text)
        if not query:
            return []
        sql, params = condition if condition is not None else ("1", [])
        found = self.db.execute(
            f"SELECT fts.rowid, bm25(fts) FROM fts JOIN rows ON rows.rowid = fts.rowid "
            f"WHERE fts MATCH ? AND {sql} ORDER BY bm25(fts) LIMIT ?",
            [query, *params, k],
        ).fetchall()
        # bm25() is lower-is-better; negate so every score is higher-is-better.
        return [(rowid, -score) for rowid, score in found]

    def search(
        self,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        *,
        filter: str | None = None,
        principal: Principal | None = None,
        mode: str = "vector",
        text: str | None = None,
        output_fields: Sequence[str] | None = None,
        vector_weight: float = 1.0,
    ) -> list[Hit]:
        """Top-k records by vector, lexical (BM25) or hybrid (RRF) ranking, within filter and ACL.

        `output_fields` picks what hits carry besides id and score (default: text, metadata and
        readers); `[]` answers from memory without reading any row. `vector_weight` scales the vector
        ranking's share of a hybrid fusion (the lexical ranking's is 1): 0 leaves it out, as for a
        Chinese query embedded by an English-only model (`jijian.kb.embed.hybrid_vector_weight`).
        """
        columns = output_columns(output_fields)
        if mode not in SEARCH_MODES:
            raise KBError(f"mode {mode!r}: must be one of {', '.join(SEARCH_MODES)}")
        if k < 1:
            raise KBError(f"k must be at least 1, got {k}")
        if mode != "lexical":
            if vector is None:
                raise KBError(f"mode {mode!r} needs a query vector")
            with np.errstate(over="ignore"):
                query = np.asarray(vector, dtype=np.float32)
            if query.shape != (self.dim,):
                raise KBError(
                    f"query vector has dimension {query.shape[-1] if query.ndim else 0}, "
                    f"collection {self.name!r} expects {self.dim}"
                )
            if not np.all(np.isfinite(query)):
                raise KBError("query vector contains NaN or infinity (or values beyond float32)")
        if mode != "vector" and not text:
            raise KBError(f"mode {mode!r} needs the query text")
        condition = self._condition(filter, principal)
        if mode == "vector" and condition is None:
            return self._nearest(query.reshape(1, -1), k, columns)[0]
        if mode == "vector":
            return self._hits([self._vector_ranking(query, k, condition)], columns)[0]
        if mode == "lexical":
            return self._hits([self._lexical_ranking(text or "", k, condition)], columns)[0]
        if not 0.0 <= vector_weight <= 1e6:
            raise KBError(f"vector_weight must be a non-negative number, got {vector_weight}")
        depth = max(k, 50)
        fused: dict[int, float] = {}
        rankings = [(vector_weight, self._vector_ranking(query, depth, condition))] if vector_weight > 0 else []
        rankings.append((1.0, self._lexical_ranking(text or "", depth, condition)))
        for weight, ranking in rankings:
            for rank, (rowid, _) in enumerate(ranking):
                fused[rowid] = fused.get(rowid, 0.0) + weight / (RRF_K + rank + 1)
        return self._hits([sorted(fused.items(), key=lambda item: -item[1])[:k]], columns)[0]

    # -- ingestion bookkeeping --------------------------------------------------------------------

    def source_hash(self, path: str) -> str | None:
        """The content hash recorded when `path` was last ingested."""
        stored = path if self.cipher is None else self.cipher.blind_name(path)
        row = self.db.execute("SELECT sha256 FROM sources WHERE path = ?", (stored,)).fetchone()
        return row[0] if row else None

    def replace_source(self, path: str, sha256: str, records: Sequence[Record]) -> list[str]:
        """Replace every chunk of one source file by `records` and remember its content hash."""
        path = path if self.cipher is None else self.cipher.blind_name(path)  # source paths are not kept in clear
        row = self.db.execute("SELECT ids FROM sources WHERE path = ?", (path,)).fetchone()
        if row:
            self.delete(json.loads(row[0]))
        ids = self.upsert(records)
        self.db.execute(
            "INSERT OR REPLACE INTO sources (path, sha256, ids) VALUES (?, ?, ?)", (path, sha256, json.dumps(ids))
        )
        return ids


class KnowledgeBase:
    """The embedded store: one directory per collection under `root`."""

    def __init__(
        self,
        root: Path | str,
        options: SearchOptions | None = None,
        defaults: IndexParams | None = None,
        key: bytes | None = None,
    ) -> None:
        """`key`: the 256-bit master key; with one, new collections are encrypted and encrypted ones open."""
        self.root = Path(root)
        self.key = key
        self.root.mkdir(parents=True, exist_ok=True)
        self.options = options or SearchOptions()
        self.defaults = defaults or IndexParams()
        self._open: dict[str, Collection] = {}

    def _directory(self, name: str) -> Path:
        if not _NAME.match(name or ""):
            raise KBError(
                f"collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return self.root / name

    def create_collection(
        self, name: str, dim: int, *, metric: str | None = None, index: str | None = None
    ) -> Collection:
        """Create a collection of `dim`-dimensional vectors; metric and index default to the config."""
        directory = self._directory(name)
        if (directory / "collection.json").exists():
            raise KBError(f"collection {name!r} already exists")
        if not isinstance(dim, int) or dim < 1:
            raise KBError(f"dim must be a positive integer, got {dim!r}")
        params = IndexParams(
            **{**asdict(self.defaults), **({"metric": metric} if metric else {}), **({"kind": index} if index else {})}
        )
        if params.metric not in ("cosine", "ip", "l2"):
            raise KBError(f"metric {params.metric!r}: must be cosine, ip or l2")
        if params.kind not in ("flat", "hnsw", "ivf_flat", "ivf_pq"):
            raise KBError(f"index {params.kind!r}: must be flat, hnsw, ivf_flat or ivf_pq")
        if params.kind == "ivf_pq" and dim % params.pq_m:
            raise KBError(f"index ivf_pq: dimension {dim} is not divisible by pq_m={params.pq_m}")
        directory.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] = {"name": name, "dim": dim, "index": asdict(params), "lexical": LEXICAL_SCHEME}
        if self.key is not None:
            spec["encryption"] = RowCipher.new_spec(self.key, name)
        write_spec(directory, spec)
        return self.collection(name)

    def collection(self, name: str) -> Collection:
        """Open (once) and return an existing collection."""
        if name not in self._open:
            directory = self._directory(name)
            if not (directory / "collection.json").exists():
                raise CollectionNotFound(f"collection {name!r} does not exist under {self.root}")
            self._open[name] = Collection(directory, self.options, self.key)
        return self._open[name]

    def list_collections(self) -> list[dict[str, Any]]:
        """Name, dimension, metric, index type and row count of every collection."""
        out = []
        for spec_path in sorted(self.root.glob("*/collection.json")):
            collection = self.collection(spec_path.parent.name)
            out.append(
                {
                    "name": collection.name,
                    "dim": collection.dim,
                    "metric": collection.params.metric,
                    "index": collection.params.kind,
                    "count": collection.count(),
                }
            )
        return out

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its files."""
        directory = self._directory(name)
        if not (directory / "collection.json").exists():
            raise CollectionNotFound(f"collection {name!r} does not exist under {self.root}")
        if name in self._open:
            self._open.pop(name).db.close()
        shutil.rmtree(directory)

    def close(self) -> None:
        """Checkpoint and close every open collection."""
        for collection in self._open.values():
            collection.close()
        self._open.clear()


def open_knowledge_base(config: KBConfig, key: bytes | None = None) -> KnowledgeBase:
    """The store described by a `[kb]` config section; `key` encrypts it at rest (`[guard] encrypt_at_rest`)."""
    if config.backend == "milvus":
        if key is not None:
            raise KBError("[guard] encrypt_at_rest: the milvus backend does not support encryption at rest")
        from jijian.kb.milvus import MilvusKnowledgeBase

        return MilvusKnowledgeBase(config)  # type: ignore[return-value]
    defaults = IndexParams(
        kind=config.index, metric=config.metric, hnsw_m=config.hnsw_m, ef_construction=config.ef_construction,
        ef_search=config.ef_search, nlist=config.nlist, pq_m=config.pq_m, nprobe=config.nprobe,
    )  # fmt: skip
    options = SearchOptions(exact_below=config.exact_search_below, checkpoint_rows=config.checkpoint_rows)
    return KnowledgeBase(config.path, options, defaults, key)
