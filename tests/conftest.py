"""Shared fixtures: small model configs and a tokenizer trained once per session on real text."""

from __future__ import annotations

import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The planner's "cpu" is this machine when `jijian plan calibrate` has profiled it; tests must not depend on
# whether the developer has, so they point at a profile that does not exist unless a test writes one.
os.environ["JIJIAN_HARDWARE_PROFILE"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / "jijian-tests-no-profile.json")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# The run fails if a test leaves a process running (see leftover_processes.py).
pytest_plugins = ["leftover_processes"]

# Hypothesis keeps its example database and a constants cache in ./.hypothesis unless told otherwise; it
# writes there while test modules are imported, before any fixture runs, hence a directory made here.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="jijian-tests-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Repeat pytest-randomly's seed at the end, where a failure is read, so that the order can be rerun."""
    if config.pluginmanager.has_plugin("randomly") and config.getoption("randomly_reorganize", True):
        seed = config.getoption("randomly_seed", None)
        if seed is not None:
            terminalreporter.write_line(f"random order: rerun it with --randomly-seed={seed}")


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Caches and temporary files of the code under test, and of every process it starts, stay in the session's
    temporary directory: never the home directory (~/.cache, ~/.config) or fixed names under /tmp."""
    root = tmp_path_factory.mktemp("environment")
    places = {
        "JIJIAN_CACHE_DIR": "jijian-cache",  # the guard's trained classifiers
        "MPLCONFIGDIR": "matplotlib",  # its font cache, else under ~/.config or ~/.cache
        "TORCHINDUCTOR_CACHE_DIR": "torchinductor",  # else /tmp/torchinductor_$USER
        "TMPDIR": "tmp",  # torchrun's torchelastic_* directories and other subprocesses' temporary files
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, directory in places.items():
            (root / directory).mkdir()
            patch.setenv(name, str(root / directory))
        yield root


def stdlib_sample(n_files: int = 40) -> list[Path]:
    """A fixed handful of real Python files from the interpreter's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(root.glob("*.py"))[:n_files]


@pytest.fixture(scope="session")
def stdlib_paths() -> list[Path]:
    return stdlib_sample()


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_sample()]


@pytest.fixture(scope="session")
def tokenizer(corpus_texts):
    from jijian.model.tokenizer import train_tokenizer

    return train_tokenizer(corpus_texts, vocab_size=512)


@pytest.fixture
def tiny_config():
    """A small GQA model (4 query heads over 2 KV heads), untied, fast enough for unit tests."""
    from jijian.config import ModelConfig

    return ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=512, max_seq_len=256, rope_theta=10000.0
    )
