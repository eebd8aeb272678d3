"""The one durable-write helper and the one JSON-lines reader that every package uses."""

from __future__ import annotations

import os
import stat

import pytest

from jijian.files import (
    JsonLinesError,
    drop_torn_tail,
    iter_json_lines,
    read_json_lines,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from jijian.files.rundir import list_checkpoints, summarize_goodput


def test_write_atomic_replaces_whole_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "deep" / "state.bin"
    write_atomic(target, b"old")
    write_atomic(target, iter([b"new ", b"chunks"]))  # the streamed form encryption uses
    assert target.read_bytes() == b"new chunks"
    assert [p.name for p in target.parent.iterdir()] == ["state.bin"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"version": 1})

    def chunks():
        yield b'{"version": '
        raise RuntimeError("disk went away mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_atomic(target, chunks())
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_secrets_are_written_owner_only_and_text_as_utf8(tmp_path):
    write_text_atomic(tmp_path / "keys.toml", "用户 = 'alice'\n", mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "keys.toml").st_mode) == 0o600
    assert (tmp_path / "keys.toml").read_text(encoding="utf-8") == "用户 = 'alice'\n"


def test_reader_drops_a_torn_last_line_but_names_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    assert read_json_lines(path) == [{"step": 1}, {"step": 2}]
    assert read_json_lines(path, strict=True) == [{"step": 1}, {"step": 2}]  # a kill is not corruption
    path.write_text('{"step": 1}\n{broken\n{"step": 2}\n')
    assert read_json_lines(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(JsonLinesError, match=r"metrics.jsonl:2: not valid JSON"):
        read_json_lines(path, strict=True)
    assert read_json_lines(tmp_path / "missing.jsonl") == []


def test_iter_json_lines_raises_the_callers_error_naming_file_and_line(tmp_path):
    class QuestionsError(ValueError):
        pass

    path = tmp_path / "q.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n{"b": \n')
    rows = iter_json_lines(path, error=QuestionsError)
    assert next(rows) == (f"{path}:1", 1, {"a": 1})
    assert next(rows) == (f"{path}:3", 3, [2])
    with pytest.raises(QuestionsError, match=r"q.jsonl:4: not valid JSON"):
        next(rows)


def test_drop_torn_tail_cuts_back_to_the_last_whole_line(tmp_path):
    path = tmp_path / "goodput.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b"x" * 200_000)  # no newline at all: nothing whole to keep
    drop_torn_tail(path)
    assert path.read_bytes() == b""


def test_goodput_counts_a_recomputed_step_once_and_the_restart_gap():
    events = [
        {"time": 0.0, "event": "attempt"},
        {"time": 1.0, "event": "step", "step": 1, "duration_s": 1.0},
        {"time": 2.0, "event": "step", "step": 2, "duration_s": 1.0},  # lost: the run goes back to step 1
        {"time": 6.0, "event": "attempt"},
        {"time": 7.0, "event": "resume", "to_step": 1},
        {"time": 8.0, "event": "step", "step": 2, "duration_s": 1.0},
    ]
    s = summarize_goodput(events)
    assert s["productive_s"] == 2.0 and s["recomputed_s"] == 1.0 and s["attempts"] == 2
    assert s["restart_lost_s"] == 7.0 - 2.0 and s["goodput"] == 2.0 / 8.0
    assert s["curve"][-1] == (8.0, 2.0 / 8.0)
    assert summarize_goodput([]) == {}


def test_checkpoint_listing_reports_truncated_files(tmp_path):
    good, bad = tmp_path / "step_000010", tmp_path / "step_000020"
    for directory in (good, bad):
        directory.mkdir()
        (directory / "model.bin").write_bytes(b"12345")
        write_json_atomic(directory / "manifest.json", {"files": {"model.bin": {"bytes": 5, "crc32": 0}}})
    (bad / "model.bin").write_bytes(b"12")
    (tmp_path / "step_000030.tmp").mkdir()  # still being written: not listed
    (tmp_path / "latest").write_text("step_000010\n")
    listed = list_checkpoints(tmp_path)
    assert [(c["step"], c["status"], c["latest"]) for c in listed] == [
        (20, "model.bin is truncated or overwritten", False),
        (10, "ok", True),
    ]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    from jijian.files import replaced_directory

    target = tmp_path / "model"
    with replaced_directory(target) as staging:
        (staging / "a.bin").write_bytes(b"old")
    assert (target / "a.bin").read_bytes() == b"old"

    with pytest.raises(RuntimeError, match="disk full"), replaced_directory(target) as staging:
        (staging / "a.bin").write_bytes(b"half")
        raise RuntimeError("disk full")
    # The failed write left the old directory as it was, and no staging directory behind.
    assert (target / "a.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    with replaced_directory(target) as staging:
        (staging / "nested").mkdir()
        (staging / "nested" / "b.bin").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["nested"]  # the old files are gone with the old directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"), replaced_directory(tmp_path / "file"):
        pass
