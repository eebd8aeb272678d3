"""The FAISS side of a collection: graph layout changes positions, never results."""

from __future__ import annotations

import numpy as np

from jijian.kb.vector_index import IndexParams, VectorIndex, bfs_order, prepare


def test_bfs_order_is_a_breadth_first_permutation() -> None:
    # 0 -> 2, 1; 2 -> 3; 1 -> 3; 4 unreachable.
    neighbors = np.array([[2, 1], [3, -1], [3, -1], [-1, -1], [0, -1]])
    assert bfs_order(neighbors, 0).tolist() == [0, 2, 1, 3, 4]


def _index(n: int = 3000, dim: int = 16) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = prepare(rng.normal(size=(n, dim)).astype(np.float32), "cosine")
    rowids = np.arange(1, 2 * n, 2, dtype=np.int64)  # gaps, as after deletes
    index = VectorIndex(dim, IndexParams(kind="hnsw", ef_search=64))
    index.add(rowids, vectors)
    return index, rowids, vectors


def test_layout_renumbers_positions_but_keeps_every_answer() -> None:
    index, rowids, vectors = _index()
    queries = vectors[:50]
    allow, exclude = rowids[::7], rowids[1::3]
    before = [
        index.search(queries, 10),
        index.search(queries, 10, allow=allow),
        index.search(queries, 10, exclude=exclude),
    ]

    assert index.optimize_layout(force=True)
    assert not np.array_equal(index.labels, rowids)  # positions really moved
    assert sorted(index.labels.tolist()) == rowids.tolist()
    after = [
        index.search(queries, 10),
        index.search(queries, 10, allow=allow),
        index.search(queries, 10, exclude=exclude),
    ]
    for (s0, r0), (s1, r1) in zip(before, after, strict=True):
        np.testing.assert_array_equal(r0, r1)
        np.testing.assert_allclose(s0, s1, rtol=1e-6)
    assert set(after[1][1].ravel().tolist()) <= set(allow.tolist())
    assert not set(after[2][1].ravel().tolist()) & set(exclude.tolist())

    # Later rows still go in, and the reordered index survives a round trip through bytes.
    extra = prepare(np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32), "cosine")
    index.add(np.arange(10_000, 10_005), extra)
    reloaded = VectorIndex.from_bytes(16, index.params, index.to_bytes())
    _, found = reloaded.search(extra, 1)
    assert found.ravel().tolist() == list(range(10_000, 10_005))
    np.testing.assert_array_equal(reloaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_layout_waits_until_the_index_is_large_enough() -> None:
    index, _, _ = _index(n=500)
    assert not index.optimize_layout()  # below LAYOUT_MIN_ROWS: everything fits in cache anyway
