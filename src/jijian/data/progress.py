"""Build progress: a Rich bar on a terminal, JSON lines (at most one every few seconds) otherwise."""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

JSON_EVERY_S = 5.0


class BuildProgress:
    """Tracks input bytes consumed; shows them to a person or to a log collector."""

    def __init__(self, total_bytes: int, *, console: Console | None = None, completed: int = 0) -> None:
        self.console = console or Console(stderr=True)
        self.total = total_bytes
        self.done = completed
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_line = 0.0
        self._started = time.perf_counter()

    def __enter__(self) -> BuildProgress:
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]build"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("build", total=self.total, completed=self.done)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def advance(self, nbytes: int) -> None:
        """Count `nbytes` more of input as processed."""
        self.done += nbytes
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
        elif time.perf_counter() - self._last_line >= JSON_EVERY_S:
            self.event({"event": "progress"})

    def event(self, record: dict[str, Any]) -> None:
        """A notable moment (a finished shard, the end): a JSON line off a terminal, a note on one."""
        record = {"time": round(time.time(), 3), "input_bytes_done": self.done, "input_bytes": self.total, **record}
        if self._progress is not None:
            if record.get("event") == "shard":
                self._progress.console.log(f"wrote {record['file']} ({record['tokens']:,} tokens)")
            return
        self._last_line = time.perf_counter()
        self.console.file.write(json.dumps(record) + "\n")
        self.console.file.flush()
