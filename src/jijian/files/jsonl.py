"""JSON-lines files: one reader for the files jijian appends to and for the ones users hand it.

A file jijian appends to (metrics, goodput, audit) may end in a line cut short by a kill: that
last line is dropped, never an error. Any other unreadable line is corrupt data, and where the
file came from a user it is an error that names the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class JsonLinesError(ValueError):
    """A line that is not a JSON object, named `file:line`."""


def read_json_lines(path: str | os.PathLike[str], *, strict: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, blank lines skipped.

    The last line is dropped when unreadable and not newline-terminated (a torn append). Any other
    bad line is skipped, or with `strict` raises `JsonLinesError` naming `file:line`. A missing or
    unreadable file is an empty list unless `strict`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict" if strict else "replace")
    except (OSError, UnicodeDecodeError) as e:
        if strict:
            raise JsonLinesError(f"{path}: cannot read: {e}") from e
        return []
    lines = text.split("\n")  # the last item is what follows the last newline: empty for a whole file
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break  # no newline after it: cut short by a kill mid-append
            if strict:
                raise JsonLinesError(f"{path}:{number}: not valid JSON ({e.msg})") from e
            continue
        if not isinstance(record, dict):
            if strict:
                raise JsonLinesError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        records.append(record)
    return records


def iter_json_lines(
    path: str | os.PathLike[str], *, error: type[Exception] = JsonLinesError
) -> Iterator[tuple[str, int, Any]]:
    """(`file:line`, line number, value) of every non-blank line of a file a user gave, streamed.

    A line that is not JSON raises `error` (the caller's own error type) naming `file:line`; what
    the value must look like is the caller's to check, with the `file:line` it is handed.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None
            yield where, number, value


def drop_torn_tail(path: Path) -> None:
    """Cut a JSON-lines file back to its last complete line (a process killed mid-append leaves half a record)."""
    if not path.is_file():
        return
    with path.open("r+b") as f:
        end = f.seek(0, 2)
        pos = end
        while pos > 0:  # backwards in blocks: the file may be large, the torn tail is short
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        else:
            keep = 0
        if keep != end:
            f.truncate(keep)
