"""The leakage check for a streamed response: text is released only once it provably holds no restricted n-gram.

A non-streamed answer is checked whole before it leaves. A stream cannot be recalled, so text goes
through a hold-back window instead:

* The text so far is cut into the same tokens as the leakage check. Only the last token can still
  change (the next delta may extend it), so every n-gram ending before it is final and is looked up
  in the restricted-document index as soon as it is.
* Text is released up to the start of the first n-gram that is not final yet (the last n tokens are
  held back), so every released token belongs only to n-grams already checked.
* The first n-gram shared with a document the requester may not read freezes the release point
  before it: nothing from there on leaves until the whole response has been checked. When the
  shared n-grams reach `min_shared` for one document the response is a leak whatever follows, and
  the stream stops at once.
* At the end the whole text gets exactly the non-streamed check (`GuardPolicy.check_response`, which
  also audits): a pass flushes what was held back, a leak stops the stream instead.

With `redact_responses` on, the whole answer is held back until the end (a PII span can straddle any
release point), so the client gets it redacted in one piece.

While no registered document is restricted for the requester (none protected, or all readable), there is
nothing to leak and every delta goes out at once: holding back n tokens would only add n tokens of latency
before the first text the user sees. Documents can be protected while a stream runs, so each delta asks
whether the policy's protected documents changed; once a restricted one exists, the whole text so far is
looked up and the hold-back window applies from then on (text sent before the document existed stays sent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jijian.guard.leakage import TOKEN_PATTERN
from jijian.guard.principals import Principal, can_read

if TYPE_CHECKING:
    from jijian.guard.policy import GuardPolicy

STOPPED = "[response stopped: it repeats a document you are not allowed to read]"


class StreamingLeakCheck:
    """Feed a streamed response's text deltas; get back only the text that is safe to send so far."""

    def __init__(self, policy: GuardPolicy, principal: Principal | None, request_id: str) -> None:
        self.policy, self.principal, self.request_id = policy, principal, request_id
        self.n = policy.leakage.n
        self.min_shared = policy.leakage.min_shared
        self._readable: set[str] = set()
        self._version_seen = -1  # the policy's protected_version() when `_readable` was computed
        self._restricted = False  # some protected document is not readable by the principal
        self._hold_everything = policy.config.redact_responses
        self._text = ""
        self._tokens: list[str] = []
        self._starts: list[int] = []  # character offset of each token
        self._checked = 0  # n-grams starting before this token index are final and were looked up
        self._shared: dict[str, set[tuple[str, ...]]] = {}  # restricted doc -> its n-grams seen in the text
        self._frozen_at: int | None = None  # character offset where the first restricted n-gram starts
        self._released = 0
        self.blocked = False

    def feed(self, delta: str) -> str:
        """Add a delta; the text that may be sent now (empty once blocked: then send `STOPPED` and end)."""
        if self.blocked:
            return ""
        self._text += delta
        if self.policy.protected_version() != self._version_seen:
            self._refresh_readers()
        if not self._restricted:
            return "" if self._hold_everything else self._release(len(self._text))
        self._retokenize_tail()
        final_tokens = len(self._tokens) - 1  # the last token may still grow
        while self._checked + self.n <= final_tokens:
            self._look_up(self._checked)
            self._checked += 1
            if self.blocked:
                self._audit_stop()
                return ""
        if self._hold_everything:
            return ""
        boundary = self._starts[len(self._tokens) - self.n] if len(self._tokens) > self.n else 0
        if self._frozen_at is not None:
            boundary = min(boundary, self._frozen_at)
        return self._release(boundary)

    def finish(self) -> str:
        """At the end of the stream: the rest of the answer if the whole text passes, else "" and `blocked`."""
        if self.blocked:
            return ""
        decision = self.policy.check_response(self._text, self.principal, self.request_id)
        if decision.blocked:
            self.blocked = True
            return ""
        if self._hold_everything:
            return decision.text  # possibly redacted; nothing was released before
        return self._release(len(self._text))

    def _refresh_readers(self) -> None:
        self._version_seen = self.policy.protected_version()
        documents = self.policy.protected_documents()
        self._readable = {doc for doc, readers in documents.items() if can_read(self.principal, readers)}
        self._restricted = len(self._readable) < len(documents)

    def _release(self, boundary: int) -> str:
        if boundary <= self._released:
            return ""
        out = self._text[self._released : boundary]
        self._released = boundary
        return out

    def _retokenize_tail(self) -> None:
        # Only the last token can change when text is appended: scan again from its start.
        if self._tokens:
            self._tokens.pop()
            start = self._starts.pop()
        else:
            start = 0
        for match in TOKEN_PATTERN.finditer(self._text, start):
            self._tokens.append(match.text().lower())
            self._starts.append(match.start())

    def _look_up(self, index: int) -> None:
        gram = tuple(self._tokens[index : index + self.n])
        for doc_id in self.policy.leakage.owners(gram):
            if doc_id in self._readable:
                continue
            if self._frozen_at is None:
                self._frozen_at = self._starts[index]
            shared = self._shared.setdefault(doc_id, set())
            shared.add(gram)
            if len(shared) >= self.min_shared:
                self.blocked = True

    def _audit_stop(self) -> None:
        self.policy.audit({
            "type": "response", "request_id": self.request_id,
            "user": self.principal.user if self.principal else None, "blocked": True, "streamed": True,
            "leaked_documents": sorted(self._shared),
            "released_chars": self._released,
        })  # fmt: skip
