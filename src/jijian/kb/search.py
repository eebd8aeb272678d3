"""Search over one embedded collection: vector, lexical (BM25) and hybrid (RRF) ranking within filters and ACLs.

A filter or ACL is a condition applied before ranking, never to a top-k afterwards: a selective one
is answered by an exact search over the rows it allows (full recall, never fewer than k), a broad
one by the index with an allow-list. The rows a condition allows are cached until the next write.

Not thread-safe on its own: the owning collection holds its lock around every call, the filter
cache's included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from jijian.guard.principals import Principal
from jijian.kb.backend import SEARCH_MODES, Hit, Hits, KBError
from jijian.kb.durability import DurableIndex
from jijian.kb.filters import matches, parse_filter, to_sql
from jijian.kb.rows import RowStore
from jijian.kb.vector_index import prepare

RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al.): damps the weight of the very top ranks
_FILTER_CACHE_SIZE = 64

Condition = tuple[str, list[Any]]  # an SQL condition on `rows` and its parameters
Ranking = list[tuple[int, float]]  # (rowid, score), best first


def query_vector(vector: Sequence[float] | np.ndarray | None, mode: str, dim: int, collection: str) -> np.ndarray:
    """The query as a float32 vector of the collection's dimension; clear errors otherwise."""
    if vector is None:
        raise KBError(f"mode {mode!r} needs a query vector")
    with np.errstate(over="ignore"):
        query = np.asarray(vector, dtype=np.float32)
    if query.shape != (dim,):
        got = query.shape[-1] if query.ndim else 0
        raise KBError(f"query vector has dimension {got}, collection {collection!r} expects {dim}")
    if not np.all(np.isfinite(query)):
        raise KBError("query vector contains NaN or infinity (or values beyond float32)")
    return query


def rrf(rankings: Sequence[tuple[float, Ranking]], k: int) -> Ranking:
    """Weighted reciprocal-rank fusion of rankings: the top k by the sum of weight / (RRF_K + rank)."""
    fused: dict[int, float] = {}
    for weight, ranking in rankings:
        for rank, (rowid, _) in enumerate(ranking):
            fused[rowid] = fused.get(rowid, 0.0) + weight / (RRF_K + rank + 1)
    return sorted(fused.items(), key=lambda item: -item[1])[:k]


class Searcher:
    """The search side of one collection: rankings, conditions, the filter cache, hits."""

    def __init__(self, rows: RowStore, durable: DurableIndex, exact_below: int) -> None:
        self.rows, self.durable, self.exact_below = rows, durable, exact_below
        self._filter_cache: dict[tuple[str, str], tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]] = {}

    def forget_filters(self) -> None:
        """Drop cached filter results: a write changed the rows."""
        self._filter_cache.clear()

    def search(
        self,
        collection: str,
        vector: Sequence[float] | np.ndarray | None,
        k: int,
        *,
        filter: str | None,
        principal: Principal | None,
        mode: str,
        text: str | None,
        columns: tuple[str, ...],
        vector_weight: float,
    ) -> Sequence[Hit]:
        """Top-k hits in `mode` within filter and ACL (arguments as `Collection.search`, columns resolved)."""
        if mode not in SEARCH_MODES:
            raise KBError(f"mode {mode!r}: must be one of {', '.join(SEARCH_MODES)}")
        if k < 1:
            raise KBError(f"k must be at least 1, got {k}")
        query = query_vector(vector, mode, self.rows.dim, collection) if mode != "lexical" else None
        if mode != "vector" and not text:
            raise KBError(f"mode {mode!r} needs the query text")
        condition = self.condition(filter, principal)
        if mode == "vector":
            assert query is not None
            if condition is None:
                return self.nearest(query.reshape(1, -1), k, columns)[0]
            return self.hits([self._vector_ranking(query, k, condition)], columns)[0]
        if mode == "lexical":
            return self.hits([self._lexical_ranking(text or "", k, condition)], columns)[0]
        assert query is not None
        if not 0.0 <= vector_weight <= 1e6:
            raise KBError(f"vector_weight must be a non-negative number, got {vector_weight}")
        depth = max(k, 50)
        rankings = [(vector_weight, self._vector_ranking(query, depth, condition))] if vector_weight > 0 else []
        rankings.append((1.0, self._lexical_ranking(text or "", depth, condition)))
        return self.hits([rrf(rankings, k)], columns)[0]

    def nearest(self, queries: np.ndarray, k: int, columns: tuple[str, ...]) -> list[Sequence[Hit]]:
        """Unfiltered top-k hits for each query (the hot path: no filter, no ACL)."""
        index = self.durable.index
        scores, rowids = index.search(prepare(queries, index.params.metric), k, exclude=self.durable.tombstone_array)
        if columns:
            return list(self.hits([self._ranked(s, r) for s, r in zip(scores, rowids, strict=True)], columns))
        # Ids and scores only: straight from FAISS's arrays; padding (-1) is no rowid, so it drops out.
        if index.params.metric == "l2":
            scores = -scores
        id_of = self.rows.ids.get
        found: list[Sequence[Hit]] = []
        for row_scores, row_ids in zip(scores.tolist(), rowids.tolist(), strict=True):
            ids = list(map(id_of, row_ids))
            if None in ids:
                kept = [i for i, found_id in enumerate(ids) if found_id is not None]
                ids, row_scores = [ids[i] for i in kept], [row_scores[i] for i in kept]
            found.append(Hits(cast("list[str]", ids), row_scores))  # the Nones were just dropped
        return found

    def _vector_ranking(self, query: np.ndarray, k: int, condition: Condition | None) -> Ranking:
        index = self.durable.index
        query = prepare(query.reshape(1, -1), index.params.metric)
        if condition is None:
            scores, rowids = index.search(query, k, exclude=self.durable.tombstone_array)
            return self._ranked(scores[0], rowids[0])
        allowed = self._allowed(condition)
        if len(allowed) == 0:
            return []
        if len(allowed) > self.exact_below:
            scores, rowids = index.search(query, k, allow=allowed, ef_search=max(index.params.ef_search, 4 * k))
            ranked = self._ranked(scores[0], rowids[0])
            if len(ranked) >= min(k, len(allowed)):
                return ranked
        # Exact search over the allowed set: selective filters keep full recall and never return < k.
        rowids, vectors = self._allowed_vectors(condition, allowed)
        scores = -((vectors - query) ** 2).sum(axis=1) if index.params.metric == "l2" else vectors @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(rowids[i]), float(scores[i])) for i in top]  # already higher-is-better for L2

    def _ranked(self, scores: np.ndarray, rowids: np.ndarray) -> Ranking:
        # FAISS L2 returns squared distances; negate so that higher is better, as for the other metrics.
        sign = -1.0 if self.durable.index.params.metric == "l2" else 1.0
        return [(r, sign * s) for s, r in zip(scores.tolist(), rowids.tolist(), strict=True) if r >= 0]

    def _lexical_ranking(self, text: str, k: int, condition: Condition | None) -> Ranking:
        query = self.rows.codec.fts_query(text)
        if not query:
            return []
        sql, params = condition if condition is not None else ("1", [])
        found = self.rows.db.execute(
            f"SELECT fts.rowid, bm25(fts) FROM fts JOIN rows ON rows.rowid = fts.rowid "
            f"WHERE fts MATCH ? AND {sql} ORDER BY bm25(fts) LIMIT ?",
            [query, *params, k],
        ).fetchall()
        # bm25() is lower-is-better; negate so every score is higher-is-better.
        return [(rowid, -score) for rowid, score in found]

    # -- conditions and the filter cache --------------------------------------------------------

    def condition(self, filter_expr: str | None, principal: Principal | None) -> Condition | None:
        """The SQL condition for a filter and a principal's ACL (None when everything is allowed)."""
        clauses, params = [], []
        if filter_expr:
            if self.rows.codec.filters_in_sql:
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

    def _cache(self, key: tuple[str, str], value: tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]) -> None:
        if key not in self._filter_cache and len(self._filter_cache) >= _FILTER_CACHE_SIZE:
            self._filter_cache.clear()
        self._filter_cache[key] = value

    def _matching_rowids(self, filter_expr: str) -> list[int]:
        """Rowids whose metadata, opened, matches a filter (metadata that is not in clear cannot be filtered in SQL)."""
        key = ("sealed metadata filter", filter_expr)  # kept with the filter cache, which every write clears
        if key not in self._filter_cache:
            expr = parse_filter(filter_expr)
            found = [rowid for rowid, metadata in self.rows.metadata_rows() if matches(expr, metadata)]
            self._cache(key, (np.array(found, dtype=np.int64), None))
        rowids: list[int] = self._filter_cache[key][0].tolist()
        return rowids

    def _allowed(self, condition: Condition) -> np.ndarray:
        # Evaluating a JSON filter scans every row; the same filter (or principal) usually repeats,
        # so its rowids are kept until the next write.
        key = (condition[0], json.dumps(condition[1]))
        if key not in self._filter_cache:
            found = self.rows.db.execute(f"SELECT rowid FROM rows WHERE {condition[0]}", condition[1])
            self._cache(key, (np.array([row[0] for row in found], dtype=np.int64), None))
        return self._filter_cache[key][0]

    def _allowed_vectors(self, condition: Condition, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (condition[0], json.dumps(condition[1]))
        cached = self._filter_cache.get(key)
        if cached is not None and cached[1] is not None:
            return cached[1]
        rows = self.rows.vectors(rowids=allowed.tolist())
        self._cache(key, (allowed, rows))
        return rows

    # -- hits -----------------------------------------------------------------------------------

    def hits(self, rankings: Sequence[Ranking], columns: tuple[str, ...]) -> list[list[Hit]]:
        """Hits for each ranking: ids from memory; the requested columns in ONE SQLite read for all rankings."""
        ids = self.rows.ids
        if not columns:
            id_of = ids.get
            return [
                [Hit(i, score) for rowid, score in ranking if (i := id_of(rowid)) is not None] for ranking in rankings
            ]
        rows = self.rows.columns([rowid for ranking in rankings for rowid, _ in ranking], columns)
        loads = json.loads
        out = []
        for ranking in rankings:
            hits = []
            for rowid, score in ranking:
                row = rows.get(rowid)
                if row is None or (record_id := ids.get(rowid)) is None:
                    continue
                text, metadata, readers = row
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
