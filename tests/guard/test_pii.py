"""PII recognisers: valid values are found with exact offsets; near misses with bad checksums are not."""

from __future__ import annotations

import pytest

from jijian.guard.pii import (
    PII_TYPES,
    RedactionModeError,
    cn_id_valid,
    find_pii,
    iban_valid,
    luhn_valid,
    redact,
)
from jijian.guard.pii_samples import GENERATORS, labelled_sentences


def kinds(text: str) -> list[tuple[str, str]]:
    return [(s.type, s.text) for s in find_pii(text)]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("EMAIL", "zhang.san@example.com"),
        ("PHONE", "13812345678"),
        ("PHONE", "+86 138 1234 5678"),
        ("PHONE", "+44 20 7946 0958"),
        ("CN_ID", "11010519491231002X"),  # the GB 11643 standard's own example
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("CREDIT_CARD", "378282246310005"),
        ("IP", "192.168.10.1"),
        ("IP", "2001:db8::8a2e:370:7334"),
        ("IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("IBAN", "DE89370400440532013000"),
        ("SECRET", "AKIAIOSFODNN7EXAMPL3"),
        ("SECRET", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ],
)
def test_valid_values_are_found_with_exact_offsets(kind, value):
    text = f"value: {value}. 谢谢"
    spans = find_pii(text)
    assert [(s.type, s.start, s.end) for s in spans] == [(kind, 7, 7 + len(value))]
    assert text[spans[0].start : spans[0].end] == value


@pytest.mark.parametrize(
    "near_miss",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "110105194912310021",  # CN ID with wrong check digit
        "110105194913310028",  # CN ID with month 13
        "GB83 WEST 1234 5698 7654 32",  # IBAN check digits wrong
        "12345678901",  # not a mobile prefix (12x)
        "256.1.1.1",  # octet out of range
        "12:30:45",  # a clock time, not IPv6
        "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # a placeholder key
        "std::vector<int>",
        "user@localhost",
    ],
)
def test_near_misses_are_not_pii(near_miss):
    assert find_pii(f"see {near_miss} here") == []


def test_checksum_validators():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert cn_id_valid("11010519491231002X") and cn_id_valid("11010519491231002x")
    assert not cn_id_valid("11010519491231002Y")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("XX82WEST12345698765432")  # unknown country


def test_secret_assigned_to_a_key_name_is_found_by_entropy():
    assert kinds("db password = 'Tr0ub4dor&3xyz'") == [("SECRET", "Tr0ub4dor&3xyz")]
    assert kinds("API密钥：Zx81kLq0Pm2Vn7Rt") == [("SECRET", "Zx81kLq0Pm2Vn7Rt")]
    assert kinds("password = password") == []  # no entropy, a single class


def test_a_resident_id_is_one_span_not_a_phone_inside_it():
    assert kinds("身份证号11010519491231002X。") == [("CN_ID", "11010519491231002X")]


def test_redaction_modes():
    text = "mail li@example.com or 13812345678"
    assert redact(text) == "mail [EMAIL] or [PHONE]"
    assert redact(text, "mask") == "mail **@*******.*** or ***********"
    hashed = redact(text, "hash")
    assert hashed.startswith("mail [EMAIL:") and "li@example.com" not in hashed
    assert redact(text, "hash") == hashed  # deterministic: equal values stay joinable
    assert redact(text, "hash", salt="s") != hashed
    with pytest.raises(RedactionModeError, match="redaction mode"):
        redact(text, "erase")


def test_generated_set_recall_and_precision():
    tp = fp = fn = 0
    for item in labelled_sentences(n_per_type=20, seed=7):
        found = {(s.type, s.start, s.end) for s in find_pii(item.text)}
        truth = set(item.spans)
        tp, fp, fn = tp + len(found & truth), fp + len(found - truth), fn + len(truth - found)
    assert tp / (tp + fn) >= 0.95
    assert tp / (tp + fp) >= 0.95
    assert set(GENERATORS) == set(PII_TYPES)


@pytest.mark.parametrize(
    "code_or_prose",
    ["pwd = os.getcwd()", "token = get_cache_token()", "see section 7.1.4.34", "version 1.2.3.4", "v2.0.1.3"],
)
def test_code_and_section_numbers_are_not_pii(code_or_prose):
    assert find_pii(code_or_prose) == []


def test_addresses_next_to_words_that_end_in_v_are_still_found():
    assert kinds("dev 10.0.0.1 is down") == [("IP", "10.0.0.1")]


def test_batched_entropies_equal_one_by_one():
    import random

    from jijian.guard.pii import shannon_entropies, shannon_entropy

    rng = random.Random(4)
    texts = ["", "a", "sk-xxxxxxxx", "密钥ABC123", "x" * 400] + [
        "".join(rng.choice("aab cdeF9中-") for _ in range(rng.randint(1, 300))) for _ in range(500)
    ]
    assert shannon_entropies(texts).tolist() == pytest.approx([shannon_entropy(t) for t in texts], abs=1e-9)
