"""How well the planner predicts published training runs it was not fitted on, and how fast it searches.

Each run of benchmarks/data/published_runs.toml (model shape, device, device count, parallel layout,
micro-batch, recomputation, and the throughput or MFU its authors reported, with the source cited there)
is predicted with the planner's `estimate()`: model FLOPs utilisation (MFU: 6N + attention FLOPs per
token, the PaLM definition, over dense bf16 peak). Reported throughputs are turned into MFU under the
planner's own FLOP count, so both sides use one definition: Megatron-LM "TFLOP/s per GPU" (96*B*s*l*h^2*
(1 + s/6h + V/16lh) per iteration, recomputation included) back into tokens per second; iteration times
into tokens per second; a reported MFU as it is.

Honest accuracy: the step-time model's three fitted constants (hardware.toml [calibration.gpu]) are
refitted without any run of the source being predicted (leave-one-source-out cross-validation), so no
source is scored by constants it helped to fit. The median relative MFU error over all runs under that
cross-validation is the headline; the in-sample error (constants fitted on everything) is printed too.
The 10th and 90th percentiles of log(observed / predicted) under cross-validation are the planner's
uncertainty band (`mfu_error_low` / `mfu_error_high` in the catalogue).

Fits accuracy: every listed run really ran, so each must be judged to fit in memory under the catalogue's
memory assumptions (usable fraction, fragmentation, buffers); the benchmark counts those judged not to fit.

    .venv/bin/python benchmarks/plan_accuracy.py --quick   # catalogue constants, fits, search timing (~10 s)
    .venv/bin/python benchmarks/plan_accuracy.py           # + leave-one-source-out refits (a few minutes)
    .venv/bin/python benchmarks/plan_accuracy.py --fit     # also refit on all runs and print the constants

Last lines: RESULT plan_mfu_loso_median_relative_error_pct (full run), plan_runs_judged_to_fit_pct,
plan_published_runs / plan_published_sources (the size of the set), plan_search_70b_1024gpus_s.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jijian.config import ModelConfig
from jijian.plan.estimate import Estimate, Layout, Workload, estimate
from jijian.plan.hardware import Calibration, Cluster, calibration, make_cluster
from jijian.plan.search import parse_layout, search
from jijian.spec.shape import ModelShape, training_flops_per_token

RUNS_FILE = Path(__file__).parent / "data" / "published_runs.toml"
VOCAB_MEGATRON = 51200
VOCAB_MPT = 50368


def model_shape(spec: dict[str, Any]) -> ModelShape:
    """A run's model: a jijian preset, or a GPT / MPT / Llama-style shape."""
    if "preset" in spec:
        return ModelShape.from_config(ModelConfig(preset=spec["preset"]))
    layers, hidden, heads = spec["layers"], spec["hidden"], spec["heads"]
    style = spec["style"]
    if style == "llama":
        return ModelShape(
            layers, hidden, heads, spec.get("kv_heads", heads), hidden // heads, spec["ffn"], spec["vocab"]
        )
    gpt = style == "gpt"
    return ModelShape(
        layers, hidden, heads, heads, hidden // heads, 4 * hidden,
        spec.get("vocab", VOCAB_MEGATRON if gpt else VOCAB_MPT),
        gated=False, tied_embeddings=True, dropout=gpt, flash_attention=not gpt,
    )  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One published training run and what its authors measured."""

    name: str
    source: str
    shape: ModelShape
    device: str
    seq: int
    global_batch: int
    layout: Layout
    measured: dict[str, float]
    device_changes: tuple[tuple[str, float], ...] = ()

    def observed_mfu(self) -> float:
        """The published figure as MFU under the planner's FLOP count."""
        if "reported_mfu" in self.measured:
            return self.measured["reported_mfu"]
        gpus = self.layout.gpus
        if "tokens_per_s_per_gpu" in self.measured:
            tokens = self.measured["tokens_per_s_per_gpu"]
        elif "iteration_s" in self.measured:
            tokens = self.global_batch * self.seq / self.measured["iteration_s"] / gpus
        else:
            s, h, layers, vocab = self.seq, self.shape.hidden, self.shape.layers, self.shape.vocab
            megatron_per_token = 96 * layers * h * h * (1 + s / (6 * h) + vocab / (16 * layers * h))
            tokens = self.measured["megatron_tflops"] * 1e12 / megatron_per_token
        peak = make_cluster(self.device).accelerator.peak_flops
        return tokens * training_flops_per_token(self.shape, self.seq) / peak


MEASURES = ("reported_mfu", "tokens_per_s_per_gpu", "iteration_s", "megatron_tflops")


def load_runs(path: Path = RUNS_FILE) -> tuple[list[Run], dict[str, dict]]:
    """The runs and their cited sources; a run naming an unknown source or no measurement is an error."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    sources = data["sources"]
    runs = []
    for i, entry in enumerate(data["run"]):
        where = f"{path.name} run {i + 1} ({entry.get('name', '?')})"
        if entry["source"] not in sources:
            raise SystemExit(f"{where}: source {entry['source']!r} is not under [sources]")
        measured = {k: float(entry[k]) for k in MEASURES if k in entry}
        if len(measured) != 1:
            raise SystemExit(f"{where}: give exactly one of {', '.join(MEASURES)}")
        degrees = parse_layout(entry["layout"])
        layout = Layout(
            dp=degrees.get("dp", 1),
            fsdp=degrees.get("fsdp", 1),
            tp=degrees.get("tp", 1),
            pp=degrees.get("pp", 1),
            micro_batch=entry.get("micro_batch", 1),
            recompute=entry.get("recompute", "none"),
            schedule=entry.get("schedule", "1f1b"),
            chunks=entry.get("chunks", 2),
            sequence_parallel=entry.get("sequence_parallel", True),
            zero_stage=degrees.get("zero"),
            grad_sync=entry.get("grad_sync", "step"),
        )
        runs.append(
            Run(
                name=entry["name"],
                source=entry["source"],
                shape=model_shape(entry["model"]),
                device=entry["device"],
                seq=entry["seq"],
                global_batch=entry["global_batch"],
                layout=layout,
                measured=measured,
                device_changes=tuple(entry.get("device_changes", {}).items()),
            )
        )
    return runs, sources


def cluster_for(run: Run, calib: Calibration) -> Cluster:
    cluster = make_cluster(run.device, calib=calib)
    if run.device_changes:
        cluster = replace(cluster, accelerator=replace(cluster.accelerator, **dict(run.device_changes)))
    return cluster


def predict(run: Run, calib: Calibration) -> Estimate:
    work = Workload(run.shape, run.seq, run.global_batch, tokens=1e12)
    return estimate(work, run.layout, cluster_for(run, calib))


def log_error(run: Run, calib: Calibration) -> float:
    """log(observed / predicted) MFU."""
    return math.log(run.observed_mfu() / predict(run, calib).mfu)


def fit(runs: list[Run], coarse: bool = False) -> Calibration:
    """Grid search of the three constants minimising the mean |log(predicted / observed)| of MFU."""
    base = calibration("gpu")
    step = 2 if coarse else 1
    gemm = [x / 100 for x in range(50, 96, step)]
    elementwise = list(range(0, 401, 8 * step))
    link = [0.6, 0.7, 0.8, 0.9, 1.0]
    observed = [r.observed_mfu() for r in runs]
    best, best_loss = base, math.inf
    for g, e, lk in itertools.product(gemm, elementwise, link):
        calib = replace(base, gemm_efficiency=g, elementwise_bytes_per_hidden=e, link_efficiency=lk)
        loss = sum(abs(math.log(predict(r, calib).mfu / o)) for r, o in zip(runs, observed, strict=True))
        if loss < best_loss:
            best, best_loss = calib, loss
    return best


def leave_one_source_out(runs: list[Run]) -> dict[str, float]:
    """log(observed / predicted) of each run, predicted with constants fitted on the other sources only."""
    errors: dict[str, float] = {}
    for source in sorted({r.source for r in runs}):
        held_out = [r for r in runs if r.source == source]
        calib = fit([r for r in runs if r.source != source], coarse=True)
        print(
            f"  without {source:<16} gemm {calib.gemm_efficiency:.2f}, elementwise "
            f"{calib.elementwise_bytes_per_hidden:.0f}, link {calib.link_efficiency:.1f}: "
            + ", ".join(f"{math.exp(-log_error(r, calib)) - 1:+.0%}" for r in held_out)
        )
        errors.update({r.name: log_error(r, calib) for r in held_out})
    return errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_search() -> float:
    """Seconds for a full layout search: llama3-70b, 1,024 H800, 2T tokens, seq 4096, global batch 1024."""
    work = Workload(ModelShape.from_config(ModelConfig(preset="llama3-70b")), 4096, 1024, 2e12)
    cluster = make_cluster("H800")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = search(work, cluster, 1024)
        times.append(time.perf_counter() - start)
    print(
        f"search: {result.evaluated} layouts evaluated, {result.feasible} fit; best {result.best[0].layout.describe()}"
    )
    return min(times)


def verdict(value: float, op: str, threshold: float) -> str:
    ok = {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold}[op]
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the leave-one-source-out refits")
    parser.add_argument("--fit", action="store_true", help="refit the constants on all runs and print them")
    args = parser.parse_args()

    runs, sources = load_runs()
    calib = calibration("gpu")
    if args.fit:
        calib = fit(runs)
        print(
            f"fitted on all {len(runs)} runs: gemm_efficiency = {calib.gemm_efficiency}, "
            f"elementwise_bytes_per_hidden = {calib.elementwise_bytes_per_hidden:.0f}, "
            f"link_efficiency = {calib.link_efficiency}"
        )
    print(f"{len(runs)} published runs from {len(sources)} sources ({RUNS_FILE.name})")
    print(f"{'run':<38} {'device':<10} {'layout':<46} {'observed':>8} {'predicted':>9} {'error':>7} {'GB/dev':>7} fits")
    unfit = []
    for run in runs:
        result = predict(run, calib)
        observed = run.observed_mfu()
        usable = result.memory_per_device_gb * (1 + calib.fragmentation_fraction)
        print(
            f"{run.name:<38} {run.device:<10} {run.layout.describe():<46} {observed:8.1%} {result.mfu:9.1%} "
            f"{result.mfu / observed - 1:+7.1%} {usable:7.1f} {'yes' if result.fits else 'NO'}"
        )
        if not result.fits:
            unfit.append(run.name)
    in_sample = statistics.median(abs(math.exp(-log_error(r, calib)) - 1) for r in runs) * 100
    print(f"in-sample median relative error of MFU (catalogue constants): {in_sample:.1f}%")
    fits_pct = 100.0 * (len(runs) - len(unfit)) / len(runs)
    print(f"judged to fit: {len(runs) - len(unfit)} of {len(runs)}" + (f"; not: {', '.join(unfit)}" if unfit else ""))
    loso = None
    if not args.quick:
        print("leave-one-source-out (constants refitted without the source; predicted - observed, relative):")
        errors = leave_one_source_out(runs)
        loso = statistics.median(abs(math.exp(-e) - 1) for e in errors.values()) * 100
        low, high = percentile(list(errors.values()), 0.1), percentile(list(errors.values()), 0.9)
        by_source: dict[str, list[float]] = {}
        for run in runs:
            by_source.setdefault(run.source, []).append(abs(math.exp(-errors[run.name]) - 1))
        for source, errs in by_source.items():
            print(f"  {source:<16} {len(errs):2d} runs, median error {statistics.median(errs):.1%}")
        print(f"leave-one-source-out median relative error: {loso:.1f}%")
        print(
            f"uncertainty band, log(observed / predicted) 10th..90th percentile: {low:+.3f} .. {high:+.3f} "
            f"(MFU x {math.exp(low):.2f} .. x {math.exp(high):.2f}); catalogue: mfu_error_low = {low:.3f}, "
            f"mfu_error_high = {high:.3f}"
        )
    search_s = time_search()
    print(f"full search for llama3-70b on 1,024 GPUs: {search_s:.3f} s (one core, shared machine)")
    print(f"RESULT plan_published_runs {len(runs)} target >= 30 {verdict(len(runs), '>=', 30)}")
    print(f"RESULT plan_published_sources {len(sources)} target >= 8 {verdict(len(sources), '>=', 8)}")
    print(f"RESULT plan_runs_judged_to_fit_pct {fits_pct:.0f} target >= 100 {verdict(fits_pct, '>=', 100)}")
    if loso is not None:
        print(f"RESULT plan_mfu_loso_median_relative_error_pct {loso:.1f} target <= 15 {verdict(loso, '<=', 15)}")
    print(f"RESULT plan_search_70b_1024gpus_s {search_s:.3f} target < 2 {verdict(search_s, '<', 2)}")


if __name__ == "__main__":
    main()
