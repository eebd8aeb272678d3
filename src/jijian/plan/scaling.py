"""Scaling report: the best layout's throughput from 8 devices up to N, as efficiency against linear."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jijian.plan.errors import PlanError
from jijian.plan.estimate import Estimate, Workload
from jijian.plan.hardware import Cluster
from jijian.plan.search import search


@dataclass
class ScalingPoint:
    """The best layout at one device count and its efficiency relative to the first point."""

    gpus: int
    best: Estimate
    efficiency: float


def device_counts(start: int, stop: int) -> list[int]:
    """start, 2*start, 4*start, ... up to stop (stop included even when not a doubling)."""
    counts = []
    count = start
    while count < stop:
        counts.append(count)
        count *= 2
    return [*counts, stop]


def scaling_report(work: Workload, cluster: Cluster, max_gpus: int, start: int = 8) -> list[ScalingPoint]:
    """Best layout at each device count; efficiency = throughput / (first throughput x devices / first devices)."""
    if max_gpus < start:
        raise PlanError(f"--gpus must be at least {start} for a scaling report (got {max_gpus})")
    points: list[ScalingPoint] = []
    skipped: list[str] = []
    for gpus in device_counts(start, max_gpus):
        try:
            best = search(work, cluster, gpus, top=1).best[0]
        except PlanError as exc:
            if points:  # a larger count failing after a smaller one fitted is a real limit: report it
                raise
            skipped.append(f"{gpus}: {exc}")
            continue
        base = points[0] if points else None
        ideal = base.best.tokens_per_s * gpus / base.gpus if base else best.tokens_per_s
        points.append(ScalingPoint(gpus, best, best.tokens_per_s / ideal))
    if not points:
        raise PlanError("no device count up to --gpus fits the model; " + skipped[-1])
    return points


def plot_scaling(points: list[ScalingPoint], path: Path, title: str) -> Path:
    """Write a PNG of scaling efficiency and MFU against device count."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    gpus = [p.gpus for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(gpus, [100 * p.efficiency for p in points], marker="o", label="scaling efficiency")
    ax.plot(gpus, [100 * p.best.mfu for p in points], marker="s", label="MFU")
    ax.set_xscale("log", base=2)
    ax.set_xticks(gpus, [str(g) for g in gpus])
    ax.set_ylim(0, 105)
    ax.set_xlabel("devices")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
