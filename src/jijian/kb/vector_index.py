"""The FAISS side of a collection: one index type chosen by config, labelled by SQLite rowid.

Cosine is inner product over unit vectors. IVF indexes need training data, so they start as an
exact (flat) index and are rebuilt as IVF once `train_min_rows` vectors exist.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import faiss as _faiss
import numpy as np

# faiss's SWIG-generated stubs are incomplete (no SearchParametersHNSW, HNSW.offsets or search_c): use it untyped.
faiss: Any = _faiss


@dataclass(frozen=True)
class IndexParams:
    """How the vectors of one collection are indexed."""

    kind: str = "hnsw"  # flat | hnsw | ivf_flat | ivf_pq
    metric: str = "cosine"  # cosine | ip | l2
    hnsw_m: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    nlist: int = 256
    pq_m: int = 16
    nprobe: int = 16

    @property
    def train_min_rows(self) -> int:
        """Rows needed before an IVF index is trained (FAISS warns below ~39 points per centroid)."""
        return 39 * self.nlist if self.kind.startswith("ivf") else 0


def _faiss_metric(metric: str) -> int:
    return int(faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as contiguous float32, unit-normalised for cosine."""
    if metric == "cosine":
        vectors = np.array(vectors, dtype=np.float32, order="C")  # one copy: the caller's array stays as it was
        faiss.normalize_L2(vectors)  # cheaper than numpy's norm-and-divide, most of all for one query
        return vectors
    return np.ascontiguousarray(vectors, dtype=np.float32)


def bfs_order(neighbors: np.ndarray, start: int) -> np.ndarray:
    """Nodes of a graph (row i: neighbour ids of node i, -1 padding) in breadth-first order from `start`.

    Unreached nodes follow in id order, so the result is always a permutation of all the nodes.
    """
    n = len(neighbors)
    seen = np.zeros(n, dtype=bool)
    seen[start] = True
    levels = [np.array([start], dtype=np.int64)]
    frontier = levels[0]
    while len(frontier):
        reached = neighbors[frontier].ravel()
        reached = reached[reached >= 0]
        reached = reached[~seen[reached]]
        _, first = np.unique(reached, return_index=True)
        frontier = reached[np.sort(first)]  # first-seen order within the level, as a queue would give
        seen[frontier] = True
        levels.append(frontier)
    levels.append(np.flatnonzero(~seen))
    return np.concatenate(levels).astype(np.int64)


class VectorIndex:
    """A FAISS index whose i-th vector is the row with rowid `labels[i]`; search can be limited to rowids.

    Rowids are added in increasing order; `optimize_layout` may later reorder the positions, so a
    rowid's position is found through a sorted view of `labels`. (An IndexIDMap would do the
    translation inside FAISS, but it runs an OpenMP loop per call, which costs 10x on one-query
    searches on a busy machine.)
    """

    # Graph layout pays off once the vectors outgrow the CPU caches; redo it when the index has grown
    # by this factor since the last time, so its cost stays linear in the rows added.
    LAYOUT_MIN_ROWS = 20_000
    LAYOUT_GROWTH = 1.25

    def __init__(self, dim: int, params: IndexParams, index: Any = None, labels: np.ndarray | None = None) -> None:
        self.dim, self.params = dim, params
        # deserialize_index already returns the concrete class (IndexHNSWFlat...), which owns the C++ object.
        self.index = index if index is not None else self._empty(trained=False)
        self.labels = np.zeros(0, dtype=np.int64) if labels is None else labels
        self._laid_out_size = 0
        # The search parameters of the unfiltered path, reused while neither the index, the excluded
        # rowids nor efSearch change: building a tombstone bitmap costs O(index size) per query.
        self._plain: tuple[tuple[Any, ...], Any, tuple[Any, ...]] | None = None

    def _empty(self, trained: bool) -> faiss.Index:
        p, metric = self.params, _faiss_metric(self.params.metric)
        if p.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, p.hnsw_m, metric)
            index.hnsw.efConstruction = p.ef_construction
            index.hnsw.efSearch = p.ef_search
        elif p.kind.startswith("ivf") and trained:
            quantizer = faiss.IndexFlat(self.dim, metric)
            if p.kind == "ivf_flat":
                index = faiss.IndexIVFFlat(quantizer, self.dim, p.nlist, metric)
            else:
                index = faiss.IndexIVFPQ(quantizer, self.dim, p.nlist, p.pq_m, 8, metric)
            index.nprobe = p.nprobe
            index.own_fields = True
            quantizer.this.disown()
        else:
            index = faiss.IndexFlat(self.dim, metric)
        return index

    @property
    def labels(self) -> np.ndarray:
        """Rowid of each position of the FAISS index, increasing."""
        return self._labels

    @labels.setter
    def labels(self, labels: np.ndarray) -> None:
        self._labels = labels
        self._max_rowid = int(labels.max()) if len(labels) else -1
        self._sorted_view: tuple[np.ndarray, np.ndarray] | None = None  # (sorted rowids, their positions)
        # The same rowids plus -1 at the end: FAISS pads missing results with position -1, which
        # numpy reads as "the last element", so one lookup maps positions to rowids, padding included.
        self._rowid_at = np.append(labels, np.int64(-1))

    @property
    def size(self) -> int:
        """Vectors in the index, tombstoned ones included."""
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        """True while an IVF collection still runs on its exact stand-in."""
        return self.params.kind.startswith("ivf") and not isinstance(self.index, faiss.IndexIVF)

    def add(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Add prepared vectors under their rowids (larger than any already present)."""
        if not len(rowids):
            return
        rowids = np.asarray(rowids, dtype=np.int64)
        if rowids[0] <= self._max_rowid or np.any(np.diff(rowids) <= 0):
            raise ValueError("rowids must be added in increasing order")
        self.index.add(vectors)
        self.labels = np.concatenate([self.labels, rowids])

    def rebuild(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the index with one over exactly these vectors (compaction, IVF training)."""
        trained = self.params.kind.startswith("ivf") and len(rowids) >= self.params.train_min_rows
        self.index, self.labels = self._empty(trained=trained), np.zeros(0, dtype=np.int64)
        self._laid_out_size = 0
        if trained:
            self.index.train(vectors)
        self.add(rowids, vectors)

    def _selector(self, allow: np.ndarray | None, exclude: np.ndarray | None) -> tuple[faiss.IDSelector, np.ndarray]:
        mask = np.zeros(len(self.labels), dtype=bool) if allow is not None else np.ones(len(self.labels), dtype=bool)
        if self._sorted_view is None:
            order = np.argsort(self.labels, kind="stable")
            self._sorted_view = (self.labels[order], order)
        sorted_rowids, positions_of = self._sorted_view
        for rowids, keep in ((allow, True), (exclude, False)):
            if rowids is None or not len(rowids):
                continue
            found = np.searchsorted(sorted_rowids, rowids)
            inside = found < len(sorted_rowids)
            found, rowids = found[inside], rowids[inside]
            mask[positions_of[found[sorted_rowids[found] == rowids]]] = keep
        bitmap = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)), bitmap  # the bitmap must outlive the search

    def _new_params(self, ef_search: int) -> faiss.SearchParameters:
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(efSearch=ef_search)
        if isinstance(self.index, faiss.IndexIVF):
            return faiss.SearchParametersIVF(nprobe=self.params.nprobe)
        return faiss.SearchParameters()

    def _search_params(
        self, k: int, allow: np.ndarray | None, exclude: np.ndarray | None, ef_search: int | None
    ) -> tuple[Any, tuple[Any, ...]]:
        """FAISS search parameters plus the objects that must stay alive while FAISS reads them."""
        ef = max(ef_search or self.params.ef_search, k)
        if allow is None:
            # Keyed on identity: callers pass a new `exclude` array whenever the excluded set changes,
            # and `add`/`rebuild` replace `labels` and `index`.
            key = (ef, self.params.nprobe, self.index, self.labels, exclude)
            plain = self._plain
            if plain is not None:
                old = plain[0]
                if old[0] == ef and old[1] == key[1] and old[2] is key[2] and old[3] is key[3] and old[4] is exclude:
                    return plain[1], plain[2]
        params = self._new_params(ef)
        keep_alive: tuple[Any, ...] = ()
        if allow is not None or (exclude is not None and len(exclude)):
            selector, bitmap = self._selector(allow, exclude)
            params.sel, keep_alive = selector, (selector, bitmap)
        if allow is None:
            self._plain = (key, params, keep_alive)
        return params, keep_alive

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allow: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rowids) per query among `allow` (all if None) minus sorted `exclude`; rowid -1 pads."""
        if queries.ndim != 2 or queries.shape[1] != self.dim or queries.dtype != np.float32:
            raise ValueError(f"queries must be float32 of shape (n, {self.dim}), got {queries.dtype} {queries.shape}")
        params, _keep_alive = self._search_params(k, allow, exclude, ef_search)
        queries = np.ascontiguousarray(queries)
        n = len(queries)
        scores, positions = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
        # FAISS's own C entry point: its Python `search` wrapper re-validates and re-converts what
        # `prepare` already guarantees, which is a measurable share of a one-query search.
        self.index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(positions), params)
        return scores, self._rowid_at[positions]

    def optimize_layout(self, force: bool = False) -> bool:
        """Store an HNSW graph's vectors in breadth-first order of its base layer; True if it did.

        A search walks from a node to its neighbours; numbering them close together puts their
        vectors and neighbour lists on nearby cache lines and pages, which makes one-query search on
        a large index markedly faster. Results are unchanged: the same graph, renumbered.
        """
        if not isinstance(self.index, faiss.IndexHNSW) or self.size == 0:
            return False
        if not force and (self.size < self.LAYOUT_MIN_ROWS or self.size < self.LAYOUT_GROWTH * self._laid_out_size):
            return False
        hnsw = self.index.hnsw
        offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
        neighbors = faiss.vector_to_array(hnsw.neighbors)
        base_width = hnsw.nb_neighbors(0)  # the base layer comes first in each node's neighbour list
        base = neighbors[offsets[:-1, None] + np.arange(base_width)[None, :]]
        order = bfs_order(base, int(hnsw.entry_point))
        self.index.permute_entries(order)  # new position p holds what was at order[p]
        self.labels = self.labels[order]
        self._laid_out_size = self.size
        return True

    def to_bytes(self) -> bytes:
        """The serialised index followed by its labels."""
        data: bytes = faiss.serialize_index(self.index).tobytes()
        return struct.pack("<q", len(data)) + data + self.labels.tobytes()

    @classmethod
    def from_bytes(cls, dim: int, params: IndexParams, data: bytes) -> VectorIndex:
        """Load an index written by `to_bytes`."""
        (length,) = struct.unpack("<q", data[:8])
        index = faiss.deserialize_index(np.frombuffer(data[8 : 8 + length], dtype=np.uint8))
        labels = np.frombuffer(data[8 + length :], dtype=np.int64).copy()
        loaded = cls(dim, params, index, labels)
        loaded._laid_out_size = loaded.size  # as laid out as it was when written; growth triggers the next pass
        return loaded
