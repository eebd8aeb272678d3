"""The `jijian` command line: config check/init, tokenizer training, and clear exit-2 errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import load_config
from jijian.model.tokenizer import Tokenizer, train_tokenizer

ENGLISH = """\
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,
I thought I would sail about a little and see the watery part of the world. The sea was calm that morning,
and the harbour smelled of salt, tar and fresh bread from the bakery on the corner of the quay.
Training a language model starts with text: documents are split into tokens and packed into windows.
"""

PYTHON = '''\
import json
from pathlib import Path


def read_config(path: str) -> dict:
    """Read a JSON configuration file and return its contents."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, word: str) -> None:
        self.counts[word] = self.counts.get(word, 0) + 1

    def most_common(self, n: int = 10) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda item: -item[1])[:n]


for number in range(10):
    if number % 2 == 0:
        print(f"{number} is even")
'''


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def output_of(result) -> str:
    """stdout and stderr together, whichever Click version is installed."""
    text = result.output
    try:
        stderr = result.stderr
    except ValueError:  # older Click without separate stderr capture
        stderr = ""
    if stderr and stderr not in text:
        text += stderr
    return text


def squash(text: str) -> str:
    """Whitespace removed: rich wraps long lines (and long paths) at the terminal width."""
    return "".join(text.split())


def contains(result, needle: str) -> bool:
    return squash(needle) in squash(output_of(result))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    return [
        write(tmp_path / "corpus" / "english.txt", ENGLISH * 6),
        write(tmp_path / "corpus" / "code.py", PYTHON * 6),
        write(tmp_path / "corpus" / "notes.md", (ENGLISH[:300] + "\n" + PYTHON[:300]) * 4),
    ]


# --- help and the module entry point -----------------------------------------------------------------------


def test_help_lists_every_command(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("config", "tokenizer", "train", "generate", "quickstart"):
        assert command in result.output


def test_no_arguments_shows_help(runner):
    result = runner.invoke(app, [])
    assert "config" in output_of(result)
    assert "Usage" in output_of(result)


def test_python_dash_m_jijian_help():
    proc = subprocess.run(
        [sys.executable, "-m", "jijian", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("config", "tokenizer", "train", "generate", "quickstart"):
        assert command in proc.stdout


def test_config_help_lists_subcommands(runner):
    result = runner.invoke(app, ["config", "--help"])
    assert result.exit_code == 0
    assert "check" in result.output
    assert "init" in result.output


# --- config init / check -----------------------------------------------------------------------------------


def test_config_init_then_check(runner, tmp_path):
    path = tmp_path / "deploy.toml"
    init = runner.invoke(app, ["config", "init", str(path)])
    assert init.exit_code == 0, output_of(init)
    assert path.is_file()
    assert "[train]" in path.read_text(encoding="utf-8")

    check = runner.invoke(app, ["config", "check", str(path)])
    assert check.exit_code == 0, output_of(check)
    assert "[model]" in check.output
    assert "dim = 128" in check.output
    assert "[train]" in check.output
    assert "ok:" in output_of(check)


def test_config_check_stdout_is_the_resolved_config(runner, tmp_path):
    path = tmp_path / "deploy.toml"
    runner.invoke(app, ["config", "init", str(path)])
    resolved = runner.invoke(app, ["config", "check", str(path)])
    assert resolved.exit_code == 0
    # stdout holds only the resolved TOML (the status line goes to stderr) and loads to the same config.
    stdout = resolved.stdout
    assert "ok:" not in stdout
    again = write(tmp_path / "resolved.toml", stdout)
    assert load_config(again) == load_config(path)
    assert f'output_dir = "{tmp_path / "runs" / "train"}"' in stdout


def test_config_init_refuses_to_overwrite(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", "# mine\n")
    result = runner.invoke(app, ["config", "init", str(path)])
    assert result.exit_code != 0
    assert contains(result, "--force")
    assert path.read_text(encoding="utf-8") == "# mine\n"


def test_config_init_force_overwrites(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", "# mine\n")
    result = runner.invoke(app, ["config", "init", str(path), "--force"])
    assert result.exit_code == 0, output_of(result)
    assert "[model]" in path.read_text(encoding="utf-8")
    assert runner.invoke(app, ["config", "check", str(path)]).exit_code == 0


def test_config_init_default_path(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "init"])
    assert result.exit_code == 0, output_of(result)
    assert (tmp_path / "deploy.toml").is_file()


def test_config_check_unknown_key(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", "[train]\nsteps = 10\nlrr = 0.1\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert contains(result, "train.lrr")
    assert contains(result, str(path))
    assert contains(result, "line 3")
    assert contains(result, "did you mean 'lr'")
    assert "Traceback" not in output_of(result)


def test_config_check_wrong_type(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", '[train]\nsteps = "ten"\n')
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert contains(result, "train.steps")
    assert contains(result, str(path))


def test_config_check_missing_referenced_file(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", '[tokenizer]\npath = "missing.json"\n')
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert contains(result, "tokenizer.path")
    assert contains(result, str(tmp_path / "missing.json"))


def test_config_check_out_of_range(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", "[serve]\nport = 70000\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert contains(result, "serve.port")


def test_config_check_invalid_toml(runner, tmp_path):
    path = write(tmp_path / "deploy.toml", "[train\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert contains(result, "invalid TOML")


def test_config_check_nonexistent_file(runner, tmp_path):
    path = tmp_path / "absent.toml"
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert contains(result, str(path))
    assert contains(result, "not found")
    assert "[model]" not in result.stdout


# --- tokenizer train ------------------------------------------------------------------------------------------


def test_tokenizer_train_writes_a_loadable_tokenizer(runner, tmp_path, corpus):
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--vocab-size", "400", "--out", str(out), *map(str, corpus)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, output_of(result)
    assert (out / "tokenizer.json").is_file()
    tokenizer = Tokenizer.load(out / "tokenizer.json")
    assert 256 < tokenizer.vocab_size <= 400
    assert tokenizer.eos_id is not None
    text = "def read_config(path):\n    return json.load(handle)  # the sea was calm"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # The merges were learned from the corpus: common words take fewer tokens than bytes.
    assert len(tokenizer.encode("the harbour")) < len(b"the harbour")
    assert Tokenizer.load(out).vocab_size == tokenizer.vocab_size


def test_tokenizer_train_from_directory_and_jsonl(runner, tmp_path, corpus):
    import json

    jsonl = write(tmp_path / "more" / "docs.jsonl", "".join(json.dumps({"body": ENGLISH}) + "\n" for _ in range(3)))
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--vocab-size", "300", "--out", str(out), "--text-field", "body"]
    result = runner.invoke(app, [*args, str(tmp_path / "corpus"), str(jsonl)])
    assert result.exit_code == 0, output_of(result)
    assert Tokenizer.load(out).vocab_size <= 300


def test_tokenizer_train_missing_path(runner, tmp_path):
    missing = tmp_path / "no" / "such.txt"
    result = runner.invoke(
        app, ["tokenizer", "train", "--vocab-size", "400", "--out", str(tmp_path / "t"), str(missing)]
    )
    assert result.exit_code == 2
    assert contains(result, str(missing))
    assert not (tmp_path / "t").exists()


def test_tokenizer_train_too_small_vocab_is_refused(runner, tmp_path, corpus):
    args = ["tokenizer", "train", "--vocab-size", "100", "--out", str(tmp_path / "t"), str(corpus[0])]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert not (tmp_path / "t" / "tokenizer.json").exists()


def test_tokenizer_train_too_small_vocab_is_a_user_error(runner, tmp_path, corpus):
    args = ["tokenizer", "train", "--vocab-size", "100", "--out", str(tmp_path / "t"), str(corpus[0])]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert contains(result, "vocab_size must be at least 261")


def test_tokenizer_train_empty_directory(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["tokenizer", "train", "--out", str(tmp_path / "t"), str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert contains(result, "no input files")


# --- train ----------------------------------------------------------------------------------------------------


def small_deploy(tmp_path: Path, tokenizer_dir: Path, extra: str = "") -> Path:
    text = f"""\
[model]
dim = 32
n_layers = 1
n_heads = 2
ffn_dim = 64
vocab_size = 512
max_seq_len = 64

[tokenizer]
path = "{tokenizer_dir}"

[train]
device = "cpu"
steps = 2
warmup_steps = 0
seq_len = 16
batch_size = 2
output_dir = "runs/train"
{extra}
"""
    return write(tmp_path / "deploy.toml", text)


def test_train_without_data_sources_exits_2(runner, tmp_path, corpus):
    tokenizer_dir = tmp_path / "tok"
    train_tokenizer([p.read_text(encoding="utf-8") for p in corpus], 400).save(tokenizer_dir)
    config = small_deploy(tmp_path, tokenizer_dir)
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, output_of(result)
    assert contains(result, "data.sources")
    assert "Traceback" not in output_of(result)
    assert not (tmp_path / "runs" / "train" / "model").exists()


def test_train_with_missing_data_source_exits_2(runner, tmp_path, corpus):
    tokenizer_dir = tmp_path / "tok"
    train_tokenizer([p.read_text(encoding="utf-8") for p in corpus], 400).save(tokenizer_dir)
    missing = tmp_path / "absent-corpus"
    config = small_deploy(tmp_path, tokenizer_dir, extra=f'\n[data]\nsources = ["{missing}"]\n')
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, output_of(result)
    assert contains(result, str(missing))


def test_train_without_tokenizer_exits_2(runner, tmp_path):
    config = write(tmp_path / "deploy.toml", '[model]\npreset = "llama-tiny"\n[train]\ndevice = "cpu"\n')
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, output_of(result)
    assert contains(result, "tokenizer.path")


def test_train_with_invalid_config_exits_2(runner, tmp_path):
    config = write(tmp_path / "deploy.toml", "[train]\nstepz = 3\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert contains(result, "train.stepz")


def test_generate_missing_model_dir_exits_nonzero(runner, tmp_path):
    result = runner.invoke(app, ["generate", str(tmp_path / "no-model"), "hello"])
    assert result.exit_code == 2
    assert contains(result, str(tmp_path / "no-model" / "config.json"))


def test_train_with_a_corrupt_tokenizer_is_a_user_error(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    (tmp_path / "d.txt").write_text("hello world\n" * 50)
    config = tmp_path / "deploy.toml"
    config.write_text(f'[tokenizer]\npath = "tok"\n[data]\nsources = ["{tmp_path / "d.txt"}"]\n')
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "tokenizer.json" in "".join(result.output.split())
