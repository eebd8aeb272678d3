"""Planner against engine: trace a planned layout with jijian's real parallelisation and compare the figures.

The planner (`jijian.plan`, pure Python) predicts each device's model-state bytes and the bytes it sends per
step; the engine (`jijian.train.parallel.trace`) applies TP/SP, FSDP2, pipeline pruning and activation
checkpointing to the same model on a fake process group of the same size and records what rank 0 holds and
which collectives it joins. Both sides turn a collective into bytes sent with the same ring formulas
(`jijian.plan.comms`), so what is compared is which collectives run, how large and how often.
This module lives in the CLI layer because it is the one layer allowed to import both `plan` and `train`.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypedDict

from jijian.config import DeployConfig, ModelConfig, ParallelConfig
from jijian.plan import Cluster, Estimate, PlanError, Workload, estimate, parallel_section
from jijian.plan.comms import all_gather_bytes, all_reduce_bytes
from jijian.plan.estimate import Layout as PlanLayout
from jijian.plan.estimate import memory_breakdown, model_state_breakdown
from jijian.plan.train_config import train_settings
from jijian.train.layout import Layout as EngineLayout
from jijian.train.layout import resolve_layout
from jijian.train.parallel.trace import Collective, LayoutTrace

COMM_CATEGORIES = ("tensor_parallel", "pipeline_p2p", "fsdp", "data_parallel")
MEMORY_CATEGORIES = ("params", "grads", "optimizer", "unsharded")
# Agreement: model-state bytes within 5 %, bytes sent per step within 10 % (benchmarks/plan_vs_engine.py's targets).
MEMORY_TARGET = 0.05
COMM_TARGET = 0.10


@dataclass
class Agreement:
    """The planner's and the engine's figures for one layout, per device and per step."""

    name: str
    estimate: Estimate
    engine_layout: EngineLayout
    trace: LayoutTrace  # rank 0: memory
    comm_trace: LayoutTrace  # the first rank of the last pipeline stage (rank 0 without a pipeline): traffic
    planner_memory: dict[str, float]
    engine_memory: dict[str, float]
    planner_comm: dict[str, float]
    engine_comm: dict[str, float]

    @property
    def trace_seconds(self) -> float:
        """Time the trace(s) took."""
        return self.trace.seconds + (self.comm_trace.seconds if self.comm_trace is not self.trace else 0.0)

    @property
    def memory_rel_err(self) -> float:
        """|planner - engine| / engine of the model-state bytes per device (with FSDP's gathered buffers)."""
        return _rel_err(sum(self.planner_memory.values()), sum(self.engine_memory.values()))

    @property
    def comm_rel_err(self) -> float:
        """|planner - engine| / engine of the bytes each device sends per step."""
        return _rel_err(sum(self.planner_comm.values()), sum(self.engine_comm.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: both sides' figures in bytes, the errors and whether they agree."""
        return {
            "layout": self.estimate.layout.describe(),
            "parallel": self.engine_layout.describe(),
            "world_size": self.engine_layout.world_size,
            "microbatches": self.trace.microbatches,
            "traced_ranks": sorted({self.trace.rank, self.comm_trace.rank}),
            "trace_s": self.trace_seconds,
            "planner": {"model_states": self.planner_memory, "sent_per_step": self.planner_comm},
            "engine": {"model_states": self.engine_memory, "sent_per_step": self.engine_comm},
            "memory_rel_err": self.memory_rel_err,
            "comm_rel_err": self.comm_rel_err,
            "agree": self.memory_rel_err <= MEMORY_TARGET and self.comm_rel_err <= COMM_TARGET,
        }


def _rel_err(predicted: float, measured: float) -> float:
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return abs(predicted - measured) / measured


class _TraceOptions(TypedDict):
    """The keyword arguments both traces of one layout share (`jijian.train.parallel.trace.trace_layout`)."""

    seq_len: int
    micro_batch: int
    microbatches: int
    ac: str
    parallel_cfg: ParallelConfig


def engine_layout(result: Estimate) -> tuple[EngineLayout, ParallelConfig, int]:
    """The `[parallel]` layout `jijian train` would run for a planned layout, and its micro-batches per step."""
    section = parallel_section(result)
    parallel = ParallelConfig.model_validate(section)
    train = train_settings(result)
    layout = EngineLayout(
        pp=parallel.pp,
        dp_replicate=parallel.dp_replicate,
        dp_shard=parallel.dp_shard,
        tp=parallel.tp,
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        pp_schedule=parallel.pp_schedule,
        pp_microbatches=result.microbatches if parallel.pp > 1 else 1,
    )
    microbatches = result.microbatches if layout.pp > 1 else train["grad_accum_steps"]
    return layout, parallel, microbatches


def sent_bytes(collective: Collective) -> float:
    """Bytes this rank sends in one such collective under the planner's ring model (a send: the message)."""
    if collective.kind == "send":
        return float(collective.message_bytes)
    if collective.kind == "all_reduce":
        return all_reduce_bytes(collective.message_bytes, collective.group_size)
    return all_gather_bytes(collective.message_bytes, collective.group_size)


def engine_comm(trace: LayoutTrace, zero2: bool) -> dict[str, float]:
    """Bytes sent per step by category; FSDP2 standing in for ZeRO-2 counts as data parallelism, as planned."""
    by_dim = {"tp": "tensor_parallel", "pp": "pipeline_p2p", "dp_shard": "fsdp", "dp_replicate": "data_parallel"}
    if zero2:
        by_dim["dp_shard"] = "data_parallel"
    totals = dict.fromkeys(COMM_CATEGORIES, 0.0)
    for collective in trace.collectives:
        category = by_dim.get(collective.dim)
        if category is None:
            raise RuntimeError(f"the trace saw a collective on an unknown group: {collective}")
        totals[category] += sent_bytes(collective) * collective.count
    return totals


def check_layout(name: str, model_cfg: ModelConfig, work: Workload, cluster: Cluster, layout: PlanLayout) -> Agreement:
    """Estimate `layout` with the planner, trace it with the engine, and pair the figures."""
    from jijian.train.parallel.trace import trace_layout

    result = estimate(work, layout, cluster)
    problem = None if result.jijian_runs else "jijian train cannot run it"
    if problem:
        raise PlanError(f"layout {layout.describe()}: {problem}")
    engine, parallel, microbatches = engine_layout(result)

    options: _TraceOptions = {
        "seq_len": work.seq,
        "micro_batch": layout.micro_batch,
        "microbatches": microbatches,
        "ac": layout.recompute,
        "parallel_cfg": parallel,
    }
    # Memory: rank 0, whose first pipeline stage has the embedding and the most layers (the planner's fullest
    # stage). Traffic: the planner describes the stage that also computes the head and the loss, so with a
    # pipeline the traffic is traced on the first rank of the last stage (pp is the outermost mesh dimension),
    # in a fresh process: DTensor caches sharding decisions by mesh shape, which a second rank would reuse.
    first = trace_layout(model_cfg, engine, rank=0, **options)
    last = first
    if engine.pp > 1:
        last_rank = (engine.pp - 1) * (engine.world_size // engine.pp)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            last = pool.submit(trace_layout, model_cfg, engine, rank=last_rank, **options).result()
    zero2 = layout.zero_stage == 2 and layout.dp > 1
    return Agreement(
        name=name,
        estimate=result,
        engine_layout=engine,
        trace=first,
        comm_trace=last,
        planner_memory={
            **model_state_breakdown(work.shape, layout),
            "unsharded": memory_breakdown(work, layout, cluster)["buffers"],
        },
        engine_memory={
            "params": first.param_bytes,
            "grads": first.grad_bytes,
            "optimizer": first.optimizer_bytes,
            "unsharded": first.unsharded_bytes,
        },
        planner_comm={k: result.comm_bytes_per_step.get(k, 0.0) for k in COMM_CATEGORIES},
        engine_comm=engine_comm(last, zero2),
    )


def planner_layout_of(config: DeployConfig, world_size: int) -> PlanLayout:
    """The planner's form of a deployment's `[parallel]` on `world_size` devices (LayoutError names the field)."""
    layout = resolve_layout(config, world_size)
    train = config.train
    per_rank = train.batch_size // layout.dp
    micro_batch = per_rank // layout.pp_microbatches if layout.pp > 1 else per_rank
    zero2 = config.parallel.fsdp_reshard_after_forward == "never" and layout.dp_replicate == 1 and layout.dp_shard > 1
    return PlanLayout(
        dp=layout.dp_shard if zero2 else layout.dp_replicate,
        fsdp=1 if zero2 else layout.dp_shard,
        tp=layout.tp,
        pp=layout.pp,
        micro_batch=micro_batch,
        recompute=train.ac,
        schedule=layout.pp_schedule,
        sequence_parallel=layout.sequence_parallel,
        zero_stage=2 if zero2 else None,
    )
