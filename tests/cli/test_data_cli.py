"""`jijian data build` and `jijian data inspect` on real files: report, JSON-lines progress, exit-2 errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from jijian.cli.main import app

runner = CliRunner()


def test_build_then_inspect(tmp_path, tokenizer, stdlib_paths):
    tokenizer.save(tmp_path / "tok")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in stdlib_paths[:8]:
        (corpus / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (corpus / "copy.py").write_text(stdlib_paths[0].read_text(encoding="utf-8"), encoding="utf-8")
    (corpus / "bad.jsonl").write_text('{"text": "fine and long enough to keep it"}\n{oops\n', encoding="utf-8")
    args = ["data", "build", "-s", str(corpus), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "ds")]
    args += ["--shard-size-mb", "0.05"]
    result = runner.invoke(app, [*args, "--workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["totals"]["exact_duplicates"] == 1 and report["totals"]["read_errors"] == 1
    assert report["errors"] == [
        f"{corpus / 'bad.jsonl'}:2: invalid JSON: Expecting property name enclosed in double quotes"
    ]
    # Off a terminal, progress is JSON lines on stderr.
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {"shard", "done"} <= {e["event"] for e in events}
    assert f"{corpus / 'bad.jsonl'}:2" in result.stderr

    again = runner.invoke(app, args)  # same settings, another worker count: nothing to do
    assert again.exit_code == 0 and "up to date" in again.stderr

    shown = runner.invoke(app, ["data", "inspect", str(tmp_path / "ds"), "--samples", "2", "--verify"])
    assert shown.exit_code == 0, shown.output
    assert "train_00000.bin" in shown.stdout and "exact_duplicate" in shown.stdout and "train sample 2" in shown.stdout
    summary = json.loads(runner.invoke(app, ["data", "inspect", str(tmp_path / "ds"), "--json"]).stdout)
    assert summary["splits"]["train"]["tokens"] == report["totals"]["train_tokens"]
    assert len(summary["samples"]["train"]) == 3

    strict = runner.invoke(app, [*args, "--out", str(tmp_path / "strict"), "--strict", "--workers", "0"])
    assert strict.exit_code == 2
    assert f"{corpus / 'bad.jsonl'}:2: invalid JSON" in strict.stderr


def test_inspect_of_a_directory_that_is_not_a_dataset_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json" in result.stderr


def test_build_without_a_tokenizer_exits_2(tmp_path):
    (tmp_path / "a.txt").write_text("some text that is long enough\n")
    result = runner.invoke(app, ["data", "build", "-s", str(tmp_path / "a.txt"), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "--tokenizer" in result.stderr
