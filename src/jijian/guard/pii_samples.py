"""Synthetic PII with valid checksums, and near misses that must NOT be recognised, for evaluation.

Each generator returns a value that passes its type's validation (Luhn, GB 11643, mod-97, ...);
each near-miss generator returns a look-alike that fails it (one digit off, wrong check digit, an
octet above 255, a placeholder key). `labelled_sentences` embeds them in English and Chinese
sentences and records the true spans, so recall and precision can be measured.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import date, timedelta

from jijian.guard.pii import _CN_ID_CHECK, _CN_ID_WEIGHTS, _IBAN_LENGTHS, luhn_valid


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if luhn_valid(prefix + d):
            return prefix + d
    raise AssertionError("unreachable: one check digit always fits")


def card(rng: random.Random) -> str:
    """A Luhn-valid Visa, Mastercard, Amex or UnionPay number, sometimes grouped in fours."""
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("62", 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = _luhn_complete(body)
    if length == 16 and rng.random() < 0.5:
        sep = rng.choice([" ", "-"])
        number = sep.join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def card_near_miss(rng: random.Random) -> str:
    """A card-shaped number whose Luhn check fails (last digit off by one)."""
    good = card(rng).replace(" ", "").replace("-", "")
    return good[:-1] + str((int(good[-1]) + rng.randint(1, 9)) % 10)


def cn_id(rng: random.Random) -> str:
    """A resident ID with a plausible region, birth date and a correct GB 11643 check character."""
    region = rng.choice(["110105", "310104", "440305", "510107", "330106", "420111", "610113", "230103"])
    born = date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 55))
    first17 = region + born.strftime("%Y%m%d") + f"{rng.randint(0, 999):03d}"
    return first17 + _CN_ID_CHECK[sum(int(c) * w for c, w in zip(first17, _CN_ID_WEIGHTS, strict=True)) % 11]


def cn_id_near_miss(rng: random.Random) -> str:
    """A resident-ID-shaped string with a wrong check character."""
    good = cn_id(rng)
    wrong = [c for c in _CN_ID_CHECK if c != good[-1]]
    return good[:-1] + rng.choice(wrong)


def iban(rng: random.Random) -> str:
    """A valid IBAN (correct length for its country, mod-97 check digits), grouped in fours or not."""
    country = rng.choice(["DE", "GB", "FR", "NL", "ES", "IT", "CH", "BE"])
    length = _IBAN_LENGTHS[country]
    alphabet = string.digits if country in ("DE", "BE", "ES") else string.digits + string.ascii_uppercase
    bban = "".join(rng.choice(alphabet) for _ in range(length - 4))
    if country in ("GB", "NL"):  # bank code letters first, as real ones are
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + bban[4:].translate(
            str.maketrans(string.ascii_uppercase, "0123456789" * 2 + "012345")
        )
    remainder = int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    value = f"{country}{98 - remainder:02d}{bban}"
    if rng.random() < 0.5:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def iban_near_miss(rng: random.Random) -> str:
    """An IBAN whose check digits are wrong."""
    good = iban(rng).replace(" ", "")
    check = (int(good[2:4]) + rng.randint(1, 90)) % 97
    check = check if check >= 2 else check + 2
    return good[:2] + f"{check:02d}" + good[4:]


def email(rng: random.Random) -> str:
    """A plausible email address."""
    user = rng.choice(["li.wei", "zhang_san", "maria", "j.smith", "ops-team", "wang.fang88", "support"])
    domain = rng.choice(["example.com", "corp.example.cn", "mail.example.org", "163.example.net"])
    return f"{user}{rng.randint(1, 99)}@{domain}"


def email_near_miss(rng: random.Random) -> str:
    """Something email-like that is not an address (no domain dot, or a handle)."""
    return rng.choice(
        [f"@{rng.choice(['li_wei', 'maria'])}", f"user{rng.randint(1, 9)}@localhost", "name at example dot com"]
    )


def phone(rng: random.Random) -> str:
    """A mainland-China mobile number (several spellings) or an international E.164 number."""
    kind = rng.randrange(4)
    mobile = "1" + rng.choice("3456789") + "".join(rng.choice(string.digits) for _ in range(9))
    if kind == 0:
        return mobile
    if kind == 1:
        return f"+86 {mobile[:3]} {mobile[3:7]} {mobile[7:]}"
    if kind == 2:
        return f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}"
    country = rng.choice(["44", "49", "33", "1", "81", "65"])
    return f"+{country} " + "".join(rng.choice(string.digits) for _ in range(rng.randint(8, 10)))


def phone_near_miss(rng: random.Random) -> str:
    """A number that looks like a phone but is not one (second digit 0-2, too short, a year range)."""
    return rng.choice(
        [
            "1" + rng.choice("012") + "".join(rng.choice(string.digits) for _ in range(9)),
            "1" + rng.choice("3456789") + "".join(rng.choice(string.digits) for _ in range(6)),
            f"{rng.randint(1990, 2010)}-{rng.randint(2011, 2024)}",
        ]
    )


def ip(rng: random.Random) -> str:
    """An IPv4 or IPv6 address."""
    if rng.random() < 0.6:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    return rng.choice([":".join(groups), f"2001:db8::{groups[0]}", f"fe80::{groups[1]}:{groups[2]}"])


def ip_near_miss(rng: random.Random) -> str:
    """A dotted quad with an octet above 255, a version number, or a clock time."""
    return rng.choice(
        [
            f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
            f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        ]
    )


def secret(rng: random.Random) -> str:
    """A key with a known prefix and random body (AWS, GitHub, OpenAI-style, Stripe, Slack, Google, HF)."""
    alnum = string.ascii_letters + string.digits

    def body(n: int, alphabet: str = alnum) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    return rng.choice(
        [
            "AKIA" + body(16, string.ascii_uppercase + string.digits),
            "ghp_" + body(36),
            "sk-" + body(48),
            "sk_live_" + body(24),
            "xoxb-" + body(12, string.digits) + "-" + body(24),
            "AIza" + body(35, alnum + "_-"),
            "hf_" + body(34),
        ]
    )


def secret_near_miss(rng: random.Random) -> str:
    """A placeholder with a key prefix but no entropy, or a prefix with too short a body."""
    return rng.choice(["sk-" + "x" * 40, "AKIA" + "EXAMPLE" * 2 + "XX", "ghp_" + "0" * 36, "sk-abc", "hf_" + "a" * 34])


GENERATORS = {
    "EMAIL": (email, email_near_miss),
    "PHONE": (phone, phone_near_miss),
    "CN_ID": (cn_id, cn_id_near_miss),
    "CREDIT_CARD": (card, card_near_miss),
    "IP": (ip, ip_near_miss),
    "IBAN": (iban, iban_near_miss),
    "SECRET": (secret, secret_near_miss),
}

_TEMPLATES = [
    "Please contact me about the refund: {}. Thanks!",
    "The value in the ticket was {} according to the customer.",
    "客户留下的信息是 {}，请尽快处理。",
    "记录显示：{}（已核实）",
    "Log line 2024-05-01 12:00:03 user=42 field={} status=ok",
    "备注：{} 来自上周的表单",
    "联系方式{}请勿外传",
    "He wrote ({}) in the form.",
]


@dataclass(frozen=True)
class LabelledText:
    """A sentence and the true PII spans in it (type, start, end)."""

    text: str
    spans: list[tuple[str, int, int]]


def labelled_sentences(n_per_type: int = 50, seed: int = 0) -> list[LabelledText]:
    """Sentences with one valid value each (true spans recorded) and as many with one near miss (no spans)."""
    rng = random.Random(seed)
    out = []
    for kind, (make, near_miss) in GENERATORS.items():
        for i in range(n_per_type):
            template = _TEMPLATES[i % len(_TEMPLATES)]
            value = make(rng)
            start = template.index("{}")
            out.append(LabelledText(template.format(value), [(kind, start, start + len(value))]))
            out.append(LabelledText(template.format(near_miss(rng)), []))
    return out
