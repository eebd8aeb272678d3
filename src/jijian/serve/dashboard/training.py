"""Training runs as the dashboard shows them, read from the files `jijian train` writes.

`serve` may not import `jijian.train` (the layering contract), so this module reads the run
directory's files directly and relies only on these fields:

- `metrics.jsonl`: one JSON object per line; a line with `loss` is a step record with `step`, `loss`,
  and optionally `lr`, `grad_norm`, `tokens_per_s`, `mfu`, `peak_memory_gb`, `elapsed_s`; a line with
  `val_loss` is an evaluation; a line with `event` (`start`, `resumed`, `rollback`,
  `checkpoint_skipped`, ...) is an event, `start` also carrying `layout` and `parameters`.
- `summary.json` (written when a run finishes): any JSON object; `final_loss`, `steps`, `layout` shown.
- `goodput.jsonl`: `{"time", "event", ...}` with events `attempt`, `resume` (`to_step`), `step`
  (`step`, `duration_s`), `checkpoint` (`blocking_s`), `rollback` (`to_step` or `step`), `end`.
- `checkpoints/step_NNNNNN/manifest.json` (`{"files": {name: {"bytes", "crc32"}}}`) and `latest`.

A torn last line (a run killed mid-write) is skipped, never an error.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

MAX_POINTS = 400  # per plotted series: enough for a 560-pixel chart
_CHECKPOINT_PREFIX = "step_"


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; unreadable lines (a torn tail) are skipped."""
    records = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def is_run_dir(path: Path) -> bool:
    """A directory `jijian train` wrote: it has metrics.jsonl or summary.json."""
    return (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()


def find_runs(train_dir: Path | None) -> list[Path]:
    """`train_dir` itself when it is a run, plus the runs directly inside it, newest first."""
    if train_dir is None or not train_dir.is_dir():
        return []
    runs = [train_dir] if is_run_dir(train_dir) else []
    runs += [p for p in train_dir.iterdir() if p.is_dir() and is_run_dir(p)]

    def modified(run: Path) -> float:
        metrics = run / "metrics.jsonl"
        return (metrics if metrics.is_file() else run / "summary.json").stat().st_mtime

    return sorted(runs, key=modified, reverse=True)


def downsample(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `limit` evenly spaced points, always keeping the last."""
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit - 1)]
    return [*picked, points[-1]]


def _series(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    points = [(float(r["step"]), float(r[key])) for r in records if isinstance(r.get(key), int | float) and "step" in r]
    return downsample(points)


def goodput(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Goodput over the run's wall time (productive step time / wall time so far) and its final figures.

    A step executed again after a rollback or resume counts once, at its last execution; earlier
    executions of steps past the point the run went back to were lost work.
    """
    timed = [e for e in events if isinstance(e.get("time"), int | float) and isinstance(e.get("event"), str)]
    if not timed:
        return None
    start = timed[0]["time"]
    durations: dict[int, float] = {}
    productive = executed = blocking = 0.0
    attempts = rollbacks = 0
    curve: list[tuple[float, float]] = []
    for e in timed:
        kind = e["event"]
        if kind == "attempt":
            attempts += 1
        elif kind == "checkpoint":
            blocking += float(e.get("blocking_s", 0.0))
        elif kind == "step" and isinstance(e.get("step"), int):
            duration = float(e.get("duration_s", 0.0))
            executed += duration
            productive += duration - durations.get(e["step"], 0.0)
            durations[e["step"]] = duration
            elapsed = e["time"] - start
            if elapsed > 0:
                curve.append((elapsed, min(1.0, productive / elapsed)))
        elif kind in ("rollback", "resume"):
            rollbacks += kind == "rollback"
            back_to = e.get("to_step", e.get("step", 0)) or 0
            for step in [s for s in durations if s > back_to]:
                productive -= durations.pop(step)
    wall = timed[-1]["time"] - start
    return {
        "wall_s": wall,
        "productive_s": productive,
        "recomputed_s": executed - productive,
        "checkpoint_blocking_s": blocking,
        "attempts": attempts,
        "rollbacks": rollbacks,
        "goodput": productive / wall if wall > 0 else None,
        "curve": downsample(curve),
    }


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
    return run_dir / "checkpoints"


def checkpoints(root: Path) -> list[dict[str, Any]]:
    """Committed checkpoints, newest first: step, size, whether every manifest file is present at its size."""
    if not root.is_dir():
        return []
    latest_file = root / "latest"
    latest = latest_file.read_text(encoding="utf-8").strip() if latest_file.is_file() else None
    found = []
    for path in root.iterdir():
        digits = path.name[len(_CHECKPOINT_PREFIX) :]
        if not (path.is_dir() and path.name.startswith(_CHECKPOINT_PREFIX) and digits.isdigit()):
            continue  # `.tmp` directories are checkpoints still being written, or left by a crash
        status, size = _manifest_status(path)
        found.append(
            {"name": path.name, "step": int(digits), "bytes": size, "status": status, "latest": path.name == latest,
             "modified": path.stat().st_mtime}
        )  # fmt: skip
    return sorted(found, key=lambda c: -c["step"])


def _manifest_status(directory: Path) -> tuple[str, int]:
    """'ok', or why not, judged by file presence and sizes (the full CRC check is the trainer's, on resume)."""
    try:
        files = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))["files"]
        entries = [(name, int(meta["bytes"])) for name, meta in files.items()]
    except FileNotFoundError:
        return "manifest.json is missing", 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "manifest.json is unreadable", 0
    total = 0
    for name, size in entries:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing", total
        if path.stat().st_size != size:
            return f"{name} is truncated or overwritten", total
        total += size
    return "ok", total


def read_run(run_dir: Path, checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """One run's summary, plotted series, events, goodput and checkpoints."""
    records = read_json_lines(run_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "step" in r]
    start = next((r for r in records if r.get("event") == "start"), {})
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            summary = None
    last = steps[-1] if steps else {}
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "finished": summary is not None,
        "summary": summary,
        "layout": (summary or {}).get("layout") or start.get("layout"),
        "parameters": start.get("parameters"),
        "device": start.get("device"),
        "last_step": last.get("step"),
        "last_loss": last.get("loss"),
        "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"),
        "peak_memory_gb": last.get("peak_memory_gb"),
        "series": {
            "loss": _series(steps, "loss"),
            "val_loss": _series(records, "val_loss"),
            "tokens_per_s": _series(steps, "tokens_per_s"),
            "mfu": _series(steps, "mfu"),
        },
        "events": [r for r in records if r.get("event") not in (None, "start")][-50:],
        "goodput": goodput(read_json_lines(run_dir / "goodput.jsonl")),
        "checkpoints": checkpoints(checkpoint_root(run_dir, checkpoint_dir)),
    }
