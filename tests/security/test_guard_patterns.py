"""Finding 3: every pattern the guard runs on user text is linear-time (RE2): by construction and by counted work."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jijian.guard import injection, injection_rules, leakage, normalize, pii
from jijian.guard.linear_re import LinearPattern, not_followed_by, not_preceded_by

GUARD_DIR = Path(pii.__file__).parent
SCANNING_MODULES = (pii, injection, injection_rules, normalize, leakage)


@pytest.fixture(autouse=True)
def isolated_classifier_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JIJIAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jijian-cache"))


def test_no_guard_module_uses_the_backtracking_re_engine():
    users = []
    for path in sorted(GUARD_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if "re" in names or "regex" in names or module in ("re", "regex"):
                users.append(path.name)
    assert users == [], f"guard modules importing a backtracking regex engine: {users}"


def test_every_module_level_pattern_and_every_rule_is_an_re2_pattern():
    for module in SCANNING_MODULES:
        compiled = [name for name, value in vars(module).items() if isinstance(value, re.Pattern)]
        assert compiled == [], f"{module.__name__} keeps backtracking patterns: {compiled}"
    assert injection_rules.RULES
    assert all(isinstance(rule.pattern, LinearPattern) for rule in injection_rules.RULES)
    for name in ("_EMAIL", "_CN_MOBILE", "_E164", "_CN_ID", "_CARD", "_IPV4", "_IPV6", "_IBAN", "_PRIVATE_KEY"):
        assert isinstance(getattr(pii, name), LinearPattern), name
    assert all(isinstance(p, LinearPattern) for p in pii._SECRET_PREFIXED)


class _CountingRegexp:
    """Stands in for the compiled RE2 object and records where each search starts."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.starts: list[int] = []

    def Match(self, anchor, text, pos, endpos):
        self.starts.append(pos)
        return self.inner.Match(anchor, text, pos, endpos)


class _Proxy:
    def __init__(self, regexp: _CountingRegexp, groups: int) -> None:
        self._regexp = regexp
        self.groups = groups


def _counted(pattern: LinearPattern, monkeypatch) -> _CountingRegexp:
    counter = _CountingRegexp(pattern._regex._regexp)
    monkeypatch.setattr(pattern, "_regex", _Proxy(counter, pattern._regex.groups))
    return counter


@pytest.mark.parametrize(
    "unit",
    ["-----BEGIN PRIVATE KEY-----\n", "-----BEGIN A B C D ", "password=token=", "a.b-c+@", "1:1.", "41 "],
)
def test_one_search_per_match_on_a_megabyte_of_adversarial_text(unit, monkeypatch):
    """A backtracking engine retries at every position; here each RE2 call either ends the scan or yields a match."""
    text = unit * ((1 << 20) // len(unit))
    patterns = {name: value for name, value in vars(pii).items() if isinstance(value, LinearPattern)}
    patterns |= {f"secret {i}": p for i, p in enumerate(pii._SECRET_PREFIXED)}
    patterns |= {f"rule {i}": rule.pattern for i, rule in enumerate(injection_rules.RULES)}
    for name, pattern in patterns.items():
        counter = _counted(pattern, monkeypatch)
        matches = sum(1 for _ in pattern.finditer(text))
        assert len(counter.starts) == matches + 1, name
        assert all(a < b for a, b in zip(counter.starts, counter.starts[1:], strict=False)), name


def test_the_private_key_block_that_was_quadratic_is_found_in_one_pass():
    headers = "-----BEGIN PRIVATE KEY-----\n" * 4000  # 108 KB: seconds with Python's re, growing quadratically
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\n-----END RSA PRIVATE KEY-----"
    spans = pii.find_pii(headers + "note\n" + key)
    assert [s.type for s in spans] == ["SECRET"]
    assert spans[0].text.endswith("-----END RSA PRIVATE KEY-----")
    assert pii.find_pii(headers) == []
    verdict = injection.detect_injection(headers)
    assert not verdict.flagged


def test_context_patterns_behave_like_look_arounds_in_english_and_chinese():
    email = LinearPattern(
        r"[a-z]+@[a-z]+\.com", before=not_preceded_by("A-Za-z0-9_.+-"), after=not_followed_by("A-Za-z0-9_-")
    )
    text = "a@b.com c@d.com,中文e@f.com x.y@z.com xx@y.comz 邮箱g@h.com"
    old = re.compile(r"(?<![A-Za-z0-9_.+-])[a-z]+@[a-z]+\.com(?![A-Za-z0-9_-])")
    assert [m.span() for m in email.finditer(text)] == [m.span() for m in old.finditer(text)]
    assert [m.group() for m in email.finditer(text)] == ["a@b.com", "c@d.com", "e@f.com", "g@h.com"]
    # A match may end where the next one's context begins (the joiner between emoji is both).
    assert normalize.normalize("👨\u200d👩\u200d👧 hi")[0] == "👨👩👧 hi"
    assert pii.find_pii("手机13812345678，邮箱li.wei@example.com")[0].text == "13812345678"


def test_the_rule_prefilter_never_skips_a_rule_that_matches():
    """One FilteredRE2 pass picks the candidate rules; every rule that matches must be among them."""
    from jijian.guard.classifier import BENIGN_DATASET, load_dataset
    from jijian.guard.injection_rules import _RULE_FILTER, RULES
    from jijian.guard.normalize import normalize

    texts = [normalize(str(r["text"]))[0] for r in load_dataset() + load_dataset(name=BENIGN_DATASET)]
    checked = 0
    for text in texts + [t.upper() for t in texts] + [t.swapcase() for t in texts]:
        matching = {i for i, rule in enumerate(RULES) if rule.pattern.search(text)}
        assert matching <= set(_RULE_FILTER.candidates(text)), text
        checked += bool(matching)
    assert checked > 500  # the check saw many texts that do match rules


def test_the_secret_prefilter_never_skips_a_secret_pattern_that_matches():
    from jijian.guard.pii import _PRIVATE_KEY, _SECRET_ASSIGNED, _SECRET_FILTER, _SECRET_PREFIXED
    from jijian.guard.pii_samples import labelled_sentences

    patterns = [*_SECRET_PREFIXED, _PRIVATE_KEY, _SECRET_ASSIGNED]
    texts = [item.text for item in labelled_sentences(100, seed=7)]
    checked = 0
    for text in texts + [t.upper() for t in texts] + [t.lower() for t in texts]:
        matching = {i for i, pattern in enumerate(patterns) if pattern.search(text)}
        assert matching <= set(_SECRET_FILTER.candidates(text)), text
        checked += bool(matching)
    assert checked > 100


def test_a_pattern_with_edges_reports_the_same_spans_as_with_captured_context():
    import random
    import string

    from jijian.guard.linear_re import LinearPattern, not_followed_by, not_preceded_by

    body = r"(?:[A-Za-z][ .\-_*]){4,}[A-Za-z]"
    before, after = not_preceded_by(r"\p{L}\p{N}_"), not_followed_by(r"\p{L}\p{N}_")
    fast = LinearPattern(body, before=before, after=after, edges=string.ascii_letters)
    captured = LinearPattern(body, before=before, after=after)
    rng = random.Random(3)
    for _ in range(3000):
        text = "".join(rng.choice("ab  ..-_*中é1Z\n") for _ in range(rng.randint(0, 40)))
        assert [m.span() for m in fast.finditer(text)] == [m.span() for m in captured.finditer(text)], text


def test_every_pattern_with_edges_agrees_with_its_captured_twin():
    """Patterns that trim context by their edge characters find exactly what capturing the context finds."""
    import random

    from jijian.guard import normalize, pii
    from jijian.guard.linear_re import LinearPattern
    from jijian.guard.pii_samples import labelled_sentences

    edged = [
        p
        for module in (pii, normalize)
        for value in vars(module).values()
        for p in (value if isinstance(value, tuple) else (value,))
        if isinstance(p, LinearPattern) and p._edges
    ]
    assert len(edged) >= 10
    rng = random.Random(5)
    texts = [item.text for item in labelled_sentences(30, seed=11)]
    texts += ["".join(rng.choice("1386 +-0x.@aZ_:\n中") for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    for pattern in edged:
        twin = LinearPattern(pattern.pattern, before=pattern.before, after=pattern.after)
        for text in texts:
            assert [m.span() for m in pattern.finditer(text)] == [m.span() for m in twin.finditer(text)], (
                pattern.pattern,
                text,
            )


def test_assigned_values_found_without_capture_equal_the_captured_ones():
    import random

    from jijian.guard.pii import _SECRET_ASSIGNED, _assigned_values
    from jijian.guard.pii_samples import labelled_sentences

    rng = random.Random(9)
    pieces = ["password", "token", "密码", "is", " is ", "=", ": ", "：", '"', "'", " ", "Ab1", "isX9", "x", "Z.", "为"]
    texts = [item.text for item in labelled_sentences(30, seed=12)]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(5000)]
    for text in texts:
        expected = [m.span(1) for m in _SECRET_ASSIGNED.finditer(text)]
        assert list(_assigned_values(text)) == expected, text
