"""Where documents come from: files, directories and globs of text or JSONL, and the stdlib corpus."""

from __future__ import annotations

import glob
import json
import random
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from jijian.config.errors import UserInputError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".json", ".jsonl", ".c", ".h", ".html", ".csv", ".toml"}


class SourceError(UserInputError):
    """A data source does not exist or cannot be read."""


def resolve_sources(sources: Sequence[str | Path], base_dir: Path | None = None) -> list[Path]:
    """Expand files, directories (recursively, text suffixes only) and globs into a sorted file list."""
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


def _text_files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]


def read_documents(files: Sequence[Path], text_field: str = "text") -> Iterator[str]:
    """One document per text file, or per line of a .jsonl file (its `text_field`)."""
    for path in files:
        if path.suffix == ".jsonl":
            yield from _read_jsonl(path, text_field)
            continue
        try:
            yield path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc}") from None


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    lineno = 0
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise SourceError(f"{path}:{lineno}: no string field {text_field!r}")
                yield record[text_field]
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not valid UTF-8 (near line {lineno + 1}): {exc.reason}") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None


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
