"""Durable atomic replacement of a file or a directory: readers see the old content or the new, never half of it.

The recipe (SQLite's and every database's): write a temporary file beside the target, fsync it,
rename it over the target, then fsync the directory so the rename itself survives a power cut.
A directory (a model, an adapter) is written whole into a staging directory beside it first.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


@contextmanager
def replaced_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging directory beside `directory`; when the block ends it replaces `directory`.

    Every file written into it is fsynced, the old directory is renamed aside, the staging one takes
    its name, the parent is fsynced, and only then is the old copy removed: a crash leaves the old
    directory or the new one whole (between the two renames the old one survives under
    `.NAME.old-*`). If the block raises, the staging directory is removed and `directory` is untouched.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a directory")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired: Path | None = None
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        retired.rmdir()
        target.rename(retired)
    staging.rename(target)
    fsync_dir(target.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
