"""The FAISS side of a collection: one index type chosen by config, labelled by SQLite rowid.

Cosine is inner product over unit vectors. IVF indexes need training data, so they start as an
exact (flat) index and are rebuilt as IVF once `train_min_rows` vectors exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


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
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as contiguous float32, unit-normalised for cosine."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        vectors = vectors.copy()
        faiss.normalize_L2(vectors)
    return vectors


class VectorIndex:
    """A FAISS index over (rowid, vector) pairs with search restricted by an optional ID selector."""

    def __init__(self, dim: int, params: IndexParams, index: faiss.Index | None = None) -> None:
        self.dim, self.params = dim, params
        self.index = index if index is not None else self._empty(trained=False)

    def _empty(self, trained: bool) -> faiss.Index:
        p, metric = self.params, _faiss_metric(self.params.metric)
        if p.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, p.hnsw_m, metric)
            inner.hnsw.efConstruction = p.ef_construction
            inner.hnsw.efSearch = p.ef_search
        elif p.kind.startswith("ivf") and trained:
            quantizer = faiss.IndexFlat(self.dim, metric)
            if p.kind == "ivf_flat":
                inner = faiss.IndexIVFFlat(quantizer, self.dim, p.nlist, metric)
            else:
                inner = faiss.IndexIVFPQ(quantizer, self.dim, p.nlist, p.pq_m, 8, metric)
            inner.nprobe = p.nprobe
            inner.own_fields = True
            quantizer.this.disown()
        else:
            inner = faiss.IndexFlat(self.dim, metric)
        index = faiss.IndexIDMap2(inner)
        inner.this.disown()
        index.own_fields = True
        return index

    @property
    def size(self) -> int:
        """Vectors in the index, tombstoned ones included."""
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        """True while an IVF collection still runs on its exact stand-in."""
        inner = faiss.downcast_index(self.index.index)
        return self.params.kind.startswith("ivf") and not isinstance(inner, faiss.IndexIVF)

    def add(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Add prepared vectors under their rowids."""
        if len(rowids):
            self.index.add_with_ids(vectors, np.ascontiguousarray(rowids, dtype=np.int64))

    def rebuild(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the index with one over exactly these vectors (compaction, IVF training)."""
        trained = self.params.kind.startswith("ivf") and len(rowids) >= self.params.train_min_rows
        self.index = self._empty(trained=trained)
        if trained:
            self.index.train(vectors)
        self.add(rowids, vectors)

    def search(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rowids) per query; rowid -1 pads missing results."""
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search or self.params.ef_search, k))
        elif isinstance(inner, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(nprobe=self.params.nprobe)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return self.index.search(queries, k, params=params)

    def to_bytes(self) -> bytes:
        """The serialised index."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, dim: int, params: IndexParams, data: bytes) -> VectorIndex:
        """Load an index written by `to_bytes`."""
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(dim, params, index)
