"""The goodput ledger: rank 0 appends what each attempt of a run spent its time on, as JSON lines.

Events: `attempt` (a process start), `resume`, `step` (an optimiser step and its duration),
`checkpoint` (time training was blocked), `rollback`, `end`. `summarize` turns them into wall time,
productive time (steps of the final trajectory), time blocked on checkpoints, time lost to restarts
and to recomputed steps, and goodput = productive / wall.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from jijian.train.metrics import drop_torn_tail

LEDGER = "goodput.jsonl"


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


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The ledger's events; a last line cut short by a kill is ignored."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def summarize(events: list[dict[str, Any]]) -> dict[str, float | int]:
    """Where the run's wall time went; every figure in seconds except the counts and goodput."""
    if not events:
        return {}
    attempts = [i for i, e in enumerate(events) if e["event"] == "attempt"]
    wall = events[-1]["time"] - events[0]["time"]
    final_step: dict[int, float] = {}  # step -> duration of its last (surviving) execution
    executed = 0.0
    for e in events:
        if e["event"] == "step":
            executed += e["duration_s"]
            final_step[e["step"]] = e["duration_s"]
        elif e["event"] in ("rollback", "resume"):
            # Steps after the point we went back to will run again: their earlier runs were lost.
            back_to = e.get("to_step", e.get("step", 0))
            for step in [s for s in final_step if s > back_to]:
                del final_step[step]
    productive = sum(final_step.values())
    restart_lost = 0.0
    for b in attempts[1:]:
        # From the previous attempt's last sign of life to this attempt's first step: detection, relaunch, load.
        first_step = next((e["time"] - e["duration_s"] for e in events[b:] if e["event"] == "step"), events[-1]["time"])
        restart_lost += first_step - events[b - 1]["time"]
    return {
        "wall_s": wall,
        "productive_s": productive,
        "checkpoint_blocking_s": sum(e["blocking_s"] for e in events if e["event"] == "checkpoint"),
        "recomputed_s": executed - productive,
        "restart_lost_s": restart_lost,
        "attempts": len(attempts),
        "rollbacks": sum(e["event"] == "rollback" for e in events),
        "goodput": productive / wall if wall > 0 else 0.0,
    }
