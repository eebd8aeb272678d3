"""The goodput ledger: rank 0 appends what each attempt of a run spent its time on, as JSON lines.

Events: `attempt` (a process start), `resume`, `step` (an optimiser step and its duration),
`checkpoint` (time training was blocked), `rollback`, `end`. `jijian.files.rundir.summarize_goodput`
turns them into wall time, productive time, time lost, and goodput = productive / wall; the report
and the dashboard both read them through it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from jijian.files import drop_torn_tail
from jijian.files.rundir import LEDGER

__all__ = ["LEDGER", "GoodputLedger"]


class GoodputLedger:
    """Appends events to `run_dir/goodput.jsonl` (thread-safe: checkpoint commits report from a worker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        drop_torn_tail(path)
        self._file = path.open("a", encoding="utf-8")

    def record(self, event: str, **fields: Any) -> None:
        """Append one event stamped with the wall-clock time; flushed, so a killed rank loses at most it."""
        line = json.dumps({"time": round(time.time(), 6), "event": event, **fields})
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()

    def record_event(self, fields: dict[str, Any]) -> None:
        """`record` for callers holding a dict whose `event` key names the event."""
        fields = dict(fields)
        self.record(fields.pop("event"), **fields)

    def close(self) -> None:
        """Stop recording."""
        with self._lock:
            self._file.close()
