"""The request/response policy pipeline the server runs on every call, configured by `[guard]`.

On a request: injection check (refused when flagged and `block_injections`), PII found, and one
audit entry in which the prompt appears as `log_prompts` says (by default with PII redacted, never
in clear unless configured). On retrieved passages: injections dropped and audited. On a response:
verbatim-leakage check against documents the requester may not read (a leaking response is
withheld), PII redaction when `redact_responses`, and an audit entry. A streamed response goes
through `stream_check`, which holds text back until the same check has seen it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jijian.config.schema import GuardConfig
from jijian.guard.allowlists import Allowlists
from jijian.guard.apikeys import KeyRing
from jijian.guard.audit import AuditLog, load_audit_key
from jijian.guard.audit_limits import cap_event
from jijian.guard.injection import InjectionDetector, InjectionVerdict
from jijian.guard.leakage import LeakageChecker, LeakageVerdict
from jijian.guard.pii import PiiSpan, find_pii, redact_spans
from jijian.guard.principals import Principal, can_read, validate_readers
from jijian.guard.rag import GuardedContext, Passage, wrap_passages
from jijian.guard.stream import StreamingLeakCheck

WITHHELD = "[response withheld: it repeats a document you are not allowed to read]"
REFUSED = "[request refused: it looks like a prompt-injection attempt]"


@dataclass(frozen=True)
class RequestDecision:
    """What the policy decided about a request, and what it logged."""

    request_id: str
    allowed: bool
    injection: InjectionVerdict
    pii: list[PiiSpan] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class ResponseDecision:
    """The response text to send (possibly redacted or withheld) and why."""

    request_id: str
    text: str
    blocked: bool
    leakage: LeakageVerdict
    pii: list[PiiSpan] = field(default_factory=list)


class GuardPolicy:
    """Injection, PII, leakage and audit checks around one deployment's requests and responses."""

    def __init__(
        self,
        config: GuardConfig | None = None,
        *,
        detector: InjectionDetector | None = None,
        audit: AuditLog | None = None,
        keyring: KeyRing | None = None,
    ) -> None:
        self.config = config or GuardConfig()
        self.detector = detector or InjectionDetector(self.config.injection_threshold)
        self.audit_log = (
            audit
            if audit is not None
            else (
                AuditLog(self.config.audit_log, load_audit_key(self.config.audit_key_file, self.config.audit_key_env))
                if self.config.audit_log
                else None
            )
        )
        self.keyring = keyring if keyring is not None else (
            KeyRing.load(self.config.api_keys) if self.config.api_keys else KeyRing()
        )  # fmt: skip
        self.allowlists = Allowlists(self.config.role_collections, self.config.role_tools)
        self.leakage = LeakageChecker(n=self.config.leakage_ngram, min_shared=self.config.leakage_min_shared)
        self._readers: dict[str, list[str] | None] = {}
        self._protected_version = 0

    # --- principals -------------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> Principal | None:
        """The principal for an API key (None for an unknown or missing key)."""
        return self.keyring.authenticate(api_key)

    def protect_document(self, doc_id: str, text: str, readers: Iterable[str] | None) -> None:
        """Register a document with an ACL, so responses repeating it to non-readers are withheld."""
        checked = validate_readers(readers, where=f"document {doc_id!r} readers")
        if checked is None:
            return  # public: nothing to leak
        self._readers[doc_id] = checked
        self.leakage.add(doc_id, text)
        self._protected_version += 1

    def protected_documents(self) -> dict[str, list[str] | None]:
        """The registered restricted documents and their readers."""
        return dict(self._readers)

    def protected_version(self) -> int:
        """A number that changes whenever a restricted document is registered or its readers change."""
        return self._protected_version

    # --- logging ----------------------------------------------------------------------------

    def _redact(self, text: str, spans: list[PiiSpan]) -> str:
        return redact_spans(text, spans, self.config.redaction_mode)

    def loggable(self, text: str) -> str:
        """Text as it may appear in logs: PII redacted unless `redact_pii` is off."""
        return self._redact(text, find_pii(text)) if self.config.redact_pii else text

    def _prompt_for_log(self, text: str, spans: list[PiiSpan]) -> dict[str, Any]:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if self.config.log_prompts == "clear":
            return {"prompt": text, "prompt_sha256": digest}
        if self.config.log_prompts == "redacted":
            return {"prompt": self._redact(text, spans), "prompt_sha256": digest}
        return {"prompt_sha256": digest}

    def scrub_for_ingestion(self, text: str) -> str:
        """Document text as the knowledge base should store it: PII redacted if `redact_kb_ingestion`."""
        return (
            redact_spans(text, find_pii(text), self.config.redaction_mode) if self.config.redact_kb_ingestion else text
        )

    def audit(self, event: dict[str, Any]) -> None:
        """Append an event to the audit log, if one is configured."""
        if self.audit_log is not None:
            self.audit_log.append(cap_event(event, self.config.max_audit_field_chars))

    # --- the pipeline ---------------------------------------------------------------------------

    def check_request(
        self, text: str, principal: Principal | None = None, request_id: str | None = None
    ) -> RequestDecision:
        """Injection check, PII scan and audit entry for one incoming prompt."""
        request_id = request_id or uuid.uuid4().hex
        verdict = self.detector.scan(text)
        spans = find_pii(text)
        allowed = not (verdict.flagged and self.config.block_injections)
        self.audit({
            "type": "request", "request_id": request_id, "user": principal.user if principal else None,
            "allowed": allowed, "injection": verdict.to_json(), "pii": sorted({s.type for s in spans}),
            **self._prompt_for_log(text, spans),
        })  # fmt: skip
        return RequestDecision(request_id, allowed, verdict, spans, "" if allowed else REFUSED)

    def guard_passages(
        self,
        passages: Iterable[Passage | Mapping[str, Any]],
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> GuardedContext:
        """Wrap retrieved passages as data; drop and audit those judged injections."""
        guarded = wrap_passages(passages, self.detector)
        for dropped in guarded.dropped:
            self.audit({
                "type": "passage_dropped", "request_id": request_id, "user": principal.user if principal else None,
                "passage_id": dropped.passage.id, "source": dropped.passage.source,
                "injection": dropped.verdict.to_json(),
            })  # fmt: skip
        return guarded

    def check_response(
        self, text: str, principal: Principal | None = None, request_id: str | None = None
    ) -> ResponseDecision:
        """Leakage check against protected documents the principal may not read, then optional PII redaction."""
        request_id = request_id or uuid.uuid4().hex
        readable = [doc_id for doc_id, readers in self._readers.items() if can_read(principal, readers)]
        leakage = self.leakage.check(text, exclude=readable)
        spans = find_pii(text)
        if leakage.leaked:
            out = WITHHELD
        elif self.config.redact_responses:
            out = self._redact(text, spans)
        else:
            out = text
        self.audit({
            "type": "response", "request_id": request_id, "user": principal.user if principal else None,
            "blocked": leakage.leaked, "leaked_documents": [d for d in leakage.overlaps if leakage.leaked],
            "pii": sorted({s.type for s in spans}), "redacted": self.config.redact_responses,
        })  # fmt: skip
        return ResponseDecision(request_id, out, leakage.leaked, leakage, spans)

    def stream_check(self, principal: Principal | None = None, request_id: str | None = None) -> StreamingLeakCheck:
        """The incremental leakage check for one streamed response (see `jijian.guard.stream`)."""
        return StreamingLeakCheck(self, principal, request_id or uuid.uuid4().hex)
