"""`jijian up` on a tiny deployment: builds like make, resumes after a failure, dry runs write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app

CONFIG = """
name = "tiny"

[model]
preset = "llama-tiny"
dim = 64
n_layers = 1
n_heads = 2
ffn_dim = 128
vocab_size = 512

[tokenizer]
vocab_size = 512

[data]
sources = ["corpus"]
output_dir = "out/data"
validation_fraction = 0.2
workers = 0

[train]
output_dir = "out/run"
steps = 6
batch_size = 2
seq_len = 32
warmup_steps = 1
log_every = 2
eval_batches = 1
device = "cpu"

[kb]
path = "out/kb"
embedding_model = "hashing"
index = "flat"

[guard]
audit_log = "out/audit.jsonl"

[up]
state_dir = "out/up"
kb_collection = "notes"
kb_sources = ["docs"]
sample_prompt = "def f(x):"
serve_model = "export"
question = "How do I read a gzip file?"
question_max_tokens = 4
"""
STAGES = ["data", "train", "export", "kb", "serve"]

# Every test builds on a deployment trained, exported and served through all five stages.
pytestmark = pytest.mark.slow


def up(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["up", *args])
    return result.exit_code, result.output


def plan_of(output: str) -> dict[str, str]:
    """stage -> 'will run' | 'up to date' | 'not selected', read from the printed plan table."""
    plan = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 2 and cells[0] in STAGES:
            plan[cells[0]] = cells[1]
    return plan


def ran(state: Path) -> dict[str, int]:
    """When each stage's manifest was written: what changed tells which stages ran."""
    return {s: (state / f"{s}.json").stat().st_mtime_ns for s in STAGES if (state / f"{s}.json").exists()}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory, stdlib_paths):
    """A deployment built once by a first `jijian up`."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "corpus").mkdir()
    for path in stdlib_paths[:8]:
        shutil.copy(path, root / "corpus" / path.name)
    (root / "docs").mkdir()
    (root / "docs" / "gzip.md").write_text("# Gzip\n\nUse gzip.open(path, 'rt') to read a compressed text file.\n")
    (root / "docs" / "zip.md").write_text("# Zip\n\nThe zipfile module reads and writes ZIP archives.\n")
    (root / "deploy.toml").write_text(CONFIG)
    code, output = up(str(root / "deploy.toml"))
    # The first run's records, kept apart: tests that share this deployment change (and corrupt) its state.
    shutil.copytree(root / "out" / "up", root / "first-run-state")
    return root, code, output


@pytest.fixture
def deployment(built):
    """The built deployment, up to date: a test that changes it leaves it for the next to bring up to date."""
    root, code, output = built
    assert code == 0, output
    config = root / "deploy.toml"
    config.write_text(CONFIG)
    code, output = up(str(config))
    assert code == 0, output
    return root


def test_first_run_builds_every_stage_and_records_outputs(built):
    root, code, output = built
    assert code == 0, output
    assert plan_of(output) == dict.fromkeys(STAGES, "will run")
    state = root / "first-run-state"  # as the first run left it, whichever tests ran since
    for stage in STAGES:
        manifest = json.loads((state / f"{stage}.json").read_text())
        assert manifest["stage"] == stage and manifest["outputs"] and manifest["config"]
        assert all(len(digest) == 64 for digest in manifest["outputs"].values())
    assert (root / "out" / "data" / "manifest.json").is_file()
    assert (root / "out" / "run" / "export" / "model.safetensors").is_file()
    assert json.loads((state / "export.json").read_text())["result"]["sample"].startswith("def f(x):")
    answer = json.loads((state / "serve-answer.json").read_text())
    assert answer["question"] == "How do I read a gzip file?" and answer["rag_collection"] == "notes"
    assert answer["citations"] and answer["model_dir"] == str(root / "out" / "run" / "export")
    assert (root / "out" / "audit.jsonl").is_file()  # the guard audited the request where [guard] says


def test_second_run_does_nothing_and_says_so(deployment):
    root = deployment  # brought up to date by the fixture, whatever the tests before it changed
    before = ran(root / "out" / "up")
    code, output = up(str(root / "deploy.toml"))
    assert code == 0, output
    assert "everything up to date" in output
    assert plan_of(output) == dict.fromkeys(STAGES, "up to date")
    assert ran(root / "out" / "up") == before


def test_changing_a_kb_source_reruns_only_kb_and_serve(deployment):
    state = deployment / "out" / "up"
    before = ran(state)
    (deployment / "docs" / "zip.md").write_text("# Zip\n\nzipfile.ZipFile.extractall unpacks an archive.\n")
    code, output = up(str(deployment / "deploy.toml"))
    assert code == 0, output
    assert plan_of(output) == {**dict.fromkeys(["data", "train", "export"], "up to date"), "kb": "will run",
                               "serve": "will run"}  # fmt: skip
    assert "input changed" in output and "upstream stage kb runs" in output
    after = ran(state)
    assert {s for s in STAGES if after[s] != before[s]} == {"kb", "serve"}


def test_dry_run_prints_plan_and_estimate_and_writes_nothing(deployment):
    new = deployment / "docs" / "new.md"
    new.write_text("# New\n\nA new page about tarfile.\n")
    manifest = deployment / "out" / "data" / "manifest.json"
    saved = manifest.read_bytes()
    manifest.unlink()  # the dataset looks damaged: data and everything downstream of it is stale
    snapshot = tree(deployment)
    try:
        code, output = up(str(deployment / "deploy.toml"), "--dry-run")
        assert code == 0, output
        assert plan_of(output) == dict.fromkeys(STAGES, "will run")
        assert "output changed on disk" in output and "upstream stage data runs" in output
        assert "train estimate (jijian.plan)" in output and "device-hours" in output
        assert "dry run: nothing was built or written" in output
        assert tree(deployment) == snapshot
    finally:
        manifest.write_bytes(saved)
        new.unlink()


def test_failed_stage_stops_the_build_and_the_next_run_resumes_there(deployment):
    state = deployment / "out" / "up"
    before = ran(state)
    bad = deployment / "docs" / "faq.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    code, output = up(str(deployment / "deploy.toml"))
    assert code == 2
    assert "stage kb failed" in output and "faq.jsonl:2: not valid JSON" in output and "continue from kb" in output
    assert not (state / "kb.json").exists()  # the failed stage is not mistaken for built
    assert all((state / f"{s}.json").exists() for s in ("data", "train", "export"))
    bad.unlink()
    code, output = up(str(deployment / "deploy.toml"))
    assert code == 0, output
    assert plan_of(output) == {**dict.fromkeys(["data", "train", "export"], "up to date"), "kb": "will run",
                               "serve": "will run"}  # fmt: skip
    after = ran(state)
    assert {s for s in STAGES if after[s] != before[s]} == {"kb", "serve"}


def test_only_and_from_select_stages(deployment):
    state = deployment / "out" / "up"
    before = ran(state)
    (deployment / "docs" / "gzip.md").write_text("# Gzip\n\ngzip.decompress(data) inflates bytes in memory.\n")
    code, output = up(str(deployment / "deploy.toml"), "--only", "kb")
    assert code == 0, output
    assert plan_of(output)["kb"] == "will run" and plan_of(output)["serve"] == "not selected"
    middle = ran(state)
    assert {s for s in STAGES if middle[s] != before[s]} == {"kb"}
    # serve recorded the kb output it was built from, so a plain build would now bring it up to date.
    code, output = up(str(deployment / "deploy.toml"), "--dry-run")
    assert plan_of(output)["serve"] == "will run" and "output of stage kb changed" in output
    code, output = up(str(deployment / "deploy.toml"), "--from", "export")
    assert code == 0, output
    assert plan_of(output) == {"data": "not selected", "train": "not selected", "export": "will run",
                               "kb": "will run", "serve": "will run"}  # fmt: skip
    after = ran(state)
    assert {s for s in STAGES if after[s] != middle[s]} == {"export", "kb", "serve"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "trian"], "--only 'trian': no such stage; the stages are data, train, export, kb, serve"),
        (["--from", "deploy"], "--from 'deploy': no such stage"),
        (["--only", "kb", "--from", "kb"], "give --only or --from, not both"),
    ],
)
def test_bad_stage_names_are_clear_errors(built, args, message):
    root, _, _ = built
    code, output = up(str(root / "deploy.toml"), *args)
    assert code == 2 and message in " ".join(output.split())


def test_stages_left_out_by_config_are_not_selected(deployment):
    config = deployment / "deploy.toml"
    config.write_text(CONFIG.replace('state_dir = "out/up"', 'state_dir = "out/up"\nstages = ["kb"]'))
    code, output = up(str(config), "--only", "train")
    assert code == 2 and "builds only kb" in " ".join(output.split())
    code, output = up(str(config))
    assert code == 0, output
    assert plan_of(output) == {"data": "not selected", "train": "not selected", "export": "not selected",
                               "kb": "up to date", "serve": "not selected"}  # fmt: skip


def test_rebuilding_identical_outputs_leaves_downstream_current(deployment):
    code, output = up(str(deployment / "deploy.toml"), "--only", "kb")
    assert code == 0, output
    # The rebuilt collection is byte-identical, so serve (which recorded the kb output hash it used) is current.
    code, output = up(str(deployment / "deploy.toml"))
    assert code == 0 and "everything up to date" in output


def test_a_corrupt_manifest_reruns_its_stage(deployment):
    (deployment / "out" / "up" / "kb.json").write_text("{not json")
    code, output = up(str(deployment / "deploy.toml"), "--dry-run")
    assert code == 0 and plan_of(output)["kb"] == "will run" and "unreadable" in output
    assert (deployment / "out" / "up" / "kb.json").read_text() == "{not json"


def test_quickstart_command_summarises_a_built_deployment(deployment):
    result = CliRunner().invoke(app, ["quickstart", "--config", str(deployment / "deploy.toml")])
    assert result.exit_code == 0, result.output
    assert "everything up to date" in result.output and "loss at step 10" in result.output
    summary = json.loads((deployment / "out" / "run" / "quickstart.json").read_text())
    train = json.loads((deployment / "out" / "up" / "train.json").read_text())["result"]
    assert summary["steps"] == 6 and summary["built"] == []
    assert summary["final_over_step_10"] == train["final_over_step_10"]
    assert summary["kb"]["count"] == 2 and summary["rag"]["citations"]
    assert summary["sample"].startswith("def f(x):")


def test_step_calibration_measures_a_positive_time():
    from jijian.up.stages.train import seconds_per_step

    assert seconds_per_step({"preset": "llama-tiny", "n_layers": 1, "vocab_size": 512}, 2, 16, 1, 1) > 0


def test_a_deleted_output_reruns_its_stage_resuming_from_its_checkpoints(deployment):
    shutil.rmtree(deployment / "out" / "run" / "model")
    code, output = up(str(deployment / "deploy.toml"))
    assert code == 0, output
    assert plan_of(output) == {"data": "up to date", "train": "will run", "export": "will run",
                               "kb": "up to date", "serve": "will run"}  # fmt: skip
    assert "output missing" in output
    events = [json.loads(line) for line in (deployment / "out" / "run" / "metrics.jsonl").read_text().splitlines()]
    # Config and data are unchanged, so the checkpoints are still this run's: training resumed, no step redone.
    assert any(e.get("event") == "resumed" for e in events)
    assert (deployment / "out" / "run" / "model" / "model.safetensors").is_file()
