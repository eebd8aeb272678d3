"""`jijian train report`: PNG plots and a summary of a run, from its metrics.jsonl alone."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jijian.config import UserInputError
from jijian.files import JsonLinesError, read_json_lines
from jijian.files.rundir import LEDGER, METRICS, read_goodput


class ReportError(UserInputError):
    """The run directory has no readable metrics."""


@dataclass
class RunReport:
    """Summary rows (label → formatted value) and the plots written."""

    summary: dict[str, str] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file; a malformed line is an error naming it (a torn last line is not)."""
    if not path.is_file():
        raise ReportError(f"{path}: no such file (is this a run directory?)")
    try:
        return read_json_lines(path, strict=True)
    except JsonLinesError as exc:
        raise ReportError(str(exc)) from None


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _plot(path: Path, title: str, ylabel: str, lines: dict[str, tuple[list[int], list[float]]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, (xs, ys) in lines.items():
        if xs:
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 50 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_report(run_dir: Path, out_dir: Path) -> RunReport:
    """Write loss.png, throughput.png and mfu.png into `out_dir` and summarise the run."""
    records = read_metrics(run_dir / METRICS)
    start = next((r for r in records if r.get("event") == "start"), {})
    steps, losses = _series(records, "loss")
    if not steps:
        raise ReportError(f"{run_dir / METRICS}: no training steps recorded yet")
    report = RunReport()
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plots.append(
        _plot(
            out_dir / "loss.png",
            "loss",
            "cross-entropy",
            {"train": (steps, losses), "validation": _series(records, "val_loss")},
        )
    )
    tps = _series(records, "tokens_per_s")
    report.plots.append(_plot(out_dir / "throughput.png", "throughput", "tokens/s (all devices)", {"tokens/s": tps}))
    mfu_steps, mfu = _series(records, "mfu")
    if mfu:
        report.plots.append(_plot(out_dir / "mfu.png", "model FLOPs utilisation", "MFU", {"MFU": (mfu_steps, mfu)}))
    # The first logged step includes start-up and compilation: leave it out of the averages.
    steady_tps = tps[1][1:] or tps[1]
    steady_mfu = mfu[1:] or mfu
    val = _series(records, "val_loss")[1]
    s = report.summary
    s["layout"] = str(start.get("layout", "single process"))
    s["device"] = str(start.get("device", "?"))
    s["parameters"] = f"{start['parameters']:,}" if "parameters" in start else "?"
    s["steps"] = str(steps[-1])
    s["final loss"] = f"{losses[-1]:.4f}"
    if val:
        s["validation loss"] = f"{val[-1]:.4f}"
    if steady_tps:
        s["tokens/s (median)"] = f"{statistics.median(steady_tps):,.0f}"
    if steady_mfu:
        peak = f"{start.get('peak_tflops_per_device', 0):.2f} TFLOP/s ({start.get('peak_source', '?')})"
        s["MFU (median)"] = f"{100 * statistics.median(steady_mfu):.1f}% of {peak}"
    _, memory = _series(records, "peak_memory_gb")
    if memory:
        s["peak memory per rank"] = f"{max(memory):.2f} GiB"
    _, waits = _series(records, "data_wait_s")
    if waits:
        s["data wait (total)"] = f"{sum(waits):.2f} s"
    last = max((r for r in records if "elapsed_s" in r), key=lambda r: r["elapsed_s"], default=None)
    if last:
        s["wall time"] = f"{last['elapsed_s']:.1f} s"
    if (run_dir / LEDGER).is_file() and (ledger := read_goodput(run_dir)):
        s.update(goodput_rows(ledger))
    return report


def goodput_rows(ledger: dict[str, Any]) -> dict[str, str]:
    """The goodput ledger's summary as report rows."""
    wall = float(ledger["wall_s"]) or 1.0

    def share(key: str) -> str:
        return f"{ledger[key]:.1f} s ({100 * ledger[key] / wall:.1f}%)"

    return {
        "goodput": f"{100 * ledger['goodput']:.1f}% (productive / wall, all attempts)",
        "wall time (all attempts)": f"{ledger['wall_s']:.1f} s",
        "productive steps": share("productive_s"),
        "blocked on checkpoints": share("checkpoint_blocking_s"),
        "recomputed steps": share("recomputed_s"),
        "lost to restarts": share("restart_lost_s"),
        "attempts / rollbacks": f"{ledger['attempts']} / {ledger['rollbacks']}",
    }
