"""Undo hidden-text tricks before matching: NFKC, invisible characters, tag smuggling, homoglyphs, spacing.

Attackers hide instructions from people but not from models: zero-width characters inside words
("ig\u200bnore"), Unicode tag characters that spell ASCII invisibly, Cyrillic or Greek letters that look
Latin ("іgnоre"), full-width letters, or letters spaced out ("i g n o r e"). The detector matches on
the text this module returns and reports which tricks it undid.
"""

from __future__ import annotations

import re
import unicodedata

# Format characters that render as nothing: zero-width space/joiners, direction marks and
# overrides, word joiner, invisible operators, BOM, soft hyphen, Mongolian vowel separator.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# Unicode "tag" characters U+E0000..U+E007F mirror ASCII and are invisible: "ASCII smuggling".
_TAGS = re.compile("[\U000e0000-\U000e007f]")
# Subdivision flags (🏴 + tag letters + cancel tag, e.g. England's) are the one honest use of tags.
_FLAG_TAGS = re.compile("(?<=\U0001f3f4)[\U000e0020-\U000e007e]+\U000e007f")
# A zero-width joiner between two symbols is how emoji sequences such as 👨‍👩‍👧 are written: not a trick.
_EMOJI_JOINER = re.compile("(?<=[^\\w\\s])\u200d(?=[^\\w\\s])")
_HOMOGLYPHS = str.maketrans(
    "аеорсухіјѕԁһԛԝӏАВЕКМНОРСТХІЈЅԚԜαεορτυνικΑΒΕΖΗΙΚΜΝΟΡΤΥΧɡɑ",
    "aeopcyxijsdhqwlABEKMHOPCTXIJSQWaeoptuvikABEZHIKMNOPTYXga",
)
# Single letters separated by one space/dot/dash/underscore, at least five of them: "i g n o r e".
_SPACED = re.compile(r"(?<![\w])(?:[A-Za-z][ .\-_*]){4,}[A-Za-z](?![\w])")
_LATIN = re.compile(r"[A-Za-z]")


def normalize(text: str) -> tuple[str, list[str]]:
    """The text as a model would read it, and the names of the hiding tricks that were undone."""
    tricks = []
    text = _FLAG_TAGS.sub("", text)
    if _TAGS.search(text):
        tricks.append("unicode tag characters")
        text = _TAGS.sub(
            lambda m: chr(ord(m.group()) - 0xE0000) if 0x20 <= ord(m.group()) - 0xE0000 < 0x7F else "", text
        )
    text = _EMOJI_JOINER.sub("", text)
    if _INVISIBLE.search(text):
        tricks.append("zero-width or direction-control characters")
        text = _INVISIBLE.sub("", text)
    folded = unicodedata.normalize("NFKC", text)
    if folded != text and re.search(
        r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]", text
    ):  # letters/digits, not CJK punctuation
        tricks.append("full-width letters")
    text = folded
    mapped = text.translate(_HOMOGLYPHS)
    # Only a mix of scripts inside one word is a trick; plain Russian or Greek text is not.
    if mapped != text and any(
        _LATIN.search(word) and word != mapped_word
        for word, mapped_word in zip(text.split(), mapped.split(), strict=False)
    ):
        tricks.append("homoglyphs (look-alike letters from other scripts)")
        text = mapped
    if _SPACED.search(text):
        spaced = _SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group()), text)
        if spaced != text:
            tricks.append("spaced-out letters")
            text = spaced
    return text, tricks
