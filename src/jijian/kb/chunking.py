"""Token-bounded chunks with overlap that break at paragraph and code-block boundaries.

A text is first cut into blocks: fenced code blocks (```) whole, and paragraphs (separated by blank
lines). Blocks are packed greedily into chunks of at most `max_tokens`; a block larger than that is
cut at line boundaries, and a line larger than that into word windows. Each new chunk starts with the
trailing units of the previous one, up to `overlap` tokens. Chunks keep character offsets into the
source so a hit can be traced back to the exact span.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LINE = r"[^\n]*\n?"
# A sentence ends at Chinese or Western terminal punctuation (Chinese puts no space after it).
_SENTENCE = r"[^。！？；!?]+[。！？；!?]*\s*|[。！？；!?]+\s*"
_WORD = r"\S+\s*"


@dataclass(frozen=True)
class Chunk:
    """A span `text[start:end]` of the source."""

    text: str
    start: int
    end: int


def _blocks(text: str) -> list[tuple[int, int]]:
    """Paragraph and code-fence spans, in order, without the blank lines between them."""
    spans: list[tuple[int, int]] = []

    def paragraphs(lo: int, hi: int) -> None:
        pos = lo
        for brk in _PARAGRAPH_BREAK.finditer(text, lo, hi):
            spans.append((pos, brk.start()))
            pos = brk.end()
        spans.append((pos, hi))

    pos = 0
    for fence in _FENCE.finditer(text):
        paragraphs(pos, fence.start())
        spans.append((fence.start(), fence.end()))
        pos = fence.end()
    paragraphs(pos, len(text))
    return [(lo, hi) for lo, hi in spans if text[lo:hi].strip()]


def _split(text: str, lo: int, hi: int, pattern: str) -> list[tuple[int, int]]:
    pieces = [(m.start(), m.end()) for m in re.finditer(pattern, text[lo:hi])]
    return [(lo + a, lo + b) for a, b in pieces if text[lo + a : lo + b].strip()]


def chunk_text(text: str, count_tokens: Callable[[str], int], max_tokens: int = 256, overlap: int = 32) -> list[Chunk]:
    """Cut `text` into chunks of at most `max_tokens` tokens (by `count_tokens`) with `overlap` tokens shared."""
    if max_tokens < 1 or overlap < 0 or overlap >= max_tokens:
        raise ValueError(f"chunking: need 0 <= overlap ({overlap}) < max_tokens ({max_tokens})")
    units: list[tuple[int, int, int]] = []  # (start, end, tokens)

    def add(lo: int, hi: int, levels: tuple[str, ...]) -> None:
        # Whole if it fits; else cut at the next finer boundary: lines, sentences, words, characters.
        tokens = count_tokens(text[lo:hi])
        if tokens <= max_tokens:
            units.append((lo, hi, tokens))
        elif levels:
            for piece_lo, piece_hi in _split(text, lo, hi, levels[0]):
                add(piece_lo, piece_hi, levels[1:])
        else:  # one "word" longer than a chunk: a run of Chinese, a base64 blob
            step = max(1, (hi - lo) * max_tokens // (tokens + 1))
            for start in range(lo, hi, step):
                units.append((start, min(hi, start + step), count_tokens(text[start : min(hi, start + step)])))

    for lo, hi in _blocks(text):
        add(lo, hi, (_LINE, _SENTENCE, _WORD))
    chunks: list[Chunk] = []
    current: list[tuple[int, int, int]] = []
    total = 0

    def emit() -> None:
        start, end = current[0][0], current[-1][1]
        chunks.append(Chunk(text[start:end].strip(), start, end))

    for unit in units:
        if current and total + unit[2] > max_tokens:
            emit()
            # Carry the tail of the chunk just written (never all of it, so each chunk moves forward).
            carried: list[tuple[int, int, int]] = []
            carried_tokens = 0
            for prev in reversed(current[1:]):
                if carried_tokens + prev[2] > overlap or carried_tokens + prev[2] + unit[2] > max_tokens:
                    break
                carried.insert(0, prev)
                carried_tokens += prev[2]
            current, total = carried, carried_tokens
        current.append(unit)
        total += unit[2]
    if current:
        emit()
    return chunks
