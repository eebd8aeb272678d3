"""The planner's memory and communication model against jijian's engine, traced at full scale on a fake group.

For the Llama 3 8B, 70B and 405B presets, on the layouts the planner recommends for 64, 1,024 and 16,384
devices and on hand-written 3-D (fsdp x tp x pp) and 4-D (dp x fsdp x tp x pp) layouts, the engine's real
parallelisation runs one training step of rank 0 on PyTorch's fake process group with fake tensors
(`jijian plan --check` does the same for one layout). Compared per device: memory = model states (parameters,
gradients, AdamW states) plus FSDP's gathered parameters and unsharded gradients at their peak, and the bytes
sent per step (every collective the trace saw, as ring traffic). Activations are not compared.

    .venv/bin/python benchmarks/plan_vs_engine.py            # 14 layouts (a few minutes on 2 cores)
    .venv/bin/python benchmarks/plan_vs_engine.py --quick    # 6 layouts (about a minute)

Last lines: RESULT plan_vs_engine_memory_median_rel_err (target <= 0.05) and
RESULT plan_vs_engine_comm_median_rel_err (target <= 0.10).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

os.environ.setdefault("OMP_NUM_THREADS", "2")

from jijian.cli.plan_check import COMM_CATEGORIES, Agreement, check_layout
from jijian.config import ModelConfig
from jijian.plan import ModelShape, Workload, make_cluster, search
from jijian.plan.estimate import Layout

SEQ = 8192  # Llama 3's pre-training sequence length
GB = 1e9


@dataclass(frozen=True)
class Case:
    """A model on a device count, with the layout the planner recommends (layout None) or a given one."""

    preset: str
    gpus: int
    accelerator: str
    global_batch: int
    layout: Layout | None = None
    quick: bool = False

    @property
    def name(self) -> str:
        source = "planned" if self.layout is None else "given"
        return f"{self.preset}@{self.gpus} {source}"


CASES = [
    # The planner's choice for 64, 1,024 and 16,384 devices (405B fits 64 devices only with 192 GB each).
    Case("llama3-8b", 64, "H100-SXM", 1024, quick=True),
    Case("llama3-8b", 1024, "H100-SXM", 1024),
    Case("llama3-8b", 16384, "H100-SXM", 2048, quick=True),
    Case("llama3-70b", 64, "H100-SXM", 1024),
    Case("llama3-70b", 1024, "H100-SXM", 1024, quick=True),
    Case("llama3-70b", 16384, "H100-SXM", 2048),
    Case("llama3-405b", 64, "B200", 1024),
    Case("llama3-405b", 1024, "H100-SXM", 1024, quick=True),
    Case("llama3-405b", 16384, "H100-SXM", 2048),
    # Hand-written 3-D (fsdp x tp x pp) and 4-D (dp x fsdp x tp x pp) layouts.
    Case("llama3-8b", 256, "H100-SXM", 256, Layout(fsdp=16, tp=4, pp=4, recompute="none"), quick=True),
    Case("llama3-70b", 512, "H100-SXM", 512, Layout(fsdp=16, tp=8, pp=4, recompute="full", schedule="1f1b")),
    Case("llama3-70b", 1024, "H100-SXM", 1024, Layout(dp=4, fsdp=8, tp=8, pp=4, recompute="selective"), quick=True),
    Case("llama3-405b", 8192, "H100-SXM", 2048, Layout(dp=8, fsdp=16, tp=8, pp=8, recompute="full")),
    Case(
        "llama3-405b",
        16384,
        "H100-SXM",
        4096,
        Layout(dp=16, fsdp=16, tp=8, pp=8, recompute="selective", schedule="interleaved_1f1b"),
    ),
]


def run_case(case: Case) -> Agreement:
    """Plan (or take) the case's layout, then trace it."""
    warnings.filterwarnings("ignore")  # in the case's own process too
    model_cfg = ModelConfig(preset=case.preset)
    shape = ModelShape.from_config(model_cfg)
    cluster = make_cluster(case.accelerator, None, None)
    work = Workload(shape, SEQ, case.global_batch, 1e12)
    layout = case.layout or search(work, cluster, case.gpus, top=1, jijian_only=True).best[0].layout
    return check_layout(case.name, model_cfg, work, cluster, layout)


def main() -> int:
    """Run the cases, print the table and the RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 layouts instead of 14")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cases = [c for c in CASES if c.quick or not args.quick]
    rows: list[Agreement] = []
    start = time.perf_counter()
    header = (
        f"{'case':24} {'layout':52} {'memory GB plan':>14} {'engine':>8} {'err':>6} "
        f"{'sent GB plan':>12} {'engine':>9} {'err':>6} {'trace s':>7}"
    )
    print(header)
    # Each case traces in a fresh process: DTensor keeps per-operator sharding caches that hold the meshes
    # (and so the process-group names) of the fake group a previous trace destroyed.
    context = multiprocessing.get_context("spawn")
    for case in cases:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            agreement = pool.submit(run_case, case).result()
        rows.append(agreement)
        plan_mem, engine_mem = sum(agreement.planner_memory.values()), sum(agreement.engine_memory.values())
        plan_comm, engine_comm = sum(agreement.planner_comm.values()), sum(agreement.engine_comm.values())
        print(
            f"{case.name:24} {agreement.estimate.layout.describe():52} {plan_mem / GB:14.3f} {engine_mem / GB:8.3f} "
            f"{agreement.memory_rel_err:6.1%} {plan_comm / GB:12.2f} {engine_comm / GB:9.2f} "
            f"{agreement.comm_rel_err:6.1%} {agreement.trace_seconds:7.1f}",
            flush=True,
        )
        split = "  ".join(
            f"{k} {agreement.planner_comm[k] / GB:.2f}/{agreement.engine_comm[k] / GB:.2f}"
            for k in COMM_CATEGORIES
            if agreement.planner_comm[k] or agreement.engine_comm[k]
        )
        states = "  ".join(
            f"{k} {agreement.planner_memory[k] / GB:.3f}/{agreement.engine_memory[k] / GB:.3f}"
            for k in agreement.planner_memory
        )
        print(f"{'':24}   sent GB plan/engine: {split}\n{'':24}   memory GB plan/engine: {states}", flush=True)
    memory_err = statistics.median(r.memory_rel_err for r in rows)
    comm_err = statistics.median(r.comm_rel_err for r in rows)
    print(f"{len(rows)} layouts traced in {time.perf_counter() - start:.0f} s")
    memory_ok = "PASS" if memory_err <= 0.05 else "FAIL"
    comm_ok = "PASS" if comm_err <= 0.10 else "FAIL"
    print(f"RESULT plan_vs_engine_memory_median_rel_err {memory_err:.4f} target <= 0.05 {memory_ok}")
    print(f"RESULT plan_vs_engine_comm_median_rel_err {comm_err:.4f} target <= 0.10 {comm_ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
