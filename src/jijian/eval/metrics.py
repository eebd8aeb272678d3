"""Ranking metrics over one question's ranked ids and its relevant ids (binary relevance).

An id is relevant when it equals a relevant id or lies below it in a dotted hierarchy: with
`gzip` relevant, the hits `gzip` and `gzip.open` both count (the module and its members answer a
question about the module). Each relevant id is credited once, by its first matching hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CUTOFFS = (1, 5, 10)
NDCG_AT = 10


def matched_label(hit_id: str, relevant: Sequence[str]) -> str | None:
    """The relevant id that `hit_id` answers for, or None."""
    for label in relevant:
        if hit_id == label or hit_id.startswith(label + "."):
            return label
    return None


def gains(ranked: Sequence[str], relevant: Sequence[str]) -> list[int]:
    """1 where a ranked id is the first hit for one of the relevant ids, else 0."""
    credited: set[str] = set()
    out = []
    for hit_id in ranked:
        label = matched_label(hit_id, relevant)
        out.append(int(label is not None and label not in credited))
        if label is not None:
            credited.add(label)
    return out


def question_metrics(ranked: Sequence[str], relevant: Sequence[str]) -> dict[str, float]:
    """recall@1/5/10 (a relevant hit within the first k), reciprocal rank and nDCG@10 of one question."""
    hits = gains(ranked, relevant)
    first = next((rank for rank, gain in enumerate(hits, 1) if gain), None)
    out = {f"recall@{k}": float(first is not None and first <= k) for k in CUTOFFS}
    out["mrr"] = 1.0 / first if first is not None and first <= max(CUTOFFS) else 0.0
    dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(hits[:NDCG_AT], 1))
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), NDCG_AT) + 1))
    out[f"ndcg@{NDCG_AT}"] = dcg / ideal if ideal else 0.0
    return out


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over questions (0.0 for none)."""
    if not rows:
        return {}
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}
