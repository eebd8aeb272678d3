"""N-gram speculative decoding (prompt lookup): draft tokens from the request's own history.

A decode step reads every weight once to produce one token per request; on a memory-bound device
the same read can check several tokens. The proposer looks for the latest earlier occurrence of the
request's last n tokens (longest n first) in its prompt and output, and drafts up to n of the tokens
that followed it (a short match is weak evidence, and on a compute-bound CPU every rejected draft
costs as much as a real token). The engine then runs the last token plus the drafts in one pass and keeps the drafts
the model agrees with, plus the model's own next token: greedy output is exactly what decoding one
token at a time gives, only fewer passes are needed when text repeats (code, quoted passages, RAG
answers copying their sources). vLLM calls this the `ngram` speculative method.

Only greedy requests without a repetition penalty are drafted for, where acceptance is a plain
argmax comparison; sampled ones decode a token at a time as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _History:
    """Where each n-gram of a request's tokens last ended, for the tokens indexed so far."""

    ends: dict[tuple[int, ...], int] = field(default_factory=dict)
    num_indexed: int = 0  # n-grams ending before this position are in `ends`


class NgramProposer:
    """Proposes up to min(`num_tokens`, n) drafts per request after matching its last n tokens, n = `max_n`..`min_n`."""

    def __init__(self, num_tokens: int, min_n: int = 1, max_n: int = 3) -> None:
        if num_tokens < 1 or not 1 <= min_n <= max_n:
            raise ValueError("need num_tokens >= 1 and 1 <= min_n <= max_n")
        self.num_tokens = num_tokens
        self.min_n = min_n
        self.max_n = max_n
        self._histories: dict[str, _History] = {}

    def forget(self, request_id: str) -> None:
        """Drop a finished request's index."""
        self._histories.pop(request_id, None)

    def propose(self, request_id: str, token_ids: Sequence[int], limit: int) -> list[int]:
        """Up to min(num_tokens, limit, n) tokens that followed the latest earlier match of the n-token tail."""
        limit = min(limit, self.num_tokens)
        if limit <= 0 or len(token_ids) <= self.min_n:
            return []
        history = self._histories.setdefault(request_id, _History())
        self._index(history, token_ids)
        for n in range(min(self.max_n, len(token_ids) - 1), self.min_n - 1, -1):
            end = history.ends.get(tuple(token_ids[-n:]))
            if end is not None:
                # A longer matched tail is better evidence: draft at most n tokens after an n-token match,
                # since a rejected draft costs a full row of compute in the verifying pass.
                return list(token_ids[end : end + min(limit, n)])
        return []

    def _index(self, history: _History, token_ids: Sequence[int]) -> None:
        # The n-grams ending at the last position are left out, so a lookup of the tail finds an
        # earlier occurrence rather than itself; they are added on the next call.
        stop = len(token_ids) - 1
        for end in range(history.num_indexed, stop):
            for n in range(self.min_n, self.max_n + 1):
                if end + 1 >= n:
                    history.ends[tuple(token_ids[end + 1 - n : end + 1])] = end + 1
        history.num_indexed = max(history.num_indexed, stop)
