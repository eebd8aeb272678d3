"""Durable atomic replacement of a file: readers see the old content or the new, never half of it.

The recipe (SQLite's and every database's): write a temporary file beside the target, fsync it,
rename it over the target, then fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview | Iterable[bytes], *, mode: int = 0o644
) -> None:
    """Replace `path` with `data` durably (temporary file, fsync, rename, fsync of the directory).

    `data` is the bytes, or an iterable of chunks so a large or encrypted payload streams through
    without a second copy in memory: this is the hook encryption at rest uses (`guard.crypto` seals
    chunk by chunk into it). `mode` sets the new file's permissions (0o600 for secrets). The
    temporary file is removed if anything fails, and the target is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")  # unique: concurrent writers never collide
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            else:
                for chunk in data:
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> None:
    """`write_atomic` of UTF-8 text."""
    write_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2) -> None:
    """`write_atomic` of a JSON document (UTF-8, non-ASCII kept as is, ending in a newline)."""
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")
