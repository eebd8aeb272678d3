"""Cleaning: Unicode normalisation, control characters out, and quality filters that reject a document."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# C0/C1 control characters except tab, newline and carriage return, which text legitimately holds.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NOT_ALNUM = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """NFC-normalise, drop control characters and unify line endings."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class QualityFilter:
    """Thresholds a cleaned document must meet; `reject_reason` names the first one it fails."""

    min_chars: int = 16
    max_chars: int | None = None
    min_mean_line_length: float = 2.0
    max_mean_line_length: float = 1000.0
    min_alnum_fraction: float = 0.25
    max_repeated_line_fraction: float = 0.5

    def reject_reason(self, text: str) -> str | None:
        """None when the document passes, else the name of the failed filter (a statistics key)."""
        if len(text) < self.min_chars:
            return "too_short"
        if self.max_chars is not None and len(text) > self.max_chars:
            return "too_long"
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "too_short"
        mean_line = sum(len(line) for line in lines) / len(lines)
        if mean_line < self.min_mean_line_length:
            return "short_lines"
        if mean_line > self.max_mean_line_length:
            return "long_lines"
        alnum = len(_NOT_ALNUM.sub("", text))
        if alnum < self.min_alnum_fraction * len(text):
            return "low_alnum"
        # Boilerplate and spam repeat whole lines; code repeats a few short ones, hence the stripped count.
        repeated = len(lines) - len({line.strip() for line in lines})
        if repeated > self.max_repeated_line_fraction * len(lines):
            return "repeated_lines"
        return None
