"""Stage `data`: a tokenizer (trained on the sources when [tokenizer] path is unset), then the packed shards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jijian.config import DeployConfig
from jijian.up.paths import PYTHON_STDLIB, config_dir, given_tokenizer, trained_tokenizer_dir
from jijian.up.stage import StageContext, StageError, section


def data_inputs(config: DeployConfig, base: Path) -> list[str]:
    """Every input file or URL of [data] sources (`python-stdlib` expanded; relative to the config file)."""
    from jijian.data import python_stdlib_files, resolve_inputs
    from jijian.up.paths import expand_sources

    sources, stdlib = expand_sources(config.data.sources, base, PYTHON_STDLIB)
    found = resolve_inputs(sources) if sources else []
    # The standard library keeps its seeded shuffle: a tokenizer sample then covers every package.
    named = set(found)
    return found + ([str(p) for p in python_stdlib_files() if str(p) not in named] if stdlib else [])


class DataStage:
    """Clean, de-duplicate, tokenise and pack [data] sources into shards under [data] output_dir."""

    name = "data"

    def __init__(self) -> None:
        self._inputs: dict[tuple[str, Path], list[str]] = {}

    def _files(self, config: DeployConfig, base: Path) -> list[str]:
        # Resolving python-stdlib walks thousands of files: once per build is enough.
        key = (repr(config.data.sources), base)
        if key not in self._inputs:
            self._inputs[key] = data_inputs(config, base)
        return self._inputs[key]

    def upstream(self, config: DeployConfig, stages: tuple[str, ...]) -> list[str]:
        """The first stage: reads nothing another stage writes."""
        return []

    def config_sections(self, config: DeployConfig) -> dict[str, Any]:
        """[tokenizer], [data], the tokenizer sample size and the model whose tokenizer may be used."""
        return {
            "model.hf_path": str(config.model.hf_path),
            "tokenizer": section(config, "tokenizer"),
            "data": section(config, "data"),
            "up.tokenizer_sample_mb": config.up.tokenizer_sample_mb,
        }

    def inputs(self, config: DeployConfig, base: Path) -> list[Path]:
        """The source files (URLs are not hashed) and a given tokenizer."""
        files = [Path(s) for s in self._files(config, base) if "://" not in s]
        tokenizer = given_tokenizer(config)
        if tokenizer is not None and tokenizer.is_dir():
            tokenizer = tokenizer / "tokenizer.json"  # of a model directory only the tokenizer matters here
        return files + ([tokenizer] if tokenizer is not None else [])

    def outputs(self, config: DeployConfig) -> list[Path]:
        """The dataset directory (shards, manifest, report, the tokenizer it was made with)."""
        return [config.data.output_dir]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Train or load the tokenizer, then build the dataset."""
        from jijian.data import build_dataset
        from jijian.model.tokenizer import Tokenizer, train_tokenizer

        config = ctx.config
        files = self._files(config, config_dir(ctx.config_path))
        if not files:
            raise StageError("[data] sources name no files: set them, or leave 'data' out of [up] stages")
        given = given_tokenizer(config)
        if given is not None:
            tokenizer = Tokenizer.load(given)
        else:
            limit = int(config.up.tokenizer_sample_mb * (1 << 20))
            texts = _prefix_by_chars(_texts(files, config.data.text_field), limit)
            tokenizer = train_tokenizer(
                texts, config.tokenizer.vocab_size, min_frequency=config.tokenizer.min_frequency
            )
            ctx.console.print(f"tokenizer: vocab {tokenizer.vocab_size} trained on the sources")
        build = build_dataset(config.data, tokenizer, sources=files, console=ctx.console)
        if given is None:
            tokenizer.save(trained_tokenizer_dir(config))
        totals = build.manifest["stats"]["totals"]
        ctx.console.print(
            f"{len(files)} files -> {totals['kept_documents']} documents ({totals['exact_duplicates']} exact and "
            f"{totals['near_duplicates']} near duplicates, {totals['filtered']} filtered), "
            f"{totals['train_tokens']:,} train + {totals['val_tokens']:,} validation tokens in {build.directory}"
        )
        return {
            "files": len(files),
            "documents": totals["kept_documents"],
            "train_tokens": totals["train_tokens"],
            "val_tokens": totals["val_tokens"],
            "vocab_size": tokenizer.vocab_size,
            "directory": str(build.directory),
        }


def _texts(files: list[str], text_field: str) -> Iterator[str]:
    from jijian.data.sources import BadRecord, iter_records

    for source in files:
        for record in iter_records(source, text_field):
            if not isinstance(record, BadRecord):  # the build reports bad records; the tokenizer just skips them
                yield record.text


def _prefix_by_chars(texts: Iterator[str], limit: int) -> Iterator[str]:
    total = 0
    for text in texts:
        if total >= limit:
            return
        total += len(text)
        yield text
