"""Hash-chained audit log: every kind of tampering is detected and the first bad line is named."""

from __future__ import annotations

import json
import threading

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.guard.audit import AuditLog, AuditLogError, verify_audit


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    for i in range(5):
        audit.append({"type": "request", "n": i, "user": "alice"})
    return audit


def lines(log):
    return log.path.read_text(encoding="utf-8").splitlines(keepends=True)


def rewrite(log, new_lines):
    log.path.write_text("".join(new_lines), encoding="utf-8")


def test_intact_log_verifies(log):
    verdict = verify_audit(log.path)
    assert verdict.ok and verdict.entries == 5
    entries = [json.loads(line) for line in lines(log)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert all(entries[i]["prev"] == entries[i - 1]["hash"] for i in range(1, 5))


def test_edit_is_detected_at_the_edited_line(log):
    content = lines(log)
    content[2] = content[2].replace('"n":2', '"n":7')
    rewrite(log, content)
    verdict = verify_audit(log.path)
    assert not verdict.ok and verdict.bad_line == 3 and "edited" in verdict.reason


def test_edit_with_recomputed_hash_breaks_the_next_link(log):
    from jijian.guard.audit import _entry_hash

    content = lines(log)
    entry = json.loads(content[1])
    entry["event"]["user"] = "mallory"
    entry["hash"] = _entry_hash(entry)
    content[1] = json.dumps(entry, separators=(",", ":")) + "\n"
    rewrite(log, content)
    verdict = verify_audit(log.path)
    assert not verdict.ok and verdict.bad_line == 3


def test_deletion_and_reordering_are_detected(log):
    content = lines(log)
    rewrite(log, content[:1] + content[2:])
    assert verify_audit(log.path).bad_line == 2
    rewrite(log, [content[0], content[2], content[1], *content[3:]])
    assert verify_audit(log.path).bad_line == 2


def test_truncation_is_detected_through_the_tip(log):
    content = lines(log)
    rewrite(log, content[:3])
    verdict = verify_audit(log.path)
    assert not verdict.ok and verdict.bad_line == 4 and "removed from the end" in verdict.reason
    rewrite(log, [*content[:4], content[4][:20]])  # a torn last write
    assert verify_audit(log.path).bad_line == 5


def test_concurrent_appends_from_threads_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path), AuditLog(path)]  # two handles, as two components of one server would have

    def worker(k):
        for i in range(25):
            logs[k % 2].append({"thread": k, "i": i})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verdict = verify_audit(path)
    assert verdict.ok and verdict.entries == 100


def test_reopened_log_continues_the_chain(log):
    AuditLog(log.path).append({"type": "later"})
    assert verify_audit(log.path).entries == 6


def test_damaged_tip_refuses_to_append(log):
    log.path.with_name("audit.jsonl.tip").write_text("{not json", encoding="utf-8")
    with pytest.raises(AuditLogError, match="tip"):
        log.append({"x": 1})


def test_cli_verify_audit_names_the_first_bad_line(log):
    runner = CliRunner()
    ok = runner.invoke(app, ["guard", "verify-audit", str(log.path)])
    assert ok.exit_code == 0 and "5 entries" in ok.output
    content = lines(log)
    content[3] = content[3].replace('"alice"', '"bob"')
    rewrite(log, content)
    bad = runner.invoke(app, ["guard", "verify-audit", str(log.path)])
    assert bad.exit_code == 1 and f"{log.path}:4" in bad.output.replace("\n", "")
    missing = runner.invoke(app, ["guard", "verify-audit", str(log.path) + ".nope"])
    assert missing.exit_code == 2


def _append_from_process(path, k):
    log = AuditLog(path)
    for i in range(20):
        log.append({"process": k, "i": i})


def test_concurrent_appends_from_processes_keep_one_chain(tmp_path):
    import multiprocessing

    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_from_process, args=(path, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    verdict = verify_audit(path)
    assert verdict.ok and verdict.entries == 60
