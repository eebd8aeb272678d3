"""The PII-scrubbing hook of the build: any `str -> str` callable; the default is the guard's redaction.

`redact_pii` replaces every PII kind `jijian.guard.pii` recognises (e-mail, phone, Chinese resident ID,
card, IP, IBAN, secret) with a placeholder such as `[EMAIL]`, using the same checksum-validated
recognisers as the server and the knowledge base. A custom redactor must be picklable (a
module-level function or a functools.partial of one) because build workers receive it.
"""

from __future__ import annotations

from collections.abc import Callable

from jijian.guard.pii import redact

Redactor = Callable[[str], str]


def redact_pii(text: str) -> str:
    """Replace every validated PII span with its placeholder (e.g. `[EMAIL]`, `[PHONE]`)."""
    return redact(text, mode="placeholder")
