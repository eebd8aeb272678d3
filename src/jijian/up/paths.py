"""Where `jijian up` puts what the config does not name itself, and the special source kinds."""

from __future__ import annotations

from pathlib import Path

from jijian.config import DeployConfig

# The running interpreter's standard library as a data source (thousands of real .py files, offline).
PYTHON_STDLIB = "python-stdlib"
# Docstrings of the standard library as a knowledge-base source.
PYTHON_STDLIB_DOCS = "python-stdlib-docs"


def config_dir(config_path: Path) -> Path:
    """Relative sources are taken from the config file's directory, like every other path in it."""
    return config_path.resolve().parent


def trained_tokenizer_dir(config: DeployConfig) -> Path:
    """The tokenizer the data stage trains, kept with the dataset (which carries a copy anyway)."""
    return config.data.output_dir / "tokenizer"


def given_tokenizer(config: DeployConfig) -> Path | None:
    """[tokenizer] path, else the tokenizer inside [model] hf_path; None when the data stage must train one."""
    if config.tokenizer.path is not None:
        return config.tokenizer.path
    hf_path = config.model.hf_path
    if hf_path is not None and (hf_path / "tokenizer.json").is_file():
        return hf_path
    return None


def tokenizer_dir(config: DeployConfig) -> Path:
    """The given tokenizer, else the one the data stage trained."""
    return given_tokenizer(config) or trained_tokenizer_dir(config)


def export_dir(config: DeployConfig) -> Path:
    """[up] export_dir, else `export/` inside the training run's output directory."""
    return config.up.export_dir or config.train.output_dir / "export"


def answer_path(config: DeployConfig) -> Path:
    """The serve stage's record: the served model, and the sample question's answer with citations."""
    return config.up.state_dir / "serve-answer.json"


def expand_sources(sources: list[str], base: Path, special: str) -> tuple[list[str], bool]:
    """Sources with relative paths made absolute against `base`, minus `special`; and whether it was named."""
    named = special in sources
    resolved = []
    for source in sources:
        if source == special:
            continue
        if "://" in source or Path(source).expanduser().is_absolute():
            resolved.append(source)
        else:
            resolved.append(str(base / source))
    return resolved, named
