"""Regular expressions that run in time linear in the text: RE2 (no backtracking) behind a small `re`-like API.

Every pattern the guard runs on user text is a `LinearPattern`. Python's `re` backtracks, so one
pattern such as `BEGIN .*? END` over 100 KB of `BEGIN` lines costs seconds and grows quadratically;
RE2 compiles the pattern to an automaton that reads each byte a bounded number of times.

RE2 has no look-around, so the two things the guard's patterns need from it are spelled out:
`before` and `after` are RE2 patterns that must match right before and right after the match (for a
negative look-around, the complement: `not_preceded_by("A-Za-z")` is `(?:\\A|[^A-Za-z])`). They are
matched but not part of the reported span, and the next search restarts one character before the
previous match's end, so the character that ended one match can start the next, as with look-around.

The text is encoded to UTF-8 once per call and searched as bytes (RE2's own `str` path re-encodes the
whole text on every `search(pos)`), and byte offsets are turned back into character offsets with a
cursor that only moves forward. Character classes follow RE2: `\\d`, `\\w`, `\\s` and `\\b` are ASCII;
write `\\p{L}`, `\\p{N}` or `\\p{Z}` where Unicode letters, digits or spaces are meant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import re2

_UNANCHORED = re2._Anchor.UNANCHORED
_OPTIONS = re2.Options()
_OPTIONS.max_mem = 64 << 20  # the rule set is large; more DFA cache keeps RE2 on its fast path


def not_preceded_by(char_class: str) -> str:
    """A `before` pattern: start of text, or one character outside `char_class` (a `[...]` body)."""
    return rf"(?:\A|[^{char_class}])"


def not_followed_by(char_class: str) -> str:
    """An `after` pattern: end of text, or one character outside `char_class` (a `[...]` body)."""
    return rf"(?:\z|[^{char_class}])"


class LinearMatch:
    """One match: spans in character offsets of the searched text; group 0 is the match itself."""

    __slots__ = ("_spans", "string")

    def __init__(self, string: str, spans: list[tuple[int, int]]) -> None:
        self.string = string
        self._spans = spans

    def span(self, group: int = 0) -> tuple[int, int]:
        """(start, end) of a group; (-1, -1) if it did not take part in the match."""
        return self._spans[group]

    def start(self, group: int = 0) -> int:
        """Start offset of a group."""
        return self._spans[group][0]

    def end(self, group: int = 0) -> int:
        """End offset (exclusive) of a group."""
        return self._spans[group][1]

    def text(self) -> str:
        """Text of the whole match (group 0 always takes part)."""
        start, end = self._spans[0]
        return self.string[start:end]

    def group(self, group: int = 0) -> str | None:
        """Text of a group, or None if it did not take part in the match."""
        start, end = self._spans[group]
        return None if start < 0 else self.string[start:end]


class _Offsets:
    """Byte offset -> character offset in one UTF-8 text, for offsets asked in increasing order (amortised O(1))."""

    def __init__(self, encoded: bytes, ascii_only: bool) -> None:
        self.encoded = encoded
        self.ascii_only = ascii_only
        self.byte, self.char = 0, 0

    def __call__(self, byte: int) -> int:
        if self.ascii_only:
            return byte
        self.char += len(self.encoded[self.byte : byte].decode("utf-8", "surrogatepass"))
        self.byte = byte
        return self.char


def _char_start(encoded: bytes, byte: int) -> int:
    """The offset of the first byte of the UTF-8 character that contains `byte`."""
    while 0 < byte < len(encoded) and encoded[byte] & 0xC0 == 0x80:
        byte -= 1
    return byte


def _next_char(encoded: bytes, byte: int) -> int:
    """The offset of the character after the one that starts at `byte`."""
    byte += 1
    while byte < len(encoded) and encoded[byte] & 0xC0 == 0x80:
        byte += 1
    return byte


class LinearPattern:
    """A compiled RE2 pattern with optional `before`/`after` context, searched in linear time."""

    def __init__(
        self,
        pattern: str,
        *,
        before: str = "",
        after: str = "",
        ignore_case: bool = False,
        multiline: bool = False,
        dot_all: bool = False,
        edges: str | tuple[str, str] = "",
    ) -> None:
        self.pattern = pattern
        self.before, self.after = before, after
        flags = "".join(f for f, on in (("i", ignore_case), ("m", multiline), ("s", dot_all)) if on)
        prefix = f"(?{flags})" if flags else ""
        full = prefix + f"{before}({pattern}){after}"
        self.full_pattern = full  # what RE2 compiles, context included (`PatternFilter` adds it too)
        try:
            self._regex = re2.compile(full.encode("utf-8"), _OPTIONS)
            self.groups = self._regex.groups - 1
            # Without context or groups of its own, only the match's span is needed, and RE2 finds a span alone
            # with its DFAs (forward for the end, backward for the start); asking for a group makes it run a
            # slower engine over the whole match (100 ms for one megabyte-long run of base64).
            self._span_only = not before and not after and self.groups == 0
            if self._span_only:
                self._regex = re2.compile((prefix + f"(?:{pattern})").encode("utf-8"), _OPTIONS)
            # `edges`: the ASCII characters every match of `pattern` starts with and ends with (one string for
            # both, or a (first, last) pair), which the before and after context characters never are (the
            # contexts are one character or an anchor). Then the span with context, found by the DFAs alone,
            # gives the pattern's span by dropping a context character at either end.
            first, last = (edges, edges) if isinstance(edges, str) else edges
            self._first, self._last = frozenset(first.encode("ascii")), frozenset(last.encode("ascii"))
            self._edges = bool(self._first and self._last) and self.groups == 0 and not self._span_only
            if self._edges:
                self._regex = re2.compile((prefix + f"{before}(?:{pattern}){after}").encode("utf-8"), _OPTIONS)
        except re2.error as e:
            raise ValueError(f"pattern {pattern!r} is not valid RE2 syntax: {e}") from e

    def finditer(self, text: str, pos: int = 0) -> Iterator[LinearMatch]:
        """Non-overlapping matches, left to right, from character `pos` on (the text before it is not seen)."""
        if pos:
            for m in self.finditer(text[pos:]):
                yield LinearMatch(text, [(s + pos, e + pos) if s >= 0 else (s, e) for s, e in m._spans])
            return
        for spans in self._all_spans(text):
            yield LinearMatch(text, spans)

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """(start, end) of every match, as `finditer` finds them, without a match object each (hot loops)."""
        for spans in self._all_spans(text):
            yield spans[0]

    def _all_spans(self, text: str) -> Iterator[list[tuple[int, int]]]:
        """Character spans of the pattern and its groups, match by match."""
        encoded = text.encode("utf-8", "surrogatepass")
        offsets = _Offsets(encoded, len(encoded) == len(text))
        pos = 0
        while pos <= len(encoded):
            # The compiled RE2 object itself: `re2`'s Python wrapper adds a generator per call.
            all_spans = self._regex._regexp.Match(_UNANCHORED, encoded, pos, len(encoded))
            if all_spans[0] == (-1, -1):
                return
            # Group 1 is the pattern itself (without its before/after context); groups 2.. are its own.
            if self._edges:
                start, end = all_spans[0]
                start = start if start < len(encoded) and encoded[start] in self._first else _next_char(encoded, start)
                end = end if end and encoded[end - 1] in self._last else _char_start(encoded, end - 1)
                byte_spans = [(start, end)]
            else:
                byte_spans = [all_spans[0]] if self._span_only else list(all_spans[1:])
            if offsets.ascii_only:
                yield byte_spans
            else:
                chars = {b: offsets(b) for b in sorted({b for span in byte_spans for b in span if b >= 0})}
                yield [(chars[s], chars[e]) if s >= 0 else (-1, -1) for s, e in byte_spans]
            end = byte_spans[0][1]
            # Restart at the character before this match's end, so that it can be the next match's context.
            restart = _char_start(encoded, end - 1) if self.before and end > 0 else end
            pos = restart if restart > pos else _next_char(encoded, pos)

    def search(self, text: str) -> LinearMatch | None:
        """The leftmost match, or None."""
        return next(self.finditer(text), None)

    def findall(self, text: str) -> list[str]:
        """The text of every match (group 0)."""
        return [m.string[m.start() : m.end()] for m in self.finditer(text)]

    def sub(self, repl: str | Callable[[LinearMatch], str], text: str) -> str:
        """The text with every match replaced by `repl` (a literal string, or a function of the match)."""
        out, last = [], 0
        for m in self.finditer(text):
            out.append(text[last : m.start()])
            out.append(repl(m) if callable(repl) else repl)
            last = m.end()
        out.append(text[last:])
        return "".join(out)


class PatternFilter:
    """Which of many patterns can match a text, found in one pass (RE2's FilteredRE2), so the rest are never run.

    RE2 extracts from each pattern the literal strings ("atoms") at least one of which any match must
    contain, and finds all atoms of all patterns in one automaton pass; a pattern none of whose atoms
    occur cannot match and is skipped. A pattern without such literals is always a candidate. The
    answer is a superset of the patterns that match, so the caller still runs each candidate: a
    text that triggers nothing (every ordinary prompt, and most adversarial floods) costs one pass
    instead of one per pattern.
    """

    def __init__(self, patterns: list[LinearPattern]) -> None:
        self._filter = re2.Filter()
        for pattern in patterns:
            self._filter.Add(pattern.full_pattern.encode("utf-8"), _OPTIONS)
        self._filter.Compile()

    def candidates(self, text: str) -> list[int]:
        """Indices (in the constructor's order) of the patterns that may match `text`; the others cannot."""
        return list(self._filter.Match(text.encode("utf-8", "surrogatepass"), True) or ())
