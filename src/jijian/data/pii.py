"""The PII-scrubbing hook of the build: any `str -> str` callable; the default redacts e-mails and phones.

jijian.data may not import jijian.guard (see ARCHITECTURE.md), so the CLI injects guard's redaction
here; this default keeps the pipeline safe on its own. A custom redactor must be picklable (a
module-level function or a functools.partial of one) because build workers receive it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Redactor = Callable[[str], str]

EMAIL_PLACEHOLDER = "<EMAIL>"
PHONE_PLACEHOLDER = "<PHONE>"

# Patterns begin with a plain character class so the regex engine skips ahead to candidates instead of
# trying every position; the "not inside a word" checks are lookbehinds placed after that first character.
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-](?<![A-Za-z0-9._%+-].)[A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
# International (+86 138 0013 8000), bracketed ((555) 123-4567) and separated (555-123-4567) numbers:
# separators are required so that version strings and plain integers survive.
_PHONE = re.compile(
    r"[+(\d](?<![\w.+].)"
    r"(?:(?<=\+)\d{1,3}[ .-]?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])|(?<=\()\d{2,4}\)[ .-]?|(?<=\d)\d{1,3}[ .-])"
    r"\d{3,4}[ .-]\d{3,4}(?!\w|\.\d)"
)
# Mainland China mobile numbers written without separators (13800138000).
_MOBILE = re.compile(r"1(?<![\w.+]1)[3-9]\d{9}(?!\w|\.\d)")


def redact_contacts(text: str) -> str:
    """Replace e-mail addresses and phone numbers with placeholders."""
    if "@" in text:
        text = _EMAIL.sub(EMAIL_PLACEHOLDER, text)
    text = _PHONE.sub(PHONE_PLACEHOLDER, text)
    return _MOBILE.sub(PHONE_PLACEHOLDER, text)
