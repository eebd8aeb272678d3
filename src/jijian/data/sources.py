"""Where documents come from: files, directories and globs of text, JSONL or Parquet, local or fsspec URLs.

Readers stream: one record at a time, never a whole corpus in memory. A bad record (invalid JSON, a
missing text field, undecodable bytes, an unreadable file) is yielded as a `BadRecord` naming the file
and line, so that a build can count it and go on; `read_documents` turns the first one into an error.
"""

from __future__ import annotations

import glob
import json
import random
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jijian.config.errors import UserInputError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".json", ".jsonl", ".c", ".h", ".html", ".csv", ".toml", ".parquet"}


class SourceError(UserInputError):
    """A data source does not exist or cannot be read."""


@dataclass(frozen=True)
class Record:
    """One document: its text, the file it came from and its line (JSONL) or row (Parquet), 0 for whole files."""

    source: str
    line: int
    text: str
    nbytes: int


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be read, with the reason; `line` is 0 when the whole file failed."""

    source: str
    line: int
    message: str
    nbytes: int = 0

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message}"


def is_url(source: str | Path) -> bool:
    """True for fsspec URLs such as s3://bucket/x or memory://corpus (a plain path has no scheme)."""
    return isinstance(source, str) and "://" in source


def resolve_sources(sources: Sequence[str | Path], base_dir: Path | None = None) -> list[Path]:
    """Expand local files, directories (recursively, text suffixes only) and globs into a sorted file list."""
    files: set[Path] = set()
    for source in sources:
        path = Path(source).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if any(ch in str(path) for ch in "*?["):
            matches = [Path(m) for m in glob.glob(str(path), recursive=True)]
            found = {f for m in matches for f in ([m] if m.is_file() else _text_files_under(m))}
            if not found:
                raise SourceError(f"data source {source!r}: glob matched no files")
            files.update(found)
        elif path.is_dir():
            files.update(_text_files_under(path))
        elif path.is_file():
            files.add(path)
        else:
            raise SourceError(f"data source {source!r}: no such file or directory ({path})")
    return sorted(files)


def resolve_inputs(sources: Sequence[str | Path], base_dir: Path | None = None) -> list[str]:
    """Like `resolve_sources`, but also expands fsspec URLs; returns sorted path or URL strings."""
    local = [s for s in sources if not is_url(s)]
    found = {str(p) for p in resolve_sources(local, base_dir)}
    for url in (str(s) for s in sources if is_url(s)):
        found.update(_resolve_url(url))
    return sorted(found)


def _resolve_url(url: str) -> list[str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        if any(ch in path for ch in "*?["):
            paths = [p for p in fs.glob(path) if fs.isfile(p)]
            if not paths:
                raise SourceError(f"data source {url!r}: glob matched no files")
        elif fs.isdir(path):
            paths = [p for p in fs.find(path) if Path(p).suffix in TEXT_SUFFIXES]
        elif fs.isfile(path):
            paths = [path]
        else:
            raise SourceError(f"data source {url!r}: no such file or directory")
    except (ImportError, ValueError, OSError) as exc:
        raise SourceError(f"data source {url!r}: {exc}") from None
    return [fs.unstrip_protocol(p) for p in paths]


def _text_files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]


def source_size(source: str) -> int:
    """Size in bytes of a resolved input (0 when it cannot be determined)."""
    try:
        if is_url(source):
            import fsspec

            fs, path = fsspec.core.url_to_fs(source)
            return int(fs.size(path) or 0)
        return Path(source).stat().st_size
    except (OSError, ValueError):
        return 0


def _open_binary(source: str) -> IO[bytes]:
    if is_url(source):
        import fsspec

        handle: IO[bytes] = fsspec.open(source, "rb").open()
        return handle
    return open(source, "rb")  # the caller closes it


def iter_records(source: str | Path, text_field: str = "text") -> Iterator[Record | BadRecord]:
    """Stream the documents of one file: whole text files, one per JSONL line, one per Parquet row."""
    source = str(source)
    suffix = Path(source.split("://", 1)[-1]).suffix
    try:
        if suffix == ".jsonl":
            yield from _jsonl_records(source, text_field)
        elif suffix == ".parquet":
            yield from _parquet_records(source, text_field)
        else:
            with _open_binary(source) as handle:
                data = handle.read()
            yield Record(source, 0, data.decode("utf-8", errors="replace"), len(data))
    except OSError as exc:
        yield BadRecord(source, 0, f"cannot read: {exc}")


def _jsonl_records(source: str, text_field: str) -> Iterator[Record | BadRecord]:
    with _open_binary(source) as handle:
        for lineno, raw in enumerate(handle, start=1):
            size = len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRecord(source, lineno, f"not valid UTF-8: {exc.reason}", size)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRecord(source, lineno, f"invalid JSON: {exc.msg}", size)
                continue
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                yield BadRecord(source, lineno, f"no string field {text_field!r}", size)
                continue
            yield Record(source, lineno, record[text_field], size)


def _parquet_records(source: str, text_field: str) -> Iterator[Record | BadRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open_binary(source) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, ValueError) as exc:
            yield BadRecord(source, 0, f"not a readable Parquet file: {exc}")
            return
        if text_field not in parquet.schema_arrow.names:
            yield BadRecord(source, 0, f"no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)})")
            return
        row = 0
        # Row-group batches keep memory bounded on large files.
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                if not isinstance(value, str):
                    yield BadRecord(source, row, f"field {text_field!r} is not a string")
                    continue
                yield Record(source, row, value, len(value.encode("utf-8")))


def read_documents(files: Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """One document per text file, per line of a .jsonl file or per Parquet row; a bad record is an error."""
    for path in files:
        for record in iter_records(path, text_field):
            if isinstance(record, BadRecord):
                raise SourceError(str(record))
            yield record.text


def python_stdlib_files(max_bytes: int | None = None, seed: int = 0) -> list[Path]:
    """The running interpreter's standard-library .py files: thousands of real small files, offline.

    Shuffled deterministically so that a byte budget samples every package, not just the first ones.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    random.Random(seed).shuffle(files)
    if max_bytes is None:
        return files
    chosen, total = [], 0
    for path in files:
        size = path.stat().st_size
        if total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return chosen
