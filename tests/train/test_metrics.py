"""Metrics go to a JSON-lines file always; to a progress bar on a terminal, else as JSON lines."""

from __future__ import annotations

import io
import json

from rich.console import Console

from jijian.train.metrics import MetricsLogger


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_not_a_terminal_prints_json_lines_and_writes_the_file(tmp_path):
    stream = io.StringIO()
    console = Console(file=io.StringIO(), force_terminal=False)
    with MetricsLogger(tmp_path / "m.jsonl", 10, console=console, stream=stream) as logger:
        logger.log({"step": 1, "loss": 2.5})
        logger.log({"step": 2, "loss": 2.0, "lr": 1e-3})
    printed, saved = records(stream.getvalue()), records((tmp_path / "m.jsonl").read_text())
    assert printed == saved
    assert [r["step"] for r in saved] == [1, 2] and saved[1]["lr"] == 1e-3 and "time" in saved[0]


def test_a_terminal_gets_a_progress_bar_and_no_json_on_stdout(tmp_path):
    stream, screen = io.StringIO(), io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with MetricsLogger(tmp_path / "m.jsonl", 10, console=console, stream=stream) as logger:
        logger.log({"step": 5, "loss": 3.25, "tokens_per_s": 2500.0})
        logger.advance(6)
    assert stream.getvalue() == ""
    assert "loss 3.250" in screen.getvalue() and "tok/s 2,500" in screen.getvalue()
    assert len(records((tmp_path / "m.jsonl").read_text())) == 1


def test_a_new_run_replaces_old_metrics_unless_appending(tmp_path):
    path = tmp_path / "m.jsonl"
    quiet = Console(file=io.StringIO(), force_terminal=False)
    for append in (False, False, True):
        with MetricsLogger(path, 1, console=quiet, stream=io.StringIO(), append=append) as logger:
            logger.log({"step": 1})
    assert len(records(path.read_text())) == 2
