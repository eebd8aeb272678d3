"""Training metrics: JSON lines on disk always; a Rich progress bar on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jijian.files import drop_torn_tail


class MetricsLogger:
    """Appends one JSON object per record to `path`, and shows progress to a person or a log collector."""

    def __init__(
        self,
        path: Path | None,
        total_steps: int,
        *,
        console: Console | None = None,
        stream: TextIO | None = None,
        description: str = "train",
        append: bool = False,
    ) -> None:
        self.path = path
        self.total_steps = total_steps
        self.console = console or Console(stderr=True)
        self.stream = stream if stream is not None else sys.stdout
        self.description = description
        self.append = append
        self._file: TextIO | None = None
        self._progress: Progress | None = None
        self._task: Any = None
        self._shown: dict[str, Any] = {}

    def __enter__(self) -> MetricsLogger:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.append:
                drop_torn_tail(self.path)
            self._file = self.path.open("a" if self.append else "w", encoding="utf-8")
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total_steps, status="")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._file is not None:
            self._file.close()

    def log(self, record: dict[str, Any]) -> None:
        """Record one set of metrics (must include `step`)."""
        record = {"time": round(time.time(), 3), **record}
        line = json.dumps(record)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if self._progress is not None:
            # The bar shows a few headline numbers; the full record is in the JSON-lines file.
            self._shown.update({label: record[key] for key, label in _SHOWN.items() if key in record})
            status = "  ".join(f"{label} {_fmt(value)}" for label, value in self._shown.items())
            self._progress.update(self._task, completed=record.get("step", 0), status=status)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def advance(self, step: int) -> None:
        """Move the progress bar without writing a record."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)


_SHOWN = {
    "loss": "loss",
    "val_loss": "val",
    "lr": "lr",
    "grad_norm": "gnorm",
    "tokens_per_s": "tok/s",
    "mfu": "mfu",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.3f}"
    return str(value)
