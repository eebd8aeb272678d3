"""Guardrails: prompt-injection detection, PII redaction, principals and ACLs, audit log, encryption at rest.

Entry points for other packages: `detect_injection`, `find_pii` / `redact` (the data pipeline's
scrubbing hook), `wrap_passages` (the RAG path), `LeakageChecker`, `AuditLog` / `verify_audit`,
`encrypt_file` / `decrypt_file`, `KeyRing`, `Allowlists`, and `GuardPolicy`, which the server runs
on every request and response. Heavy pieces are imported on first use, so `import jijian.guard` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "detect_injection": "jijian.guard.injection",
    "InjectionDetector": "jijian.guard.injection",
    "InjectionVerdict": "jijian.guard.injection",
    "find_pii": "jijian.guard.pii",
    "redact": "jijian.guard.pii",
    "PiiSpan": "jijian.guard.pii",
    "wrap_passages": "jijian.guard.rag",
    "Passage": "jijian.guard.rag",
    "LeakageChecker": "jijian.guard.leakage",
    "AuditLog": "jijian.guard.audit",
    "verify_audit": "jijian.guard.audit",
    "encrypt_file": "jijian.guard.crypto",
    "decrypt_file": "jijian.guard.crypto",
    "load_key": "jijian.guard.crypto",
    "KeyRing": "jijian.guard.apikeys",
    "Allowlists": "jijian.guard.allowlists",
    "GuardPolicy": "jijian.guard.policy",
    "Principal": "jijian.guard.principals",
    "can_read": "jijian.guard.principals",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: kb imports jijian.guard.principals and should not pay for numpy or cryptography.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jijian.guard' has no attribute {name!r}")
