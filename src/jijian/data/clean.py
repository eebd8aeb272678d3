"""Cleaning: Unicode normalisation, control characters out, and quality filters that reject a document.

Chinese text is normalised too: full-width letters, digits and spaces become their ASCII forms, and
punctuation takes the width of the script around it (full-width next to Chinese, ASCII between
Latin words), so two copies of a document that differ only in input-method habits clean to the same text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# C0/C1 control characters except tab, newline and carriage return, which text legitimately holds.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NOT_ALNUM = re.compile(r"[\W_]+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Full-width digits and Latin letters (U+FF10-FF5A) and the ideographic space, to their ASCII forms.
_WIDE = re.compile(f"[{_CJK}\u3000\uff01-\uff5e]")
_HALF_WIDTH = {code: code - 0xFEE0 for code in range(0xFF10, 0xFF5B) if chr(code - 0xFEE0).isalnum()}
_HALF_WIDTH[0x3000] = 0x20
_FULL_PUNCTUATION = dict(zip(",;:?!()", "，；：？！（）", strict=True))
_HALF_PUNCTUATION = {full: half for half, full in _FULL_PUNCTUATION.items()} | {"．": "."}
# A mark touching a Chinese character (a dot only when it ends a sentence), and one between Latin text.
_PUNCTUATION_AFTER_CJK = re.compile(rf"(?<=[{_CJK}])([,;:?!()]|\.(?=\s|$|[{_CJK}]))|[,;:?!](?=[{_CJK}])")
_PUNCTUATION_AFTER_LATIN = re.compile(rf"(?<=[A-Za-z0-9])[，；：？！（）．](?![{_CJK}])")


def normalize_chinese(text: str) -> str:
    """Full-width letters and digits to ASCII; punctuation full-width next to Chinese, ASCII between Latin text."""
    if not _WIDE.search(text):
        return text  # no CJK and no full-width form: most code and English text, skipped at C speed
    text = text.translate(_HALF_WIDTH)
    text = _PUNCTUATION_AFTER_CJK.sub(lambda m: "。" if m.group() == "." else _FULL_PUNCTUATION[m.group()], text)
    return _PUNCTUATION_AFTER_LATIN.sub(lambda m: _HALF_PUNCTUATION[m.group()], text)


def normalize_text(text: str) -> str:
    """NFC-normalise, drop control characters, unify line endings and the width of Chinese text."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    return normalize_chinese(text.replace("\r\n", "\n").replace("\r", "\n"))


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
