"""PII recognisers and redaction: find spans of personal data, validated by checksum wherever one exists.

Types: EMAIL, PHONE (mainland-China mobile, international E.164), CN_ID (GB 11643 check digit),
CREDIT_CARD (Luhn), IP (v4/v6, parsed by `ipaddress`), IBAN (ISO 13616 mod-97), SECRET (known key
prefixes, or a high-entropy value assigned to a key/secret/token/password name). Offsets are
character offsets into the original text, end exclusive. `redact` is the hook the data pipeline,
the knowledge base and the server's logs call.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np

from jijian.config.errors import UserInputError
from jijian.guard.linear_re import LinearPattern, PatternFilter, not_followed_by, not_preceded_by

PII_TYPES = ("EMAIL", "PHONE", "CN_ID", "CREDIT_CARD", "IP", "IBAN", "SECRET")
RedactionMode = Literal["mask", "hash", "placeholder"]
REDACTION_MODES: tuple[str, ...] = ("mask", "hash", "placeholder")


class RedactionModeError(UserInputError):
    """An unknown redaction mode."""


@dataclass(frozen=True)
class PiiSpan:
    """One recognised piece of personal data: its type and character offsets [start, end)."""

    type: str
    start: int
    end: int
    text: str

    def to_json(self) -> dict[str, object]:
        """The span as the CLI's JSON schema has it (the text itself is left out on purpose)."""
        return {"type": self.type, "start": self.start, "end": self.end}


# --- validators -------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """True if the digit string passes the Luhn (mod 10) check used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_CN_ID_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]
_CN_ID_CHECK = "10X98765432"


def _cn_id_shaped(number: str) -> bool:
    """Region digit and birth date of a resident ID, whatever the check character says."""
    if len(number) != 18 or not number[:17].isdigit() or number[0] not in "12345678":
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return date(1880, 1, 1) <= born <= date.today()


def cn_id_valid(number: str) -> bool:
    """True for an 18-character resident ID with a valid GB 11643 check digit, region and birth date."""
    if not _cn_id_shaped(number):
        return False
    return (
        number[17].upper()
        == _CN_ID_CHECK[sum(int(c) * w for c, w in zip(number[:17], _CN_ID_WEIGHTS, strict=True)) % 11]
    )


# Lengths of IBANs per country (ISO 13616 registry, the common ones); unknown countries are rejected
# so that a random mod-97 hit in a part number is not reported as a bank account.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31,
    "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """True for an IBAN (spaces removed) of the right length for its country whose mod-97 remainder is 1."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def shannon_entropy(text: str) -> float:
    """Bits per character of the text's own character distribution."""
    n = len(text)
    if not n:
        return 0.0
    # H = log2(n) - sum(c log2 c) / n; c log2 c comes from a table for the counts short values have.
    counts = Counter(text).values()
    if n < len(_C_LOG2_C):
        return math.log2(n) - sum(map(_C_LOG2_C.__getitem__, counts)) / n
    return math.log2(n) - sum(c * math.log2(c) for c in counts if c > 1) / n


_C_LOG2_C = [0.0, 0.0, *(c * math.log2(c) for c in range(2, 257))]  # c log2 c for counts up to 256
_BATCH_MAX_CHARS = 256  # longer texts (rare) are measured one by one, so a batch's array stays small


def shannon_entropies(texts: list[str]) -> np.ndarray:
    """`shannon_entropy` of many short texts at once: one padded code-point array, sorted row by row."""
    out = np.zeros(len(texts))
    short = [i for i, t in enumerate(texts) if 0 < len(t) <= _BATCH_MAX_CHARS]
    for i, t in enumerate(texts):
        if len(t) > _BATCH_MAX_CHARS:
            out[i] = shannon_entropy(t)
    if not short:
        return out
    rows = [texts[i] for i in short]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    # Padding cells hold distinct values above Unicode's range: each counts once, and 1 log2 1 = 0.
    codes = np.broadcast_to(np.arange(0x110000, 0x110000 + width, dtype=np.int64), (len(rows), width)).copy()
    flat = np.frombuffer("".join(rows).encode("utf-32-le"), dtype="<u4").astype(np.int64)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    column = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    codes[row_of, column] = flat
    codes.sort(axis=1)
    starts = np.ones_like(codes, dtype=bool)
    starts[:, 1:] = codes[:, 1:] != codes[:, :-1]
    run = np.cumsum(starts, axis=1) - 1 + (np.arange(len(rows)) * width)[:, None]
    counts = np.bincount(run.ravel(), minlength=len(rows) * width).astype(np.float64)
    c_log_c = np.where(counts > 1, counts * np.log2(np.maximum(counts, 1)), 0.0).reshape(len(rows), width)
    out[short] = np.log2(lengths) - c_log_c.sum(axis=1) / lengths
    return out


# --- recognisers: each yields (start, end) of validated matches ---------------------------------
# Boundaries are ASCII on purpose: in Python's regexes a CJK character is a word character, and
# Chinese text runs values straight into words ("手机13812345678").

_WORD = "A-Za-z0-9_"
_WORD_CHARACTERS = string.ascii_letters + string.digits + "_"
# For `edges` (see `LinearPattern`): the characters a match starts or ends with, never a context character.
_ALNUM = string.ascii_letters + string.digits
_DIGITS_X = string.digits + "Xx"
_EMAIL = LinearPattern(
    r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9])?@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}",
    before=not_preceded_by(_WORD + ".+-"),
    after=not_followed_by(_WORD + "-"),
    edges=(_ALNUM, string.ascii_letters),
)
# Mainland mobile: 1[3-9]x xxxx xxxx, optionally +86/0086, with spaces or dashes as people type them.
_CN_MOBILE = LinearPattern(
    r"(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}",
    before=not_preceded_by(_WORD + "+"),
    after=not_followed_by(_WORD),
    edges=("+01", string.digits),
)
# E.164: a plus sign, a non-zero country code, 7 to 15 digits in all, separators allowed between groups.
_E164 = LinearPattern(
    r"\+[1-9](?:[ -]?\d){0,2}(?:[ -]?\(\d{1,4}\))?(?:[ -]?\d){5,13}",
    before=not_preceded_by(_WORD + "+"),
    after=not_followed_by(_WORD),
    edges=("+", string.digits),
)
_CN_ID = LinearPattern(
    r"\d{17}[\dXx]", before=not_preceded_by(_WORD), after=not_followed_by(_WORD), edges=(string.digits, _DIGITS_X)
)
_CARD = LinearPattern(
    r"[2-6]\d{3}(?:[ -]?\d){9,15}",
    before=not_preceded_by(_WORD + "-"),
    after=not_followed_by(_WORD + "-"),
    edges=string.digits,
)
# Not followed by a word character, nor by ".digit" (the address would go on: a version number).
_IPV4 = LinearPattern(
    r"(?:\d{1,3}\.){3}\d{1,3}", before=not_preceded_by(_WORD + "."), after=r"(?:\z|[^A-Za-z0-9_.]|\.(?:\z|[^0-9]))"
)
_IPV6 = LinearPattern(
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?",
    before=not_preceded_by(_WORD + ":."),
    after=not_followed_by(_WORD + ":"),
)
_IBAN = LinearPattern(
    r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}",
    before=not_preceded_by(_WORD),
    after=not_followed_by(_WORD),
    edges=(string.ascii_uppercase, string.ascii_uppercase + string.digits),
)
# One pattern per kind, not one alternation: RE2 finds submatch offsets on a small program faster,
# which matters on a page made of thousands of tokens.
_SECRET_PREFIXES = (
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}",  # GitHub tokens
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic style keys
    r"sk_(?:live|test)_[A-Za-z0-9]{16,}|rk_live_[A-Za-z0-9]{16,}",  # Stripe
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # JSON web token
)
# Every prefixed secret starts with a letter and ends with a word character or "-", which its context never is.
_SECRET_PREFIXED = tuple(
    LinearPattern(
        p, before=not_preceded_by(_WORD + "-"), after=not_followed_by(_WORD + "-"), edges=_WORD_CHARACTERS + "-"
    )
    for p in _SECRET_PREFIXES
)
# With Python's backtracking `re` this pattern was quadratic on a text full of BEGIN lines; RE2 reads it once.
_PRIVATE_KEY = LinearPattern(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z]+ )*PRIVATE KEY-----", dot_all=True
)
# The value must mix at least two character classes (lower, upper, digit, other) to be a secret. A value
# mixes classes exactly when two neighbouring characters differ in class, so the pattern demands such a pair
# (case-sensitively): `password=password` floods never reach Python, and the maximal run is still the value.
_SECRET_VALUE_CHAR = r"[A-Za-z0-9+/_@#$%^&*!.~-]"
_SECRET_OTHER = r"[+/_@#$%^&*!.~-]"
_CLASS_CHANGE = (
    rf"(?-i:[a-z][A-Z0-9+/_@#$%^&*!.~-]|[A-Z][a-z0-9+/_@#$%^&*!.~-]|[0-9][A-Za-z+/_@#$%^&*!.~-]|{_SECRET_OTHER}"
    r"[A-Za-z0-9])"
)
_SECRET_KEY_NAME = (
    r"(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?key|auth[_-]?token|token|password|passwd|pwd|"
    r"密钥|密码|口令|令牌)[\"']?[\s\p{Z}]*(?:[:=：]|is|为|是)[\s\p{Z}]*[\"']?"
)
_SECRET_VALUE = rf"{_SECRET_VALUE_CHAR}*{_CLASS_CHANGE}{_SECRET_VALUE_CHAR}*"
_SECRET_ASSIGNED = LinearPattern(rf"{_SECRET_KEY_NAME}({_SECRET_VALUE})", ignore_case=True)
# The same without a group: RE2's DFAs alone find its span, and the value is the run of value characters
# that ends the match (nothing between key name and value is a value character but the "is" of "key is v").
_SECRET_ASSIGNMENT_SPAN = LinearPattern(rf"{_SECRET_KEY_NAME}{_SECRET_VALUE}", ignore_case=True)
_SECRET_VALUE_CHARACTERS = string.ascii_letters + string.digits + "+/_@#$%^&*!.~-"


_IDENTIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")


def _is_dotted_identifier(value: str) -> bool:
    """Dotted or snake_case names without digits (`os.getcwd`, `get_cache_token`): variables and attributes in code."""
    return all(part and _IDENTIFIER_CHARS.issuperset(part) for part in value.split("."))


# "section 7.1.4.34", "RFC 3.2.1.5", "version 1.2.3.4": a dotted quad that is a number in a document.
_NOT_AN_ADDRESS = LinearPattern(r"(?:\b(?:section|sec\.|rfc|version|ver\.|v)|§|章节|第)[\s\p{Z}]*\z", ignore_case=True)


def _digits(text: str) -> str:
    return "".join(c for c in text if "0" <= c <= "9")


_DIGIT = frozenset("0123456789")


def _emails(text: str) -> Iterator[tuple[int, int]]:
    yield from _EMAIL.spans(text)


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for m in _CN_MOBILE.finditer(text):
        yield m.span()
    for m in _E164.finditer(text):
        digits = _digits(m.text())
        if 8 <= len(digits) <= 15:
            yield m.span()


def _cn_ids(text: str) -> Iterator[tuple[int, int]]:
    for m in _CN_ID.finditer(text):
        if cn_id_valid(m.text()):
            yield m.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        raw = m.text()
        seps = {c for c in raw if not "0" <= c <= "9"}
        if len(seps) > 1:  # "4111 1111-1111 1111": mixed separators are not how cards are written
            continue
        digits = _digits(raw)
        if digits == raw and _cn_id_shaped(digits):
            continue  # a resident ID with a typo in its check digit is not a card that happens to pass Luhn
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield m.span()


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            candidate = m.text()
            if candidate.count(":") >= 2 and candidate.strip(":") == "":
                continue  # a bare "::" is punctuation in code, not an address anyone would redact
            if _NOT_AN_ADDRESS.search(text[max(0, m.start() - 12) : m.start()]):
                continue
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            yield m.span()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        if iban_valid(m.text().replace(" ", "")):
            yield m.span()


def _is_code_name(value: str) -> bool:
    """`token = get_cache_token`, `pwd = os.getcwd`: a name in code, not a secret."""
    return _DIGIT.isdisjoint(value) and _is_dotted_identifier(value)


def _judged(texts: list[str], floor: float, judge_more: Callable[[str], bool] | None = None) -> dict[str, bool]:
    """Each distinct text -> entropy >= `floor` (and `judge_more`); entropies in one numpy batch."""
    distinct = [t for t in dict.fromkeys(texts) if judge_more is None or judge_more(t)]
    verdicts = dict.fromkeys(texts, False)
    verdicts.update(zip(distinct, (shannon_entropies(distinct) >= floor).tolist(), strict=True))
    return verdicts


# Every secret pattern contains a literal (a key prefix, "BEGIN", a key name): one pass finds which can match.
_SECRET_FILTER = PatternFilter([*_SECRET_PREFIXED, _PRIVATE_KEY, _SECRET_ASSIGNED])


def _secrets(text: str) -> Iterator[tuple[int, int]]:
    candidates = set(_SECRET_FILTER.candidates(text))
    # Matches are collected first and judged in a batch (each distinct value once), so a page dense with
    # tokens costs array operations, not a Python entropy per token.
    prefixed = [span for i, p in enumerate(_SECRET_PREFIXED) if i in candidates for span in p.spans(text)]
    tokens = [text[start:end] for start, end in prefixed]
    # Placeholders such as "sk-xxxxxxxxxxxxxxxxxxxxxxxx" share the prefix but carry no entropy.
    high_entropy = _judged(tokens, 3.0)
    yield from (span for span, token in zip(prefixed, tokens, strict=True) if high_entropy[token])
    if len(_SECRET_PREFIXED) in candidates:
        for m in _PRIVATE_KEY.finditer(text):
            yield m.span()
    if len(_SECRET_PREFIXED) + 1 not in candidates:
        return
    assigned = list(_assigned_values(text))
    values = [text[start:end] for start, end in assigned]
    # Two character classes at least: `_CLASS_CHANGE` in the pattern already demands them.
    secret = _judged(values, 2.8, lambda v: len(v) >= 8 and not _is_code_name(v))
    yield from (span for span, value in zip(assigned, values, strict=True) if secret[value])


def _assigned_values(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the values in `key = value` assignments, as `_SECRET_ASSIGNED`'s group 1 gives them."""
    for start, end in _SECRET_ASSIGNMENT_SPAN.spans(text):
        value_start = start + len(text[start:end].rstrip(_SECRET_VALUE_CHARACTERS))  # str.rstrip: C speed
        if value_start == start or text[value_start : value_start + 2].lower() == "is":
            # "passwordisX…" or a value that starts with "is": where the separator ends takes the capture.
            captured = _SECRET_ASSIGNED.search(text[start:end])
            if captured is not None:
                yield start + captured.start(1), start + captured.end(1)
            continue
        yield value_start, end


RECOGNISERS: dict[str, Callable[[str], Iterator[tuple[int, int]]]] = {
    "EMAIL": _emails,
    "PHONE": _phones,
    "CN_ID": _cn_ids,
    "CREDIT_CARD": _cards,
    "IP": _ips,
    "IBAN": _ibans,
    "SECRET": _secrets,
}
# When spans overlap, the more specific recogniser wins (a valid resident ID also contains a
# mobile-number-shaped run of digits; a secret may contain an email-like string).
_PRIORITY = {"SECRET": 0, "CN_ID": 1, "IBAN": 2, "CREDIT_CARD": 3, "EMAIL": 4, "IP": 5, "PHONE": 6}


def find_pii(text: str, types: tuple[str, ...] | None = None) -> list[PiiSpan]:
    """All validated PII spans in `text`, sorted by start, without overlaps."""
    wanted = PII_TYPES if types is None else types
    found = [(start, end, kind) for kind in wanted for start, end in RECOGNISERS[kind](text) if end > start]
    found.sort()
    if all(found[i][1] <= found[i + 1][0] for i in range(len(found) - 1)):
        return [PiiSpan(kind, start, end, text[start:end]) for start, end, kind in found]  # nothing overlaps
    # (priority, -length, start, end, kind): plain tuples sort in C, no key function per candidate.
    candidates = [(_PRIORITY[kind], start - end, start, end, kind) for start, end, kind in found]
    candidates.sort()
    # One byte per character marks what is taken: a candidate overlaps a taken span exactly when its range
    # holds a mark, and `find` and slice assignment run at C speed. The work is the candidates' total length,
    # linear in the text (each pattern's own matches never overlap), even with tens of thousands of spans.
    taken = bytearray(len(text))
    spans = []
    for _, _, start, end, kind in candidates:
        if taken.find(1, start, end) >= 0:
            continue
        taken[start:end] = b"\x01" * (end - start)
        spans.append((start, end, kind))
    spans.sort()
    return [PiiSpan(kind, start, end, text[start:end]) for start, end, kind in spans]


def _replacement(span: PiiSpan, mode: str, salt: str) -> str:
    if mode == "placeholder":
        return f"[{span.type}]"
    if mode == "mask":
        # Keep separators and length so the shape of the log line survives, not the value.
        return "".join(c if c.isspace() or c in "-.@:()" else "*" for c in span.text)
    digest = hashlib.sha256((salt + span.text).encode("utf-8")).hexdigest()[:12]
    return f"[{span.type}:{digest}]"


def redact_spans(text: str, spans: list[PiiSpan], mode: str = "placeholder", salt: str = "") -> str:
    """Replace the given spans (from `find_pii`) in `text` by the chosen redaction."""
    if mode not in REDACTION_MODES:
        raise RedactionModeError(f"redaction mode {mode!r}: choose one of {', '.join(REDACTION_MODES)}")
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[last : span.start])
        out.append(_replacement(span, mode, salt))
        last = span.end
    out.append(text[last:])
    return "".join(out)


def redact(text: str, mode: str = "placeholder", salt: str = "") -> str:
    """Text with every PII span replaced: `placeholder` ([EMAIL]), `mask` (****) or `hash` ([EMAIL:3f2a…]).

    `hash` keeps equal values equal (useful for joining logs) without revealing them; pass a secret
    `salt` so that short values such as phone numbers cannot be recovered by hashing every candidate.
    """
    return redact_spans(text, find_pii(text), mode, salt)
