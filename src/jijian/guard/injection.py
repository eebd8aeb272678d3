"""Prompt-injection detection for direct prompts and retrieved documents, English and Chinese.

`detect_injection(text)` normalises hidden-text tricks away, runs the rule layer, decodes encoded
payloads (base64, hex, rot13) and rescans them, and asks the trained n-gram classifier. The score
is the strongest of that evidence; the reasons say which pieces fired.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import itertools
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

from jijian.guard.classifier import InjectionClassifier, default_classifier
from jijian.guard.injection_rules import match_rules
from jijian.guard.linear_re import LinearPattern
from jijian.guard.normalize import normalize

DEFAULT_THRESHOLD = 0.5
MAX_PAYLOADS = 8
MAX_DECODE_ATTEMPTS = 256
# Runs are found without look-around context: a leftmost, greedy run already starts and ends at the run's
# edges, and without context RE2 finds a megabyte-long run with its DFAs alone. (A run right after "=" or
# one followed by a third "=" is now decoded too: more payloads looked at, none missed.)
_BASE64 = LinearPattern(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_PAIRS = LinearPattern(r"(?:[0-9A-Fa-f]{2}[ :]?){12,}")
_HEX_ESCAPES = LinearPattern(r"(?:\\x[0-9A-Fa-f]{2}){8,}")
_UPPER = frozenset(string.ascii_uppercase)
_LOWER_OR_DIGIT = frozenset(string.ascii_lowercase + string.digits)
# C0 and C1 control characters except tab, line feed and carriage return, mapped to nothing.
_CONTROL_CHARACTERS = dict.fromkeys([*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)])
_ROT13_HINT = LinearPattern(r"rot-?13|caesar|凯撒", ignore_case=True)
# A hiding trick alone is suspicious but not proof (zero-width joiners appear in emoji and Indic
# scripts), so it informs the reasons and only flags together with other evidence.
_TRICK_WEIGHT = 0.3
_MENTION_SUFFIXES = ("(quoted)", "(asked about)")  # how `match_rules` marks a rule hit that is a mention, not a use


@dataclass(frozen=True)
class InjectionVerdict:
    """A detector's answer: score in [0, 1], the decision at the threshold, and why."""

    score: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The verdict as the CLI's JSON schema has it."""
        return {"score": round(self.score, 4), "flagged": self.flagged, "reasons": list(self.reasons)}


def _readable(decoded: str) -> bool:
    """At most 5% control characters (other than tab and line breaks): text, not binary that happened to decode."""
    if not decoded:
        return False
    if decoded.isprintable():
        return True
    controls = len(decoded) - len(decoded.translate(_CONTROL_CHARACTERS))  # str.translate: C speed on a megabyte
    return controls / len(decoded) <= 0.05


def _decoded_payloads(text: str) -> Iterator[tuple[str, str]]:
    """(encoding, decoded text) for every base64 or hex run that decodes to readable text, lazily.

    At most `MAX_DECODE_ATTEMPTS` base64 runs are tried per text (a page of random tokens would otherwise
    cost a decode each), as `MAX_PAYLOADS` bounds the readable ones; the rules and the classifier still
    read the whole text as it is.
    """
    for m in itertools.islice(_BASE64.finditer(text), MAX_DECODE_ATTEMPTS):
        token = str(m.group())
        if _UPPER.isdisjoint(token) or _LOWER_OR_DIGIT.isdisjoint(token):
            continue  # words and hex digests are not base64 payloads worth decoding
        body = token.rstrip("=").replace("-", "+").replace("_", "/")  # URL-safe alphabet too
        try:
            decoded = base64.b64decode(body + "=" * (-len(body) % 4), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if _readable(decoded):
            yield "base64", decoded
    hex_runs = [*_HEX_PAIRS.finditer(text), *_HEX_ESCAPES.finditer(text)]
    for m in sorted(hex_runs, key=lambda m: m.start()):
        digits = str(m.group()).replace("\\x", "").replace(" ", "").replace(":", "")
        try:
            decoded = bytes.fromhex(digits).decode("utf-8")
        except ValueError:
            continue
        if _readable(decoded):
            yield "hex", decoded


class InjectionDetector:
    """Rules + decoded-payload rescanning + the trained classifier, thresholded."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, classifier: InjectionClassifier | None = None) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"injection threshold {threshold} must lie in [0, 1]")
        self.threshold = threshold
        self.classifier = classifier or default_classifier()

    def _evidence(self, text: str, depth: int) -> list[tuple[str, float]]:
        normalized, tricks = normalize(text)
        evidence = [(f"hidden text: {trick}", _TRICK_WEIGHT) for trick in tricks]
        rules = match_rules(normalized)
        evidence += rules
        probability = self.classifier.calibrated(normalized)
        if rules and all(reason.endswith(_MENTION_SUFFIXES) for reason, _ in rules):
            # The classifier reads the same quoted attack phrase the rules saw ("is 'ignore previous
            # instructions' still effective?"): a mention counts half for it too.
            probability /= 2
        evidence.append((f"classifier {probability:.2f}", probability))
        if depth == 0:
            # A handful of payloads is enough to judge a text; a page full of base64 images is not worth more.
            for encoding, decoded in itertools.islice(_decoded_payloads(normalized), MAX_PAYLOADS):
                inner = self._evidence(decoded, depth + 1)
                strongest = max(weight for _, weight in inner)
                if strongest >= 0.5:
                    evidence.append((f"{encoding}-encoded payload: " + "; ".join(r for r, _ in inner), strongest))
            # rot13 is only decoded when the text names it: rot13 of ordinary English is gibberish
            # that would only feed the classifier noise.
            if _ROT13_HINT.search(normalized):
                rules = match_rules(codecs.decode(normalized, "rot13"))
                if rules:
                    evidence.append(
                        ("rot13-encoded payload: " + "; ".join(r for r, _ in rules), max(w for _, w in rules))
                    )
        return evidence

    def scan(self, text: str) -> InjectionVerdict:
        """Score one text; reasons list the evidence that counted (the classifier's probability always)."""
        evidence = self._evidence(text, 0)
        score = max(weight for _, weight in evidence)
        if any(reason.startswith("hidden text") for reason, _ in evidence) and score >= 0.4:
            score = min(1.0, score + 0.2)  # hiding plus any other sign: someone is trying to smuggle something
        reasons = [reason for reason, weight in evidence if weight >= 0.3 or reason.startswith("classifier")]
        return InjectionVerdict(round(score, 4), score >= self.threshold, reasons)


def detect_injection(text: str, threshold: float = DEFAULT_THRESHOLD) -> InjectionVerdict:
    """Scan one text with the default detector (the shipped classifier, trained on first use)."""
    return InjectionDetector(threshold).scan(text)
