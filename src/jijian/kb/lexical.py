"""What the lexical (FTS5 BM25) index sees of a text: words, and overlapping bigrams of Chinese/Japanese.

FTS5's default tokenizer (unicode61) splits on spaces and punctuation, so a run of Chinese between two
punctuation marks becomes one token and a word inside a sentence is never found. Before indexing,
every run of Han or kana characters is rewritten as its overlapping character bigrams plus its last
character ("机器学习" -> "机器 器学 学习 习"); text in space-separated scripts passes through unchanged, so
English is indexed and ranked exactly as before. A query is rewritten the same way: a Chinese word of
two or more characters matches through its bigrams (BM25 ranks documents holding more of them, in
any order, higher), and a single character becomes a prefix query that matches every bigram it
starts. Every character of a run starts one token, so any character can be found.

The choice was measured (`benchmarks/chinese_lexical.py`) against jieba word segmentation and the
FTS5 trigram tokenizer: see the README's "Chinese search" section. Bigrams need no dictionary or
dependency, never disagree between index and query (a segmenter may cut the same word differently in
two contexts), and work for encrypted collections, whose index holds keyed hashes of these same terms.
"""

from __future__ import annotations

import re

# Bumped whenever index terms change: a collection whose collection.json names another scheme (or
# none: made before this module) has its lexical index rebuilt when it is opened.
LEXICAL_SCHEME = "cjk-bigram/1"
# Hiragana, katakana, CJK unified ideographs (+ extension A) and compatibility ideographs. Hangul is
# left out: Korean separates words with spaces.
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
_TERM = re.compile(rf"[{CJK_CHARS}]+|(?:(?![{CJK_CHARS}])\w)+")
_CJK_CHAR = re.compile(f"[{CJK_CHARS}]")


def cjk_terms(run: str) -> list[str]:
    """Overlapping bigrams of a run of CJK characters, then its last character."""
    return [run[i : i + 2] for i in range(len(run) - 1)] + [run[-1]]


def index_text(text: str) -> str:
    """`text` as the clear FTS5 column stores it: CJK runs replaced by their terms, all else unchanged."""
    if not _CJK_CHAR.search(text):
        return text
    return _CJK_RUN.sub(lambda match: " " + " ".join(cjk_terms(match.group())) + " ", text)


def index_terms(text: str) -> list[str]:
    """Every term of `text` in order (lower-cased words, CJK terms): what an encrypted index blinds."""
    terms: list[str] = []
    for match in _TERM.finditer(text.lower()):
        token = match.group()
        terms.extend(cjk_terms(token) if _CJK_CHAR.match(token) else [token])
    return terms


def query_terms(text: str) -> list[tuple[str, bool]]:
    """Distinct (term, is_prefix) pairs of a query; a lone CJK character is a prefix of the bigrams it starts."""
    seen: dict[str, bool] = {}
    for match in _TERM.finditer(text.lower()):
        token = match.group()
        if not _CJK_CHAR.match(token):
            seen.setdefault(token, False)
        elif len(token) == 1:
            seen.setdefault(token, True)
        else:
            for bigram in cjk_terms(token)[:-1]:
                seen.setdefault(bigram, False)
    return list(seen.items())


def fts_query(text: str) -> str:
    """A user's words as a safe FTS5 query over a clear index: each term quoted, any may match."""
    return " OR ".join(f'"{term}"' + ("*" if prefix else "") for term, prefix in query_terms(text))


def cjk_share(text: str) -> float:
    """How much of `text` is Chinese/Japanese, counting two CJK characters as one word (0.0 to 1.0)."""
    cjk = len(_CJK_CHAR.findall(text))
    if not cjk:
        return 0.0
    words = sum(1 for match in _TERM.finditer(text) if not _CJK_CHAR.match(match.group()))
    return (cjk / 2) / (cjk / 2 + words)
