"""A training run directory, as `jijian train` writes it and as the report and the dashboard read it.

- `metrics.jsonl`: one JSON object per line; a line with `loss` is a step record (`step`, `loss`,
  optionally `lr`, `grad_norm`, `tokens_per_s`, `mfu`, `peak_memory_gb`, `elapsed_s`); a line with
  `val_loss` is an evaluation; a line with `event` (`start`, `resumed`, `rollback`, ...) an event.
- `summary.json`, written when a run finishes.
- `goodput.jsonl`: `{"time", "event", ...}` with events `attempt`, `resume` (`to_step`), `step`
  (`step`, `duration_s`), `checkpoint` (`blocking_s`), `rollback` (`to_step` or `step`), `end`.
- `checkpoints/step_NNNNNN/manifest.json` (`{"files": {name: {"bytes", "crc32"}}}`) and `latest`.

The trainer writes these names and the readers read them from here, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from jijian.files.jsonl import read_json_lines

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LEDGER = "goodput.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "manifest.json"
LATEST = "latest"


def summarize_goodput(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a run's wall time went (seconds, except the counts), goodput, and the goodput curve.

    Productive time is the steps of the final trajectory: a step executed again after a rollback or
    a resume counts once, at its last execution, and the earlier executions are recomputed (lost)
    work. Restart time is from an attempt's last sign of life to the next attempt's first step
    (detection, relaunch, load). `curve` is (seconds since start, goodput so far) after each step.
    An empty ledger gives an empty dict.
    """
    timed = [e for e in events if isinstance(e.get("time"), int | float) and isinstance(e.get("event"), str)]
    if not timed:
        return {}
    start = timed[0]["time"]
    durations: dict[int, float] = {}  # step -> duration of its surviving execution
    productive = executed = blocking = restart_lost = 0.0
    attempts = rollbacks = 0
    curve: list[tuple[float, float]] = []
    for i, e in enumerate(timed):
        kind = e["event"]
        if kind == "attempt":
            attempts += 1
            if attempts > 1:
                steps = (s["time"] - s["duration_s"] for s in timed[i:] if s["event"] == "step")
                restart_lost += next(steps, timed[-1]["time"]) - timed[i - 1]["time"]
        elif kind == "checkpoint":
            blocking += float(e.get("blocking_s", 0.0))
        elif kind == "step" and isinstance(e.get("step"), int):
            duration = float(e.get("duration_s", 0.0))
            executed += duration
            productive += duration - durations.get(e["step"], 0.0)
            durations[e["step"]] = duration
            if e["time"] > start:
                curve.append((e["time"] - start, min(1.0, productive / (e["time"] - start))))
        elif kind in ("rollback", "resume"):
            rollbacks += kind == "rollback"
            back_to = e.get("to_step", e.get("step", 0)) or 0
            for step in [s for s in durations if s > back_to]:
                productive -= durations.pop(step)
    wall = timed[-1]["time"] - start
    return {
        "wall_s": wall,
        "productive_s": productive,
        "checkpoint_blocking_s": blocking,
        "recomputed_s": executed - productive,
        "restart_lost_s": restart_lost,
        "attempts": attempts,
        "rollbacks": rollbacks,
        "goodput": productive / wall if wall > 0 else 0.0,
        "curve": curve,
    }


def read_goodput(run_dir: Path) -> dict[str, Any]:
    """`summarize_goodput` of the run's ledger (empty when it has none)."""
    return summarize_goodput(read_json_lines(run_dir / LEDGER))


def checkpoint_root(run_dir: Path, checkpoint_dir: Path | None = None) -> Path:
    """Where a run's checkpoints are: `[checkpoint] dir` from its deploy.toml (or the given one), else checkpoints/."""
    if checkpoint_dir is not None and checkpoint_dir.is_dir():
        return checkpoint_dir
    config = run_dir / "deploy.toml"
    if config.is_file():
        try:
            configured = tomllib.loads(config.read_text(encoding="utf-8")).get("checkpoint", {}).get("dir")
        except (tomllib.TOMLDecodeError, OSError, AttributeError):
            configured = None
        if isinstance(configured, str) and configured:
            return Path(configured)
    return run_dir / CHECKPOINTS


def checkpoint_step(path: Path) -> int | None:
    """The step of a committed checkpoint directory `step_N`, or None (a `.tmp` one is still being written)."""
    digits = path.name[len(CHECKPOINT_PREFIX) :]
    if path.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit():
        return int(digits)
    return None


def list_checkpoints(root: Path) -> list[dict[str, Any]]:
    """Committed checkpoints, newest first: step, size, whether every manifest file is present at its size."""
    if not root.is_dir():
        return []
    latest_file = root / LATEST
    latest = latest_file.read_text(encoding="utf-8").strip() if latest_file.is_file() else None
    found = []
    for path in root.iterdir():
        step = checkpoint_step(path)
        if step is None or not path.is_dir():
            continue
        status, size = _manifest_status(path)
        found.append(
            {"name": path.name, "step": step, "bytes": size, "status": status, "latest": path.name == latest,
             "modified": path.stat().st_mtime}
        )  # fmt: skip
    return sorted(found, key=lambda c: -c["step"])


def _manifest_status(directory: Path) -> tuple[str, int]:
    """'ok', or why not, judged by file presence and sizes (the full CRC check is the trainer's, on resume)."""
    try:
        files = json.loads((directory / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))["files"]
        entries = [(name, int(meta["bytes"])) for name, meta in files.items()]
    except FileNotFoundError:
        return f"{CHECKPOINT_MANIFEST} is missing", 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{CHECKPOINT_MANIFEST} is unreadable", 0
    total = 0
    for name, size in entries:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing", total
        if path.stat().st_size != size:
            return f"{name} is truncated or overwritten", total
        total += size
    return "ok", total
