"""The knowledge-base interface both backends implement: its Protocols, the records it moves, its errors.

`KnowledgeBase` holds named `Collection`s; the embedded store (`jijian.kb.store`, SQLite + FAISS) and
the Milvus backend (`jijian.kb.milvus`, a server or milvus-lite) implement every operation, so
callers (the server's RAG path, the HTTP router, the CLI, `jijian up`, eval, the dashboard) are
written against these Protocols only. `open_knowledge_base` picks the backend a `[kb]` section names.
What differs: encryption at rest, lexical and hybrid search and `search_batch` exist only in the
embedded store; Milvus answers `mode="vector"` and refuses the others with a `KBError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np

from jijian.config import KBConfig
from jijian.config.errors import UserInputError
from jijian.guard.principals import Principal

SEARCH_MODES = ("vector", "lexical", "hybrid")
OUTPUT_FIELDS = ("text", "metadata", "readers")  # what a hit may carry besides its id and score
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> Hits: ...

    def __getitem__(self, index: int | slice) -> Hit | Hits:
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


@runtime_checkable
class Collection(Protocol):
    """One collection of records: vectors, text, JSON metadata and an optional reader list (ACL) each."""

    @property
    def name(self) -> str:
        """The collection's name."""
        ...

    @property
    def dim(self) -> int:
        """The dimension of its vectors."""
        ...

    def insert(self, records: Sequence[Record]) -> list[str]:
        """Add new records (ids must be new); returns their ids. Durable when it returns."""
        ...

    def upsert(self, records: Sequence[Record]) -> list[str]:
        """Add or replace records by id; returns their ids."""
        ...

    def delete(self, ids: Sequence[str]) -> int:
        """Delete records by id; returns how many existed."""
        ...

    def get(self, record_id: str) -> Record | None:
        """The record with this id, or None."""
        ...

    def count(self) -> int:
        """Live records."""
        ...

    def ids(self) -> list[str]:
        """The id of every live record."""
        ...

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
        """Top-k records (higher score is better) within the filter and the principal's ACL."""
        ...

    def source_hash(self, path: str) -> str | None:
        """The content hash recorded when `path` was last ingested."""
        ...

    def replace_source(self, path: str, sha256: str, records: Sequence[Record]) -> list[str]:
        """Replace every record of one source file by `records` and remember its content hash."""
        ...

    def restricted_records(self) -> Iterator[tuple[str, str, list[str]]]:
        """(id, text, readers) of every record with an ACL: what the guard's output leak check must know."""
        ...

    def checkpoint(self) -> None:
        """Make every acknowledged write cheap to recover (index file written, segments flushed)."""
        ...

    def close(self) -> None:
        """Checkpoint if needed and release the collection."""
        ...


@runtime_checkable
class KnowledgeBase(Protocol):
    """A set of named collections."""

    def create_collection(
        self, name: str, dim: int, *, metric: str | None = None, index: str | None = None
    ) -> Collection:
        """Create a collection of `dim`-dimensional vectors; metric and index default to the config."""
        ...

    def collection(self, name: str) -> Collection:
        """An existing collection (`CollectionNotFound` otherwise)."""
        ...

    def list_collections(self) -> list[dict[str, Any]]:
        """Name, dimension, metric, index type and row count of every collection."""
        ...

    def drop_collection(self, name: str) -> None:
        """Delete a collection and everything stored for it."""
        ...

    def close(self) -> None:
        """Checkpoint and close every open collection."""
        ...


def open_knowledge_base(config: KBConfig, key: bytes | None = None) -> KnowledgeBase:
    """The store described by a `[kb]` config section; `key` encrypts it at rest (`[guard] encrypt_at_rest`)."""
    if config.backend == "milvus":
        if key is not None:
            raise KBError("[guard] encrypt_at_rest: the milvus backend does not support encryption at rest")
        from jijian.kb.milvus import MilvusKnowledgeBase

        return MilvusKnowledgeBase(config)
    from jijian.kb.store import EmbeddedKnowledgeBase, SearchOptions
    from jijian.kb.vector_index import IndexParams

    defaults = IndexParams(
        kind=config.index, metric=config.metric, hnsw_m=config.hnsw_m, ef_construction=config.ef_construction,
        ef_search=config.ef_search, nlist=config.nlist, pq_m=config.pq_m, nprobe=config.nprobe,
    )  # fmt: skip
    options = SearchOptions(exact_below=config.exact_search_below, checkpoint_rows=config.checkpoint_rows)
    return EmbeddedKnowledgeBase(config.path, options, defaults, key)
