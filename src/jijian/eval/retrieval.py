"""`jijian eval retrieval`: how often vector, lexical and hybrid search put a relevant record near the top."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from jijian.eval.metrics import CUTOFFS, mean_metrics, question_metrics
from jijian.eval.questions import Question
from jijian.kb.backend import SEARCH_MODES, Collection
from jijian.kb.embed import Embedder, hybrid_vector_weight

DEPTH = max(CUTOFFS)


def rankings(
    collection: Collection, embedder: Embedder, queries: Sequence[str], mode: str, k: int = DEPTH
) -> list[list[str]]:
    """The ranked ids of each query's search in `mode` (read-only: the collection is not changed)."""
    vectors = embedder.embed(list(queries)) if mode != "lexical" else [None] * len(queries)
    out = []
    for query, vector in zip(queries, vectors, strict=True):
        weight = hybrid_vector_weight(embedder, query) if mode == "hybrid" else 1.0
        hits = collection.search(vector, k, mode=mode, text=query, output_fields=[], vector_weight=weight)
        out.append([hit.id for hit in hits])
    return out


def evaluate_retrieval(
    collection: Collection,
    embedder: Embedder,
    questions: Sequence[Question],
    modes: Sequence[str] = SEARCH_MODES,
) -> dict[str, Any]:
    """Mean recall@1/5/10, MRR and nDCG@10 per search mode, with the questions each mode missed at 10."""
    report: dict[str, Any] = {
        "collection": collection.name,
        "embedding_model": embedder.name,
        "questions": len(questions),
        "modes": {},
        "missed": {},
    }
    queries = [q.query for q in questions]
    for mode in modes:
        started = time.perf_counter()
        ranked = rankings(collection, embedder, queries, mode)
        rows = [question_metrics(ids, q.relevant) for ids, q in zip(ranked, questions, strict=True)]
        report["modes"][mode] = {**mean_metrics(rows), "seconds": time.perf_counter() - started}
        report["missed"][mode] = [
            {"line": q.line, "query": q.query, "relevant": list(q.relevant), "top": ids[:3]}
            for q, ids, row in zip(questions, ranked, rows, strict=True)
            if not row[f"recall@{DEPTH}"]
        ]
    return report
