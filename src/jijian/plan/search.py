"""Layout search: enumerate (dp, fsdp, tp, pp, micro-batch, recompute, schedule), keep what fits, rank by speed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

from jijian.plan.errors import PlanError
from jijian.plan.estimate import (
    Estimate,
    Layout,
    Workload,
    estimate,
    jijian_cannot_run,
    zero_with_fsdp_message,
)
from jijian.plan.hardware import Cluster, accelerator_names, make_cluster
from jijian.plan.memory import RECOMPUTE_POLICIES
from jijian.spec.layout import pipeline_chunks, tensor_parallel_problem
from jijian.spec.layout import pipeline_problem as spec_pipeline_problem
from jijian.spec.shape import ModelShape

MAX_MICRO_BATCH = 16
MAX_GPUS = 1 << 17


@dataclass
class SearchResult:
    """The best layouts (fastest first) and how many were tried and fit."""

    best: list[Estimate]
    evaluated: int
    feasible: int


def divisors(n: int) -> list[int]:
    """Every positive divisor of n, ascending."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def tp_problem(shape: ModelShape, tp: int, seq: int) -> str | None:
    """Why `jijian train` could not split the model `tp` ways (None when it can); plans assume sequence parallelism."""
    return tensor_parallel_problem(tp, heads=shape.heads, kv_heads=shape.kv_heads, ffn=shape.ffn, seq_len=seq)


def pipeline_problem(shape: ModelShape, pp: int, schedule: str, microbatches: int) -> str | None:
    """Why `jijian train` could not run this pipeline, or the estimate could not model it (None when both can)."""
    problem = spec_pipeline_problem(
        pp, schedule=schedule, microbatches=microbatches, layers=shape.layers, tied_embeddings=shape.tied_embeddings
    )
    if problem is None and shape.layers % (pp * pipeline_chunks(pp, schedule)) and schedule == "interleaved_1f1b":
        # The trainer splits layers unevenly; the estimate's interleaved schedule assumes equal chunks.
        return f"the planner models interleaved_1f1b only with model.n_layers ({shape.layers}) a multiple of 2 x pp"
    return problem


def candidate_layouts(work: Workload, gpus: int, devices_per_node: int, recompute: str | None) -> Iterator[Layout]:
    """Every layout of `gpus` devices worth estimating for `work` that `jijian train` can run."""
    shape = work.shape
    policies = (recompute,) if recompute else RECOMPUTE_POLICIES
    for tp in divisors(gpus):
        if tp > devices_per_node or tp_problem(shape, tp, work.seq):  # tensor parallelism stays inside a node
            continue
        for pp in divisors(gpus // tp):
            if pp > shape.layers:
                break
            data = gpus // (tp * pp)
            if work.global_batch % data:
                continue
            per_rank = work.global_batch // data
            for fsdp in divisors(data):
                # Replicated data parallelism may shard its optimizer states (ZeRO-1) and gradients (ZeRO-2).
                zero_stages = (None, 1, 2) if fsdp == 1 and data > 1 else (None,)
                for micro_batch in (m for m in divisors(per_rank) if m <= MAX_MICRO_BATCH):
                    for schedule in ("1f1b", "interleaved_1f1b") if pp > 1 else ("1f1b",):
                        if pipeline_problem(shape, pp, schedule, per_rank // micro_batch):
                            continue
                        for policy, zero in itertools.product(policies, zero_stages):
                            yield Layout(data // fsdp, fsdp, tp, pp, micro_batch, policy, schedule, zero_stage=zero)


def search(
    work: Workload,
    cluster: Cluster,
    gpus: int,
    recompute: str | None = None,
    top: int = 5,
    jijian_only: bool = False,
) -> SearchResult:
    """The `top` fastest layouts of `gpus` devices that fit in memory; PlanError with alternatives if none does.

    `jijian_only` keeps the layouts `jijian train` can run (every layout but ZeRO-1).
    """
    check_workload(work, gpus)
    results: list[Estimate] = []
    tightest: Estimate | None = None
    evaluated = 0
    for layout in candidate_layouts(work, gpus, cluster.devices_per_node, recompute):
        if jijian_only and jijian_cannot_run(layout):
            continue
        evaluated += 1
        result = estimate(work, layout, cluster)
        if result.fits:
            results.append(result)
        elif tightest is None or result.memory_per_device_gb < tightest.memory_per_device_gb:
            tightest = result
    if evaluated == 0:
        raise PlanError(
            f"no layout of {gpus} devices divides the global batch of {work.global_batch} sequences; "
            f"nearest: --global-batch {_round_up(work.global_batch, gpus)} or --gpus {_largest_divisor(work, gpus)}"
        )
    if not results:
        raise PlanError(_no_fit_message(work, cluster, gpus, recompute, tightest))
    # Fastest first; among equally fast layouts the one with more memory headroom.
    results.sort(key=lambda e: (-e.tokens_per_s, e.memory_per_device_gb))
    return SearchResult(results[:top], evaluated, len(results))


def check_workload(work: Workload, gpus: int) -> None:
    """Reject requests that have no answer whatever the layout."""
    if work.tokens <= 0:
        suggested = 20 * work.shape.params
        raise PlanError(
            f"tokens must be positive (got {work.tokens:g}); e.g. --tokens {format_count(suggested)} "
            "(20 tokens per parameter, the Chinchilla-optimal amount)"
        )
    if gpus < 1:
        raise PlanError(f"gpus must be at least 1 (got {gpus})")
    if work.seq < 1 or work.global_batch < 1:
        raise PlanError("seq and global batch must be at least 1")


def fits_anywhere(work: Workload, cluster: Cluster, gpus: int, recompute: str | None) -> bool:
    """Whether any layout of `gpus` devices fits."""
    for layout in candidate_layouts(work, gpus, cluster.devices_per_node, recompute):
        if estimate(work, layout, cluster).fits:
            return True
    return False


def _no_fit_message(
    work: Workload, cluster: Cluster, gpus: int, recompute: str | None, tightest: Estimate | None
) -> str:
    device = cluster.accelerator
    usable = _usable_gb(cluster)
    need = f"{tightest.memory_per_device_gb:.1f} GB" if tightest else "more memory"
    where = f" ({tightest.layout.describe()})" if tightest else ""
    message = (
        f"the model ({format_count(work.shape.params)} parameters) fits no layout on {gpus} x {device.name}: "
        f"the leanest layout{where} needs {need} per device, {device.name} has {usable:.0f} GB usable"
    )
    alternatives = []
    count = gpus * 2
    while count <= MAX_GPUS:
        if fits_anywhere(_scaled(work, count), cluster, count, recompute):
            alternatives.append(f"--gpus {count}")
            break
        count *= 2
    for name in accelerator_names():
        other = make_cluster(name, devices_per_node=cluster.devices_per_node, calib=cluster.calibration)
        if other.accelerator.memory_gb > device.memory_gb and fits_anywhere(work, other, gpus, recompute):
            alternatives.append(f"--gpu {name}")
            break
    if recompute and recompute != "full" and fits_anywhere(work, cluster, gpus, "full"):
        alternatives.append("--recompute full")
    if alternatives:
        message += "; nearest feasible: " + " or ".join(alternatives)
    return message


def _scaled(work: Workload, gpus: int) -> Workload:
    # More devices need at least one sequence each; keep the batch if it already divides.
    return work if work.global_batch % gpus == 0 else replace(work, global_batch=_round_up(work.global_batch, gpus))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _largest_divisor(work: Workload, gpus: int) -> int:
    return max(d for d in divisors(work.global_batch) if d <= gpus)


def format_count(value: float) -> str:
    """1.2e12 -> '1.2T', 7e10 -> '70B', 3e6 -> '3M'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:g}"


def parse_count(text: str) -> float:
    """'2T' -> 2e12, '300B' -> 3e11, '1.5e9' -> 1.5e9."""
    scales = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    cleaned = text.strip().upper()
    try:
        if cleaned and cleaned[-1] in scales:
            return float(cleaned[:-1]) * scales[cleaned[-1]]
        return float(cleaned)
    except ValueError:
        raise PlanError(f"cannot read {text!r} as a count; write e.g. 2T, 300B, 1.5e9") from None


LAYOUT_KEYS = ("dp", "fsdp", "tp", "pp", "zero", "mb")


def parse_layout(text: str) -> dict[str, int]:
    """'dp=64,zero=1,tp=8' -> {'dp': 64, 'zero': 1, 'tp': 8}; keys dp, fsdp, tp, pp, zero (1 or 2) and mb."""
    degrees: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in LAYOUT_KEYS:
            raise PlanError(
                f"--layout: cannot read {part!r}; write e.g. 'fsdp=32,tp=8' with keys {', '.join(LAYOUT_KEYS)}"
            )
        try:
            degrees[key] = int(value)
        except ValueError:
            raise PlanError(f"--layout: {key} must be a whole number, got {value.strip()!r}") from None
        if degrees[key] < 1:
            raise PlanError(f"--layout: {key} must be at least 1, got {degrees[key]}")
    if not degrees:
        raise PlanError("--layout is empty; write e.g. 'fsdp=32,tp=8'")
    check_zero(degrees)
    return degrees


def check_zero(degrees: dict[str, int]) -> None:
    """Reject a ZeRO stage the other degrees cannot carry, naming the nearest layout that can."""
    zero = degrees.get("zero")
    if zero is None:
        return
    dp, fsdp = degrees.get("dp", 1), degrees.get("fsdp", 1)
    rest = "".join(f",{k}={degrees[k]}" for k in ("tp", "pp") if k in degrees)
    if zero >= 3:
        raise PlanError(
            f"--layout: zero={zero} is fully-sharded data parallelism; "
            f"nearest: 'fsdp={dp * fsdp}{rest}' (zero is 1 or 2)"
        )
    if fsdp > 1:
        raise PlanError(f"--layout: {zero_with_fsdp_message(zero, dp, fsdp, rest)}")
    if dp == 1:
        raise PlanError(
            f"--layout: zero={zero} shards over the dp ranks and the layout has none; e.g. 'dp=8,zero={zero}{rest}'"
        )


def layout_gpus(degrees: dict[str, int]) -> int:
    """Devices a parsed layout uses."""
    return degrees.get("dp", 1) * degrees.get("fsdp", 1) * degrees.get("tp", 1) * degrees.get("pp", 1)


def evaluate_layout(work: Workload, cluster: Cluster, degrees: dict[str, int], recompute: str | None) -> Estimate:
    """The fastest fitting variant (micro-batch, recompute, schedule) of the given degrees."""
    gpus = layout_gpus(degrees)
    check_workload(work, gpus)
    check_zero(degrees)
    dp, fsdp, tp, pp = (degrees.get(k, 1) for k in ("dp", "fsdp", "tp", "pp"))
    zero = degrees.get("zero")
    shape = work.shape
    problem = tp_problem(shape, tp, work.seq)
    if problem:
        raise PlanError(f"--layout: {problem}")
    data = dp * fsdp
    if work.global_batch % data:
        raise PlanError(
            f"--layout: the global batch of {work.global_batch} sequences does not split over {data} data-parallel "
            f"ranks; nearest: --global-batch {_round_up(work.global_batch, data)}"
        )
    per_rank = work.global_batch // data
    micro_batches = [degrees["mb"]] if "mb" in degrees else [m for m in divisors(per_rank) if m <= MAX_MICRO_BATCH]
    if per_rank % micro_batches[0]:
        raise PlanError(f"--layout: mb={micro_batches[0]} does not divide the {per_rank} sequences per data rank")
    variants = [
        (mb, schedule)
        for mb in micro_batches
        for schedule in (("1f1b", "interleaved_1f1b") if pp > 1 else ("1f1b",))
        if not pipeline_problem(shape, pp, schedule, per_rank // mb)
    ]
    if not variants:
        raise PlanError(f"--layout: {pipeline_problem(shape, pp, '1f1b', per_rank // micro_batches[0])}")
    policies = (recompute,) if recompute else RECOMPUTE_POLICIES
    tried = [
        estimate(work, Layout(dp, fsdp, tp, pp, mb, policy, schedule, zero_stage=zero), cluster)
        for mb, schedule in variants
        for policy in policies
    ]
    fitting = [e for e in tried if e.fits]
    if fitting:
        return max(fitting, key=lambda e: e.tokens_per_s)
    leanest = min(tried, key=lambda e: e.memory_per_device_gb)
    device = cluster.accelerator
    usable = _usable_gb(cluster)
    message = (
        f"layout {leanest.layout.describe()} needs {leanest.memory_per_device_gb:.1f} GB per device; "
        f"{device.name} has {usable:.0f} GB usable"
    )
    try:
        best = search(work, cluster, gpus, recompute, top=1).best[0]
    except PlanError as exc:
        raise PlanError(f"{message}; and {exc}") from None
    raise PlanError(f"{message}; nearest feasible layout of {gpus} devices: {best.layout.describe()}")


def _usable_gb(cluster: Cluster) -> float:
    """Live bytes a device can hold (GB): its usable fraction, less the allocator's fragmentation."""
    calib = cluster.calibration
    return cluster.accelerator.memory_gb * calib.usable_memory_fraction / (1.0 + calib.fragmentation_fraction)
