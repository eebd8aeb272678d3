"""The Milvus backend: the same collection interface over Milvus (a server, or milvus-lite in a file).

Selected by `[kb] backend = "milvus"` and `uri` (`http://host:19530`, or a local `*.db` path for
milvus-lite). Filters compile from the same expression language to Milvus boolean expressions over a
JSON `metadata` field; each comparison is guarded with `exists`, so a missing field is "false" and
`not` stays plain negation, as in the embedded store. One known difference: Milvus treats a
comparison between values of different kinds (`a > "x"` where `a` is a number) as unknown rather
than false, so `not` over such a comparison excludes the row. ACLs become a condition on a `public`
flag and a `readers` array. Lexical and hybrid search need FTS5 and exist only in the embedded store.

Ingestion bookkeeping (`source_hash`, `replace_source`) lives in one extra collection,
`_jijian_sources`, which user collections cannot be named like (their names start with a letter or
digit). Every operation holds the database's lock: a `MilvusKnowledgeBase` may be shared by threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jijian.config import KBConfig
from jijian.guard.principals import Principal, validate_readers
from jijian.kb.backend import COLLECTION_NAME, CollectionNotFound, Hit, KBError, Record, output_columns
from jijian.kb.filters import BoolOp, Compare, Expr, In, Not, parse_filter

_METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
_INDEXES = {"flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT", "ivf_pq": "IVF_PQ"}
_MAX_READERS = 256
SOURCES = "_jijian_sources"  # the bookkeeping collection: (collection, source path) -> sha256 and record ids
_PAGE = 1000


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def to_milvus(expr: Expr) -> str:
    """A filter expression as a Milvus boolean expression over the JSON field `metadata`."""
    if isinstance(expr, BoolOp):
        return "(" + f" {expr.op} ".join(to_milvus(operand) for operand in expr.operands) + ")"
    if isinstance(expr, Not):
        return f"(not {to_milvus(expr.operand)})"
    if isinstance(expr, In):
        return "(" + " or ".join(to_milvus(Compare(expr.field, "==", value)) for value in expr.values) + ")"
    if expr.op == "!=":
        return to_milvus(Not(Compare(expr.field, "==", expr.value)))
    path = "metadata" + "".join(f'["{part}"]' for part in expr.field.split("."))
    return f"(exists {path} and {path} {expr.op} {_literal(expr.value)})"


def _source_key(collection: str, path: str) -> str:
    # A fixed-length primary key whatever the path's length.
    return hashlib.sha256(f"{collection}\0{path}".encode()).hexdigest()


class MilvusCollection:
    """One Milvus collection with the embedded `Collection`'s operations."""

    def __init__(self, client: Any, name: str, lock: threading.RLock, sources: _Sources) -> None:
        self.client, self.name, self.lock, self.sources = client, name, lock, sources
        with lock:
            described = client.describe_collection(name)
            vector_field = next(f for f in described["fields"] if f["name"] == "vector")
            self.dim = int(vector_field["params"]["dim"])
            index = client.describe_index(name, "vector")
            self.metric = {v: k for k, v in _METRICS.items()}[index["metric_type"]]
            client.load_collection(name)

    def _rows(self, records: Sequence[Record]) -> list[dict[str, Any]]:
        rows = []
        for i, record in enumerate(records):
            vector = np.asarray(record.vector, dtype=np.float32)
            if vector.ndim != 1 or vector.shape[0] != self.dim:
                raise KBError(
                    f"record {i} ({record.id!r}): vector has dimension {vector.shape[-1] if vector.ndim else 0}, "
                    f"collection {self.name!r} expects {self.dim}"
                )
            if not np.all(np.isfinite(vector)):
                raise KBError(f"record {i} ({record.id!r}): vector contains NaN or infinity")
            if record.id is not None and (not isinstance(record.id, str) or not record.id):
                raise KBError(f"record {i}: id must be a non-empty string")
            if not isinstance(record.metadata, dict):
                raise KBError(f"record {i} ({record.id!r}): metadata must be a JSON object")
            readers = validate_readers(record.readers, where=f"record {i} ({record.id!r}) readers")
            if readers is not None and len(readers) > _MAX_READERS:
                raise KBError(f"record {i} ({record.id!r}): at most {_MAX_READERS} readers on the milvus backend")
            rows.append({
                "id": record.id if record.id is not None else uuid.uuid4().hex, "vector": vector.tolist(),
                "text": record.text or "", "metadata": record.metadata,
                "public": readers is None, "readers": readers or [],
            })  # fmt: skip
        if len({row["id"] for row in rows}) != len(rows):
            raise KBError("records: the same id appears twice in one request")
        return rows

    def insert(self, records: Sequence[Record]) -> list[str]:
        """Add new records (ids must be new); returns their ids."""
        rows = self._rows(records)
        with self.lock:
            taken = self.client.get(self.name, ids=[row["id"] for row in rows], output_fields=["id"])
            if taken:
                raise KBError(f"id {taken[0]['id']!r} already exists in {self.name!r} (use upsert to replace it)")
            if rows:
                self.client.insert(self.name, rows)
        return [row["id"] for row in rows]

    def upsert(self, records: Sequence[Record]) -> list[str]:
        """Add or replace records by id; returns their ids."""
        rows = self._rows(records)
        if rows:
            with self.lock:
                self.client.upsert(self.name, rows)
        return [row["id"] for row in rows]

    def delete(self, ids: Sequence[str]) -> int:
        """Delete records by id; returns how many existed."""
        if not ids:
            return 0
        with self.lock:
            existing = self.client.get(self.name, ids=list(ids), output_fields=["id"])
            if existing:
                self.client.delete(self.name, ids=[row["id"] for row in existing])
        return len(existing)

    def count(self) -> int:
        """Live records."""
        with self.lock:
            return int(self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def _scan(self, filter: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching `filter`, read page by page (a query's limit is bounded)."""
        with self.lock:
            iterator = self.client.query_iterator(self.name, batch_size=_PAGE, filter=filter, output_fields=fields)
            found: list[dict[str, Any]] = []
            try:
                while page := iterator.next():
                    found.extend(page)
            finally:
                iterator.close()
        return found

    def ids(self) -> list[str]:
        """The id of every live record."""
        return [row["id"] for row in self._scan("", ["id"])]

    def get(self, record_id: str) -> Record | None:
        """The record with this id, or None."""
        with self.lock:
            found = self.client.get(
                self.name, ids=[record_id], output_fields=["id", "vector", "text", "metadata", "public", "readers"]
            )
        if not found:
            return None
        row = found[0]
        readers = None if row["public"] else list(row["readers"])
        return Record(
            row["id"], np.asarray(row["vector"], dtype=np.float32), row["text"], dict(row["metadata"]), readers
        )

    def restricted_records(self) -> Iterator[tuple[str, str, list[str]]]:
        """(id, text, readers) of every record with an ACL: what the guard's output leak check must know."""
        rows = self._scan("not public", ["id", "text", "readers"])
        return iter([(row["id"], row["text"], list(row["readers"])) for row in rows])

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
        """Top-k by vector within the filter and the principal's ACL (Milvus filters during the search).

        `text` and `vector_weight` concern lexical and hybrid search, which this backend refuses.
        """
        columns = output_columns(output_fields)
        if mode != "vector":
            raise KBError(
                f"mode {mode!r}: the milvus backend supports only vector search (lexical needs the embedded store)"
            )
        if k < 1:
            raise KBError(f"k must be at least 1, got {k}")
        if vector is None:
            raise KBError("mode 'vector' needs a query vector")
        with np.errstate(over="ignore"):
            query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.dim,):
            got = query.shape[-1] if query.ndim else 0
            raise KBError(f"query vector has dimension {got}, collection {self.name!r} expects {self.dim}")
        if not np.all(np.isfinite(query)):
            raise KBError("query vector contains NaN or infinity (or values beyond float32)")
        clauses = []
        if filter:
            clauses.append(to_milvus(parse_filter(filter)))
        if principal is not None and not principal.is_admin:
            clauses.append(f"(public or array_contains_any(readers, {json.dumps(sorted(principal.reader_tokens()))}))")
        # Milvus stores "no ACL" as public=True (its arrays cannot be null), so readers needs both fields.
        fields = [
            "id",
            *(c for c in columns if c != "readers"),
            *(["public", "readers"] if "readers" in columns else []),
        ]
        with self.lock:
            found = self.client.search(
                self.name, [query.tolist()], limit=k, filter=" and ".join(clauses), output_fields=fields
            )[0]
        hits = []
        for hit in found:
            entity = hit["entity"]
            # Milvus reports L2 as a distance; the interface promises "higher is better".
            score = -hit["distance"] if self.metric == "l2" else hit["distance"]
            result = Hit(entity["id"], float(score))
            if "text" in columns:
                result.text = entity["text"]
            if "metadata" in columns:
                result.metadata = dict(entity["metadata"])
            if "readers" in columns and not entity["public"]:
                result.readers = list(entity["readers"])
            hits.append(result)
        return hits

    def source_hash(self, path: str) -> str | None:
        """The content hash recorded when `path` was last ingested."""
        found = self.sources.get(self.name, path)
        return found[0] if found else None

    def replace_source(self, path: str, sha256: str, records: Sequence[Record]) -> list[str]:
        """Replace every record of one source file by `records` and remember its content hash.

        Milvus has no transactions: the hash is recorded last, so a replacement cut short is redone by
        the next ingest.
        """
        with self.lock:
            found = self.sources.get(self.name, path)
            if found:
                self.delete(found[1])
            ids = self.upsert(records)
            self.sources.put(self.name, path, sha256, ids)
        return ids

    def checkpoint(self) -> None:
        """Flush the collection's growing segments to storage."""
        with self.lock:
            self.client.flush(self.name)

    def close(self) -> None:
        """Nothing to release: the client belongs to the knowledge base."""


class _Sources:
    """The `_jijian_sources` collection: per (collection, source path), its sha256 and record ids."""

    def __init__(self, client: Any, lock: threading.RLock) -> None:
        self.client, self.lock = client, lock
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        if not self.client.has_collection(SOURCES):
            from pymilvus import DataType

            schema = self.client.create_schema(auto_id=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("collection", DataType.VARCHAR, max_length=64)
            schema.add_field("sha256", DataType.VARCHAR, max_length=64)
            schema.add_field("ids", DataType.JSON)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field; unused
            index_params = self.client.prepare_index_params()
            index_params.add_index("vector", index_type="FLAT", metric_type="L2")
            self.client.create_collection(SOURCES, schema=schema, index_params=index_params, consistency_level="Strong")
        self.client.load_collection(SOURCES)
        self._ready = True

    def get(self, collection: str, path: str) -> tuple[str, list[str]] | None:
        """(sha256, ids) recorded for a source of a collection."""
        with self.lock:
            self._ensure()
            found = self.client.get(SOURCES, ids=[_source_key(collection, path)], output_fields=["sha256", "ids"])
        return (found[0]["sha256"], list(found[0]["ids"])) if found else None

    def put(self, collection: str, path: str, sha256: str, ids: Sequence[str]) -> None:
        """Record a source's hash and record ids."""
        row = {"key": _source_key(collection, path), "collection": collection, "sha256": sha256, "ids": list(ids),
               "vector": [0.0, 0.0]}  # fmt: skip
        with self.lock:
            self._ensure()
            self.client.upsert(SOURCES, [row])

    def forget(self, collection: str) -> None:
        """Forget every source of a dropped collection."""
        with self.lock:
            if self.client.has_collection(SOURCES):
                self._ensure()
                self.client.delete(SOURCES, filter=f"collection == {json.dumps(collection)}")


class MilvusKnowledgeBase:
    """The `KnowledgeBase` interface over one Milvus database."""

    def __init__(self, config: KBConfig) -> None:
        from pymilvus import MilvusClient

        if not config.uri:
            raise KBError("[kb] uri: required when backend = 'milvus' (a server URL or a milvus-lite .db file)")
        self.config = config
        self.client = MilvusClient(config.uri)
        self.lock = threading.RLock()  # one client, shared by every collection and thread
        self.sources = _Sources(self.client, self.lock)

    def _check(self, name: str) -> None:
        if not COLLECTION_NAME.match(name or "") or "-" in name or "." in name:
            raise KBError(f"collection name {name!r}: on milvus use 1-64 letters, digits or '_'")

    def create_collection(
        self, name: str, dim: int, *, metric: str | None = None, index: str | None = None
    ) -> MilvusCollection:
        """Create a collection (id, vector, text, JSON metadata, ACL fields)."""
        from pymilvus import DataType

        self._check(name)
        if not isinstance(dim, int) or dim < 1:
            raise KBError(f"dim must be a positive integer, got {dim!r}")
        metric, index = metric or self.config.metric, index or self.config.index
        if metric not in _METRICS or index not in _INDEXES:
            raise KBError(f"metric {metric!r} / index {index!r}: use cosine|ip|l2 and flat|hnsw|ivf_flat|ivf_pq")
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("public", DataType.BOOL)
        schema.add_field(
            "readers", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=_MAX_READERS, max_length=256
        )
        params = {
            "hnsw": {"M": self.config.hnsw_m, "efConstruction": self.config.ef_construction},
            "ivf_flat": {"nlist": self.config.nlist},
            "ivf_pq": {"nlist": self.config.nlist, "m": self.config.pq_m, "nbits": 8},
        }.get(index, {})
        index_params = self.client.prepare_index_params()
        index_params.add_index("vector", index_type=_INDEXES[index], metric_type=_METRICS[metric], params=params)
        with self.lock:
            if self.client.has_collection(name):
                raise KBError(f"collection {name!r} already exists")
            self.client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")
            return MilvusCollection(self.client, name, self.lock, self.sources)

    def collection(self, name: str) -> MilvusCollection:
        """An existing collection."""
        self._check(name)
        with self.lock:
            if not self.client.has_collection(name):
                raise CollectionNotFound(f"collection {name!r} does not exist at {self.config.uri}")
            return MilvusCollection(self.client, name, self.lock, self.sources)

    def list_collections(self) -> list[dict[str, Any]]:
        """Name, dimension, metric and row count of every collection."""
        out = []
        with self.lock:
            names = sorted(name for name in self.client.list_collections() if name != SOURCES)
            for name in names:
                c = self.collection(name)
                out.append({"name": name, "dim": c.dim, "metric": c.metric, "index": "milvus", "count": c.count()})
        return out

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its ingestion bookkeeping."""
        with self.lock:
            self.collection(name)
            self.client.drop_collection(name)
            self.sources.forget(name)

    def close(self) -> None:
        """Close the client."""
        with self.lock:
            self.client.close()
