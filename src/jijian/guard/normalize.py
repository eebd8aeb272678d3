"""Undo hidden-text tricks before matching: NFKC, invisible characters, tag smuggling, homoglyphs, spacing.

Attackers hide instructions from people but not from models: zero-width characters inside words
("ig\u200bnore"), Unicode tag characters that spell ASCII invisibly, Cyrillic or Greek letters that look
Latin ("іgnоre"), full-width letters, or letters spaced out ("i g n o r e"). The detector matches on
the text this module returns and reports which tricks it undid.
"""

from __future__ import annotations

import string
import unicodedata

from jijian.guard.linear_re import LinearPattern, not_followed_by, not_preceded_by

# Format characters that render as nothing: zero-width space/joiners, direction marks and
# overrides, word joiner, invisible operators, BOM, soft hyphen, Mongolian vowel separator.
# Single characters need no regular expression: `str.translate` deletes them in one pass.
_INVISIBLE_CODES = [0x00AD, 0x180E, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065)]
_INVISIBLE = dict.fromkeys([*_INVISIBLE_CODES, *range(0x2066, 0x206A), 0xFEFF])
# Unicode "tag" characters U+E0000..U+E007F mirror ASCII and are invisible: "ASCII smuggling".
_TAGS = {code: (chr(code - 0xE0000) if 0x20 <= code - 0xE0000 < 0x7F else None) for code in range(0xE0000, 0xE0080)}
# Subdivision flags (🏴 + tag letters + cancel tag, e.g. England's) are the one honest use of tags.
_FLAG_TAGS = LinearPattern(r"[\x{e0020}-\x{e007e}]+\x{e007f}", before=r"\x{1f3f4}")
# A zero-width joiner between two symbols is how emoji sequences such as 👨‍👩‍👧 are written: not a trick.
# ("Symbol": neither a letter, digit, underscore nor white space, as `[^\w\s]` is in Python's `re`.)
_SYMBOL = r"[^\p{L}\p{N}_\s\p{Z}\x{1c}-\x{1f}\x{85}]"
_EMOJI_JOINER = LinearPattern(r"\x{200d}", before=_SYMBOL, after=_SYMBOL)
_HOMOGLYPHS = str.maketrans(
    "аеорсухіјѕԁһԛԝӏАВЕКМНОРСТХІЈЅԚԜαεορτυνικΑΒΕΖΗΙΚΜΝΟΡΤΥΧɡɑ",
    "aeopcyxijsdhqwlABEKMHOPCTXIJSQWaeoptuvikABEZHIKMNOPTYXga",
)
# Single letters separated by one space/dot/dash/underscore, at least five of them: "i g n o r e".
_SPACED = LinearPattern(
    r"(?:[A-Za-z][ .\-_*]){4,}[A-Za-z]",
    before=not_preceded_by(r"\p{L}\p{N}_"),
    after=not_followed_by(r"\p{L}\p{N}_"),
    edges=string.ascii_letters,
)
_LATIN = frozenset(string.ascii_letters)
_FULL_WIDTH_ALNUM = LinearPattern(r"[\x{ff10}-\x{ff19}\x{ff21}-\x{ff3a}\x{ff41}-\x{ff5a}]")
_SPACERS = str.maketrans("", "", " .-_*")
# `str.translate` with a mapping costs a dictionary lookup per character (about 50 ms per MB of Chinese);
# one RE2 pass that finds no character to map (the usual case) is an order of magnitude cheaper.
_INVISIBLE_CHARACTERS = [chr(code) for code in _INVISIBLE]
_ANY_TAG = LinearPattern(r"[\x{e0000}-\x{e007f}]")
_ANY_INVISIBLE = LinearPattern("[" + "".join(f"\\x{{{code:x}}}" for code in _INVISIBLE) + "]")
_ANY_HOMOGLYPH = LinearPattern("[" + "".join(f"\\x{{{code:x}}}" for code in _HOMOGLYPHS) + "]")


def normalize(text: str) -> tuple[str, list[str]]:
    """The text as a model would read it, and the names of the hiding tricks that were undone."""
    tricks = []
    text = _FLAG_TAGS.sub("", text)
    untagged = text.translate(_TAGS) if _ANY_TAG.search(text) else text
    if untagged != text:
        tricks.append("unicode tag characters")
        text = untagged
    text = _EMOJI_JOINER.sub("", text)
    visible = text
    if _ANY_INVISIBLE.search(text):
        for character in _INVISIBLE_CHARACTERS:  # str.replace per character: C speed even on a flood of them
            if character in visible:
                visible = visible.replace(character, "")
    if visible != text:
        tricks.append("zero-width or direction-control characters")
        text = visible
    folded = unicodedata.normalize("NFKC", text)
    if folded != text and _FULL_WIDTH_ALNUM.search(text):  # letters/digits, not CJK punctuation
        tricks.append("full-width letters")
    text = folded
    mapped = text.translate(_HOMOGLYPHS) if _ANY_HOMOGLYPH.search(text) else text
    # Only a mix of scripts inside one word is a trick; plain Russian or Greek text is not.
    if mapped != text and any(
        word != mapped_word and any(c in _LATIN for c in word)
        for word, mapped_word in zip(text.split(), mapped.split(), strict=False)
    ):
        tricks.append("homoglyphs (look-alike letters from other scripts)")
        text = mapped
    if _SPACED.search(text):
        spaced = _SPACED.sub(lambda m: str(m.group()).translate(_SPACERS), text)
        if spaced != text:
            tricks.append("spaced-out letters")
            text = spaced
    return text, tricks
