"""The embedded knowledge base: one directory per collection, each SQLite rows + a FAISS index, durable across kill -9.

An `EmbeddedCollection` puts together its parts, each in a module of its own:

* `jijian.kb.rows`: the rows in SQLite (one transaction per write, WAL, `synchronous=FULL`);
* `jijian.kb.codec`: whether fields are stored in clear or sealed (`[guard] encrypt_at_rest`);
* `jijian.kb.durability`: the index file's watermark, crash replay, tombstones and checkpoints;
* `jijian.kb.search`: vector, lexical and hybrid ranking within filters and ACLs.

This module validates records, keeps the parts in step on every write, and owns the per-collection
lock: every operation holds it, so the server's RAG path, the dashboard and the HTTP router may share
a collection across threads. It implements `jijian.kb.backend.KnowledgeBase` completely.

A collection created with a key (`[guard] encrypt_at_rest`) keeps text, metadata, vectors and the
index file encrypted and its lexical index blinded (`jijian.kb.sealing`); opening it needs the key.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jijian.files import write_json_atomic
from jijian.guard.principals import Principal, validate_readers
from jijian.kb.backend import (
    COLLECTION_NAME,
    CollectionNotFound,
    Hit,
    KBError,
    Record,
    output_columns,
)
from jijian.kb.codec import open_codec
from jijian.kb.durability import DurableIndex
from jijian.kb.lexical import LEXICAL_SCHEME
from jijian.kb.rows import RowStore, StoredRow
from jijian.kb.sealing import RowCipher
from jijian.kb.search import Searcher
from jijian.kb.vector_index import IndexParams, VectorIndex, prepare


@dataclass(frozen=True)
class SearchOptions:
    """Tuning knobs shared by every collection of a store."""

    exact_below: int = 20_000  # filtered sets at most this large are searched exactly (recall 1.0)
    checkpoint_rows: int = 10_000  # rewrite the index file after this many new rows (bounds replay time)


def write_spec(directory: Path, spec: dict[str, Any]) -> None:
    """Replace a collection's collection.json durably (temporary file, fsync, rename, fsync of the directory)."""
    write_json_atomic(directory / "collection.json", spec)


class EmbeddedCollection:
    """One collection: a directory with `rows.sqlite`, `index.faiss` and `collection.json`."""

    def __init__(self, directory: Path, options: SearchOptions | None = None, key: bytes | None = None) -> None:
        self.directory = directory
        self.options = options or SearchOptions()
        # One lock for the connection, the index and the caches: held by every public method.
        self.lock = threading.RLock()
        self.closed = False
        spec = json.loads((directory / "collection.json").read_text(encoding="utf-8"))
        # A missing or wrong key fails here, before any read.
        codec = open_codec(spec, key, directory / "collection.json")
        self.name: str = spec["name"]
        self.dim: int = spec["dim"]
        self.rows = RowStore(directory / "rows.sqlite", codec, self.dim)
        if spec.get("lexical") != LEXICAL_SCHEME:
            # Rebuild the FTS5 index with the current terms (a collection made before them), then record
            # the scheme: a crash before collection.json is rewritten only means the rebuild runs again.
            self.rows.reindex_lexical()
            write_spec(directory, {**spec, "lexical": LEXICAL_SCHEME})
        params = IndexParams(**spec["index"])
        self.durable = DurableIndex(directory / "index.faiss", self.rows, codec, params, self.options.checkpoint_rows)
        self.searcher = Searcher(self.rows, self.durable, self.options.exact_below)

    @property
    def index(self) -> VectorIndex:
        """The in-memory vector index."""
        return self.durable.index

    @property
    def params(self) -> IndexParams:
        """The index parameters (kind, metric, HNSW and IVF settings)."""
        return self.durable.index.params

    @property
    def tombstones(self) -> set[int]:
        """Rowids deleted from SQLite but still inside the vector index (searches exclude them)."""
        return self.durable.tombstones

    def set_ef_search(self, ef_search: int) -> None:
        """Change the HNSW search breadth of this open collection (recall/speed trade-off)."""
        with self.lock:
            self._refuse_if_closed()
            self.durable.index.params = replace(self.durable.index.params, ef_search=ef_search)

    def checkpoint(self) -> None:
        """Write the index file atomically with its watermark, so reopening replays nothing."""
        with self.lock:
            self._refuse_if_closed()
            self.durable.checkpoint()

    def compact(self) -> int:
        """Rebuild the index from live rows (drops tombstones); returns how many were dropped."""
        with self.lock:
            self._refuse_if_closed()
            return self.durable.compact()

    def close(self) -> None:
        """Checkpoint the index and close SQLite; later calls on this object fail with `CollectionNotFound`."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.durable.close()
                self.rows.close()

    def _refuse_if_closed(self) -> None:
        """Called with the lock held: a collection closed (or dropped) meanwhile answers nothing."""
        if self.closed:
            raise CollectionNotFound(f"collection {self.name!r} was closed or dropped")

    # -- writes ---------------------------------------------------------------------------------

    def _stored_rows(self, records: Sequence[Record]) -> tuple[list[StoredRow], np.ndarray]:
        """Validated records in their stored form, and their vectors as the index takes them."""
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
        prepared = prepare(np.stack(vectors), self.params.metric) if vectors else np.zeros((0, self.dim), np.float32)
        rows = []
        for i, record in enumerate(records):
            record_id = record.id if record.id is not None else uuid.uuid4().hex
            if not isinstance(record_id, str) or not record_id:
                raise KBError(f"record {i}: id must be a non-empty string")
            if not isinstance(record.metadata, dict):
                raise KBError(f"record {i} ({record_id!r}): metadata must be a JSON object")
            readers = validate_readers(record.readers, where=f"record {i} ({record_id!r}) readers")
            rows.append(self.rows.stored_row(record_id, prepared[i], record, readers))
        if len({row.id for row in rows}) != len(rows):
            raise KBError("records: the same id appears twice in one request")
        return rows, prepared

    def _write(self, records: Sequence[Record], replace: bool) -> list[str]:
        rows, vectors = self._stored_rows(records)
        with self.lock:
            self._refuse_if_closed()
            self.searcher.forget_filters()
            new_rowids, replaced = self.rows.write(rows, replace, self.name)
            self.durable.written(np.array(new_rowids, dtype=np.int64), vectors, replaced)
        return [row.id for row in rows]

    def insert(self, records: Sequence[Record]) -> list[str]:
        """Add new records (ids must be new); returns their ids. Durable when it returns."""
        return self._write(records, replace=False)

    def upsert(self, records: Sequence[Record]) -> list[str]:
        """Add or replace records by id; returns their ids."""
        return self._write(records, replace=True)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete records by id; returns how many existed."""
        with self.lock:
            self._refuse_if_closed()
            self.searcher.forget_filters()
            deleted = self.rows.delete(ids)
            self.durable.deleted(deleted)
        return len(deleted)

    # -- reads ----------------------------------------------------------------------------------

    def count(self) -> int:
        """Live records."""
        with self.lock:
            self._refuse_if_closed()
            return self.rows.count()

    def ids(self) -> list[str]:
        """The id of every live record (from memory: no read)."""
        with self.lock:
            self._refuse_if_closed()
            return list(self.rows.ids.values())

    def get(self, record_id: str) -> Record | None:
        """The record with this id, or None."""
        with self.lock:
            self._refuse_if_closed()
            return self.rows.get(record_id)

    def restricted_records(self) -> Iterator[tuple[str, str, list[str]]]:
        """(id, text, readers) of every record with an ACL: what the guard's output leak check must know."""
        with self.lock:
            self._refuse_if_closed()
            found = self.rows.restricted()
        return iter(found)

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
    ) -> Sequence[Hit]:
        """Top-k records by vector, lexical (BM25) or hybrid (RRF) ranking, within filter and ACL.

        `output_fields` picks what hits carry besides id and score (default: text, metadata and
        readers); `[]` answers from memory without reading any row. `vector_weight` scales the vector
        ranking's share of a hybrid fusion (the lexical ranking's is 1): 0 leaves it out, as for a
        Chinese query embedded by an English-only model (`jijian.kb.embed.hybrid_vector_weight`).
        """
        columns = output_columns(output_fields)
        with self.lock:
            self._refuse_if_closed()
            return self.searcher.search(
                self.name, vector, k, filter=filter, principal=principal, mode=mode, text=text, columns=columns,
                vector_weight=vector_weight,
            )  # fmt: skip

    def search_batch(
        self, vectors: np.ndarray, k: int = 10, *, output_fields: Sequence[str] | None = None
    ) -> list[Sequence[Hit]]:
        """Unfiltered vector search for many queries at once (one FAISS call, at most one SQLite read)."""
        columns = output_columns(output_fields)
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise KBError(f"query vectors have shape {queries.shape}, collection {self.name!r} expects (n, {self.dim})")
        if k < 1:
            raise KBError(f"k must be at least 1, got {k}")
        with self.lock:
            self._refuse_if_closed()
            return self.searcher.nearest(queries, k, columns)

    # -- ingestion bookkeeping --------------------------------------------------------------------

    def source_hash(self, path: str) -> str | None:
        """The content hash recorded when `path` was last ingested."""
        with self.lock:
            self._refuse_if_closed()
            found = self.rows.source(path)
        return found[0] if found else None

    def replace_source(self, path: str, sha256: str, records: Sequence[Record]) -> list[str]:
        """Replace every chunk of one source file by `records` and remember its content hash.

        The hash is recorded last: a replacement cut short is redone by the next ingest.
        """
        with self.lock:
            self._refuse_if_closed()
            found = self.rows.source(path)
            if found:
                self.delete(found[1])
            ids = self.upsert(records)
            self.rows.record_source(path, sha256, ids)
        return ids


class EmbeddedKnowledgeBase:
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
        self._open: dict[str, EmbeddedCollection] = {}
        self._lock = threading.RLock()  # guards `_open`: one object per collection, whatever the threads

    def _directory(self, name: str) -> Path:
        if not COLLECTION_NAME.match(name or ""):
            raise KBError(
                f"collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return self.root / name

    def create_collection(
        self, name: str, dim: int, *, metric: str | None = None, index: str | None = None
    ) -> EmbeddedCollection:
        """Create a collection of `dim`-dimensional vectors; metric and index default to the config."""
        directory = self._directory(name)
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
        spec: dict[str, Any] = {"name": name, "dim": dim, "index": asdict(params), "lexical": LEXICAL_SCHEME}
        if self.key is not None:
            spec["encryption"] = RowCipher.new_spec(self.key, name)
        with self._lock:
            if (directory / "collection.json").exists():
                raise KBError(f"collection {name!r} already exists")
            directory.mkdir(parents=True, exist_ok=True)
            write_spec(directory, spec)
            return self.collection(name)

    def collection(self, name: str) -> EmbeddedCollection:
        """Open (once) and return an existing collection."""
        with self._lock:
            if name not in self._open:
                directory = self._directory(name)
                if not (directory / "collection.json").exists():
                    raise CollectionNotFound(f"collection {name!r} does not exist under {self.root}")
                self._open[name] = EmbeddedCollection(directory, self.options, self.key)
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
        with self._lock:
            if not (directory / "collection.json").exists():
                raise CollectionNotFound(f"collection {name!r} does not exist under {self.root}")
            if name in self._open:
                dropped = self._open.pop(name)
                with dropped.lock:  # waits for an operation in flight; no checkpoint: the files go
                    dropped.closed = True
                    dropped.rows.close()
            shutil.rmtree(directory)

    def close(self) -> None:
        """Checkpoint and close every open collection."""
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
