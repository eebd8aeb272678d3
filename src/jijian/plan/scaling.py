"""Scaling report: the best layout's throughput from 8 devices up to N, as efficiency against linear scaling."""

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
    """Best layout at each device count; efficiency = tokens/s per device over the sweep's best per device.

    The reference is the best per-device rate rather than the smallest count's, because at small counts
    a large model is memory-starved (forced recomputation, deep pipelines) and every later point would
    look super-linear against it.
    """
    if max_gpus < start:
        raise PlanError(f"--gpus must be at least {start} for a scaling report (got {max_gpus})")
    found: list[tuple[int, Estimate]] = []
    skipped: list[str] = []
    for gpus in device_counts(start, max_gpus):
        try:
            found.append((gpus, search(work, cluster, gpus, top=1).best[0]))
        except PlanError as exc:
            if found:  # a larger count failing after a smaller one fitted is a real limit: report it
                raise
            skipped.append(f"{gpus}: {exc}")
    if not found:
        raise PlanError("no device count up to --gpus fits the model; " + skipped[-1])
    best_rate = max(best.tokens_per_s / gpus for gpus, best in found)
    return [ScalingPoint(gpus, best, best.tokens_per_s / gpus / best_rate) for gpus, best in found]


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
