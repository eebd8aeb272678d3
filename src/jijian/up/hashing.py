"""Content hashes of files and directory trees, with a (size, mtime_ns) cache as git's index keeps.

A file is re-read only when its size or modification time changed since it was last hashed, so
checking an unchanged multi-gigabyte tree costs one `stat` per file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
MISSING = "missing"


class HashCache:
    """sha256 of files keyed by path, trusted while (size, mtime_ns) stay the same."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache only costs re-reading the files

    def file_hash(self, path: Path) -> str:
        """sha256 of one file's bytes."""
        stat = path.stat()
        key = str(path)
        cached = self.entries.get(key)
        if cached is not None and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return str(cached[2])
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        self.dirty = True
        return digest.hexdigest()

    def tree_hash(self, path: Path, ignore: Iterable[str] = ()) -> str:
        """sha256 over the relative names and content hashes of every file under `path` (or of one file)."""
        if path.is_file():
            return self.file_hash(path)
        if not path.is_dir():
            return MISSING
        skipped = tuple(ignore)
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            name = file.relative_to(path).as_posix()
            if name.endswith(skipped):
                continue
            digest.update(f"{name}\0{self.file_hash(file)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        """Write the cache atomically (only when something new was hashed)."""
        if self.path is None or not self.dirty:
            return
        from jijian.files import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.entries).encode("utf-8"))
        self.dirty = False


def json_hash(value: object) -> str:
    """sha256 of a JSON-serialisable value, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
