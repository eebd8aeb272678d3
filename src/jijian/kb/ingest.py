"""Files → chunks → embeddings → a collection, skipping files whose content has not changed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from jijian.config.errors import UserInputError
from jijian.kb.backend import Collection, Record
from jijian.kb.chunking import chunk_text
from jijian.kb.embed import Embedder

SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
            ".py": "python", ".jsonl": "jsonl"}  # fmt: skip

log = logging.getLogger(__name__)


class IngestError(UserInputError):
    """A file that cannot be ingested (unknown type, malformed JSONL line)."""


class _TextOfHTML(HTMLParser):
    _SKIP = frozenset({"script", "style"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article", "title"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.skipping += tag in self._SKIP
        if tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        self.skipping -= tag in self._SKIP and self.skipping > 0

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML page, block elements separated by blank lines."""
    parser = _TextOfHTML()
    parser.feed(html)
    return "".join(parser.parts)


@dataclass(frozen=True)
class Document:
    """A text to chunk, with where it came from."""

    text: str
    source: str
    metadata: dict[str, Any]
    id: str | None = None  # a JSONL line's own "id": its chunks keep it (see `ingest_files`)


def read_documents(path: Path) -> Iterator[Document]:
    """The documents inside one file (one per file, or one per JSONL line)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise IngestError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(sorted(SUFFIXES))})")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if kind == "jsonl":
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise IngestError(f"{path}:{number}: needs a string field 'text'")
            record_id = row.get("id")
            if record_id is not None and (not isinstance(record_id, str) or not record_id.strip()):
                raise IngestError(f"{path}:{number}: 'id' must be a non-empty string")
            extra = {
                k: v for k, v in row.items() if k not in ("text", "id") and isinstance(v, str | int | float | bool)
            }
            yield Document(row["text"], f"{path}:{number}", {**extra, "type": kind}, record_id)
        return
    yield Document(html_to_text(raw) if kind == "html" else raw, str(path), {"type": kind})


def _files_under(root: Path) -> list[Path]:
    """Supported files under a directory, sorted, never leaving it through a symbolic link.

    A shared directory may hold a link to a file or directory elsewhere (another tenant's data,
    a credentials file); the walk does not descend into linked directories, and a linked file is
    taken only if it resolves to a place inside `root`.
    """
    real_root = root.resolve()
    found = []
    for folder, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                log.warning("%s: skipped, a symbolic link to %s outside %s", path, path.resolve(), root)
                continue
            found.append(path)
    return sorted(found)


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named directly plus supported files under named directories (links out of them skipped), sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(_files_under(path))
        elif path.is_file():
            files.append(path)
        else:
            raise IngestError(f"{path}: no such file or directory")
    return files


@dataclass
class IngestReport:
    """What one ingestion did."""

    files: int = 0
    skipped: int = 0
    chunks: int = 0


def ingest_files(
    collection: Collection,
    files: Sequence[Path],
    embedder: Embedder,
    *,
    chunk_tokens: int = 256,
    chunk_overlap: int = 32,
    readers: list[str] | None = None,
    on_file: Callable[[Path, int], None] | None = None,
) -> IngestReport:
    """Chunk, embed and store each file; a file whose sha256 is unchanged since last time is skipped.

    Chunks are named `<sha256 prefix>-<n>`, except those of a JSONL line with an "id": its only chunk
    is named by that id, several chunks `<id>.1`, `<id>.2`... (so labelled questions can name them).
    """
    if embedder.dim != collection.dim:
        raise IngestError(f"embedder {embedder.name!r} makes {embedder.dim}-d vectors, collection has {collection.dim}")
    report = IngestReport()
    for path in files:
        source = str(path.resolve())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if collection.source_hash(source) == digest:
            report.skipped += 1
            if on_file:
                on_file(path, 0)
            continue
        texts: list[str] = []
        metadata: list[dict[str, Any]] = []
        ids: list[str | None] = []
        for document in read_documents(path):
            chunks = chunk_text(document.text, embedder.count_tokens, chunk_tokens, chunk_overlap)
            for number, chunk in enumerate(chunks, 1):
                texts.append(chunk.text)
                metadata.append(
                    {**document.metadata, "source": document.source, "start": chunk.start, "end": chunk.end}
                )
                if document.id is None:
                    ids.append(f"{digest[:16]}-{len(ids)}")
                else:
                    ids.append(document.id if len(chunks) == 1 else f"{document.id}.{number}")
        vectors = embedder.embed(texts)
        records = [
            Record(record_id, vector, text, meta, readers)
            for record_id, vector, text, meta in zip(ids, vectors, texts, metadata, strict=True)
        ]
        collection.replace_source(source, digest, records)
        report.files += 1
        report.chunks += len(records)
        if on_file:
            on_file(path, len(records))
    return report
