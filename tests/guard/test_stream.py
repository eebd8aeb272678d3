"""The streaming leakage check: released text never holds a restricted n-gram; clean streams come through whole."""

from __future__ import annotations

import json

import pytest

from jijian.config import GuardConfig
from jijian.guard.leakage import ngrams
from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import Principal

SALARIES = (
    "Salary review 2025: Li Wei will be paid 85,000 yuan per year from March, and Maria Rossi "
    "receives a retention bonus of 20,000 yuan because she leads the storage migration project."
)
CONTRACT = "本合同约定甲方于二零二五年三月一日前向乙方支付全部货款共计三百万元整，逾期按日万分之五支付违约金。"
BENIGN = (
    "Office hours are nine to six. Salary questions go to the HR team, who answer within two days; "
    "Li Wei and Maria Rossi both work on storage. " * 3
)
alice = Principal("alice", frozenset({"engineering"}))
hannah = Principal("hannah", frozenset({"hr"}))


@pytest.fixture
def policy(tmp_path):
    policy = GuardPolicy(GuardConfig(audit_log=tmp_path / "audit.jsonl", leakage_ngram=6))
    policy.protect_document("salaries", SALARIES, ["role:hr"])
    policy.protect_document("contract", CONTRACT, ["bob"])
    return policy


def stream(policy, principal, text, piece=3):
    """Feed `text` in `piece`-character deltas (sub-word pieces, as a tokenizer emits); (sent, blocked)."""
    check = policy.stream_check(principal, "req-1")
    sent = [check.feed(text[i : i + piece]) for i in range(0, len(text), piece)]
    if not check.blocked:
        sent.append(check.finish())
    return "".join(sent), check.blocked


def audit_events(policy):
    lines = policy.audit_log.path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["event"] for line in lines]


@pytest.mark.parametrize("piece", [1, 3, 17])
@pytest.mark.parametrize(
    ("answer", "secret"),
    [
        (f"Sure, here is the file. {SALARIES} Anything else?", SALARIES),
        ("Let me think about it for a moment before answering. " * 4 + SALARIES, SALARIES),
        (f"根据合同，{CONTRACT}", CONTRACT),
    ],
)
def test_a_leaking_stream_stops_before_any_restricted_ngram_is_sent(policy, answer, secret, piece):
    sent, blocked = stream(policy, alice, answer, piece)
    assert blocked
    assert not ngrams(sent, policy.leakage.n) & ngrams(secret, policy.leakage.n)
    assert answer.startswith(sent)  # what did go out is the clean prefix, unchanged
    stop = audit_events(policy)[-1]
    assert stop["type"] == "response" and stop["blocked"] and stop["streamed"]


def test_the_stream_stops_early_not_at_the_end(policy):
    check = policy.stream_check(alice, "req-2")
    for i in range(0, len(SALARIES), 4):
        check.feed(SALARIES[i : i + 4])
        if check.blocked:
            break
    assert check.blocked and i < len(SALARIES) // 2  # min_shared n-grams in: no need to wait for more


@pytest.mark.parametrize("piece", [1, 5])
def test_a_reader_or_a_clean_answer_streams_through_unchanged(policy, piece):
    assert stream(policy, hannah, f"Here it is: {SALARIES}", piece) == (f"Here it is: {SALARIES}", False)
    assert stream(policy, alice, BENIGN, piece) == (BENIGN, False)
    assert stream(policy, Principal("bob"), CONTRACT, piece) == (CONTRACT, False)


def test_text_is_released_while_streaming_not_only_at_the_end(policy):
    check = policy.stream_check(alice, "req-3")
    words = BENIGN.split(" ")
    early = "".join(check.feed(word + " ") for word in words[:30])
    assert len(early) > len(" ".join(words[:20]))  # held back: about the last n tokens only


def test_one_shared_ngram_is_held_until_the_whole_answer_is_checked(policy):
    # One 6-gram of the restricted text in a long answer is below the leak threshold: the answer passes
    # the whole-text check, but the shared n-gram is only sent after that check.
    answer = "Notes from the meeting: Li Wei will be paid 85 dollars extra on time, "
    answer += "the project is going well and on schedule. " * 6
    check = policy.stream_check(alice, "req-4")
    before_end = "".join(check.feed(answer[i : i + 3]) for i in range(0, len(answer), 3))
    assert "Li Wei will be paid 85" not in before_end and before_end.startswith("Notes from")
    assert before_end + check.finish() == answer and not check.blocked


def test_redacting_responses_sends_the_redacted_answer_at_the_end(tmp_path):
    policy = GuardPolicy(GuardConfig(redact_responses=True, redaction_mode="placeholder"))
    answer = "Write to li.wei@example.com or call +8613812345678 for details."
    sent, blocked = stream(policy, alice, answer)
    assert not blocked
    assert "li.wei@example.com" not in sent and "13812345678" not in sent
    assert sent == policy.check_response(answer).text


def test_with_nothing_restricted_every_delta_goes_out_at_once(tmp_path):
    # No hold-back window when nothing can leak: the first delta reaches the user with the first token.
    policy = GuardPolicy(GuardConfig(leakage_ngram=6))
    check = policy.stream_check(alice, "req-5")
    pieces = [SALARIES[i : i + 3] for i in range(0, len(SALARIES), 3)]
    assert [check.feed(piece) for piece in pieces] == pieces
    assert check.finish() == "" and not check.blocked
    policy.protect_document("salaries", SALARIES, ["role:hr"])
    check = policy.stream_check(hannah, "req-6")  # hannah may read the only restricted document
    assert [check.feed(piece) for piece in pieces] == pieces


def test_a_document_protected_mid_stream_is_guarded_from_then_on(tmp_path):
    policy = GuardPolicy(GuardConfig(audit_log=tmp_path / "audit.jsonl", leakage_ngram=6))
    check = policy.stream_check(alice, "req-7")
    opening = "Here is what I found in the shared folder. "
    assert check.feed(opening) == opening
    policy.protect_document("salaries", SALARIES, ["role:hr"])
    sent = "".join(check.feed(SALARIES[i : i + 3]) for i in range(0, len(SALARIES), 3))
    assert check.blocked
    assert not ngrams(opening + sent, policy.leakage.n) & ngrams(SALARIES, policy.leakage.n)
