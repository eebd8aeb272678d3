"""Training runs as the dashboard shows them, read from the files `jijian train` writes.

`serve` may not import `jijian.train` (the layering contract): the run directory's layout, its
JSON-lines reader (a torn last line skipped) and the goodput summary come from `jijian.files`,
which the trainer writes through too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jijian.files import read_json_lines
from jijian.files.rundir import (
    LEDGER,
    METRICS,
    SUMMARY,
    checkpoint_root,
    list_checkpoints,
    summarize_goodput,
)

MAX_POINTS = 400  # per plotted series: enough for a 560-pixel chart


def is_run_dir(path: Path) -> bool:
    """A directory `jijian train` wrote: it has metrics.jsonl or summary.json."""
    return (path / METRICS).is_file() or (path / SUMMARY).is_file()


def find_runs(train_dir: Path | None) -> list[Path]:
    """`train_dir` itself when it is a run, plus the runs directly inside it, newest first."""
    if train_dir is None or not train_dir.is_dir():
        return []
    runs = [train_dir] if is_run_dir(train_dir) else []
    runs += [p for p in train_dir.iterdir() if p.is_dir() and is_run_dir(p)]

    def modified(run: Path) -> float:
        metrics = run / METRICS
        return (metrics if metrics.is_file() else run / SUMMARY).stat().st_mtime

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
    """The run's goodput summary with its curve thinned for plotting; None before the first event."""
    summary = summarize_goodput(events)
    if not summary:
        return None
    return {**summary, "goodput": summary["goodput"] if summary["wall_s"] > 0 else None,
            "curve": downsample(summary["curve"])}  # fmt: skip


def read_run(run_dir: Path, checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """One run's summary, plotted series, events, goodput and checkpoints."""
    records = read_json_lines(run_dir / METRICS)
    steps = [r for r in records if "loss" in r and "step" in r]
    start = next((r for r in records if r.get("event") == "start"), {})
    summary = None
    if (run_dir / SUMMARY).is_file():
        try:
            summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
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
        "goodput": goodput(read_json_lines(run_dir / LEDGER)),
        "checkpoints": list_checkpoints(checkpoint_root(run_dir, checkpoint_dir)),
    }
