"""Output check against verbatim leakage: n-gram overlap of a response with documents the requester may not read.

Text is cut into word tokens (runs of letters/digits) and single CJK characters, so the same n-gram
size works for English and Chinese. A response leaks a document when it shares at least
`min_shared` n-grams with it, or when a large fraction of the response's n-grams come from it.
The retrieval layer already keeps restricted documents out of the prompt; this catches what slips
through another way (a model trained on them, a cached answer, a tool result).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from jijian.guard.linear_re import LinearPattern

# One CJK character, or a run of letters and digits (Python's `[^\W_]+`).
TOKEN_PATTERN = LinearPattern(r"[\x{3400}-\x{9fff}\x{f900}-\x{faff}]|[\p{L}\p{N}]+")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens, one per CJK character (Chinese has no spaces to split on)."""
    return [t.lower() for t in TOKEN_PATTERN.findall(text)]


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of n-token shingles of a text."""
    toks = tokens(text)
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


@dataclass(frozen=True)
class LeakageVerdict:
    """Whether a response leaks, and the ids of the documents it overlaps with (shared n-gram counts)."""

    leaked: bool
    overlaps: dict[str, int] = field(default_factory=dict)


class LeakageChecker:
    """Index restricted documents' n-grams once; check responses against them."""

    def __init__(self, documents: Mapping[str, str] | Iterable[tuple[str, str]] = (), *, n: int = 8,
                 min_shared: int = 3, max_fraction: float = 0.2) -> None:  # fmt: skip
        if n < 1 or min_shared < 1 or not 0 < max_fraction <= 1:
            raise ValueError("leakage check needs n >= 1, min_shared >= 1 and 0 < max_fraction <= 1")
        self.n, self.min_shared, self.max_fraction = n, min_shared, max_fraction
        self._owners: dict[tuple[str, ...], set[str]] = {}
        items = documents.items() if isinstance(documents, Mapping) else documents
        for doc_id, text in items:
            self.add(doc_id, text)

    def add(self, doc_id: str, text: str) -> None:
        """Index one restricted document."""
        for gram in ngrams(text, self.n):
            self._owners.setdefault(gram, set()).add(doc_id)

    def owners(self, gram: tuple[str, ...]) -> frozenset[str]:
        """The indexed documents that contain this n-gram (lower-cased tokens)."""
        return frozenset(self._owners.get(gram, ()))

    def check(self, response: str, exclude: Iterable[str] = ()) -> LeakageVerdict:
        """Overlap of `response` with every indexed document except `exclude` (those the requester may read)."""
        grams = ngrams(response, self.n)
        skip = set(exclude)
        counts: dict[str, int] = {}
        for gram in grams:
            for doc_id in self._owners.get(gram, ()):
                if doc_id not in skip:
                    counts[doc_id] = counts.get(doc_id, 0) + 1
        limit = min(self.min_shared, max(1, int(self.max_fraction * len(grams))))
        leaked = any(count >= limit for count in counts.values())
        return LeakageVerdict(leaked, dict(sorted(counts.items(), key=lambda kv: -kv[1])))
