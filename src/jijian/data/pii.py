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

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# International (+86 138 0013 8000), North American ((555) 123-4567) and plain 11-digit mobile numbers:
# 7+ digits with separators, requiring a leading + or a separator pattern so version strings survive.
_PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w.])"
    r"|(?<![\w.+])1[3-9]\d{9}(?![\w.])"
)


def redact_contacts(text: str) -> str:
    """Replace e-mail addresses and phone numbers with placeholders."""
    text = _EMAIL.sub(EMAIL_PLACEHOLDER, text)
    return _PHONE.sub(PHONE_PLACEHOLDER, text)
