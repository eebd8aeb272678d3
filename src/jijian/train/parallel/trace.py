"""Trace a parallel layout at full scale in one process: PyTorch's fake process group plus fake tensors.

One rank of an N-rank run is simulated: the fake group answers every collective without sending anything,
and fake tensors carry shapes and dtypes without memory, so jijian's own `parallelize_stage` (TP/SP,
activation checkpointing, FSDP2, pipeline pruning) runs unchanged on a 405B model and 16,384 ranks on a
laptop. The trace records what that rank would hold — the local shards of its parameters, gradients and
AdamW states (from the real optimizer's state after one fake step) — and every collective its forward and
backward issue (operation, mesh dimension, group size, message bytes), per micro-batch. A step is assembled
from the first, a middle and the last micro-batch, run with the gradient-sync settings the trainer and the
pipeline schedule use, so collectives that happen once per step are counted once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.distributed_c10d import GroupName
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from jijian.config import ModelConfig, ParallelConfig, TrainConfig
from jijian.model import CausalLM
from jijian.model.llama import rope_inverse_frequencies
from jijian.train.layout import Layout
from jijian.train.optim import build_optimizer
from jijian.train.parallel.mesh import MESH_DIMS, ParallelDims, build_parallel_dims
from jijian.train.parallel.parallelize import parallelize_stage
from jijian.train.parallel.pipeline import stage_indices
from jijian.train.trainer import cross_entropy_loss, set_gradient_sync

# Collective kinds: all_reduce moves 2(n-1)/n of its message per rank in a ring, the others (n-1)/n.
_C10D_KINDS = {
    "_allgather_base_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather",
    "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "allreduce_": "all_reduce",
    "allreduce_coalesced_": "all_reduce",
    "alltoall_base_": "all_to_all",
    "broadcast_": "broadcast",
}
_FUNCTIONAL_KINDS = {
    "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "all_reduce": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_to_all_single": "all_to_all",
    "broadcast": "broadcast",
}


@dataclass(frozen=True)
class Collective:
    """One collective this rank takes part in: `message_bytes` is the full (gathered / unreduced) message."""

    kind: str  # all_gather | reduce_scatter | all_reduce | all_to_all | broadcast | send
    dim: str  # mesh dimension of the group: tp, dp_shard, dp_replicate or pp
    group_size: int
    message_bytes: int
    count: float = 1.0  # how many times per step


@dataclass
class LayoutTrace:
    """What one rank of the layout holds and sends in one optimiser step."""

    layout: Layout
    rank: int
    stage_ids: list[int]
    microbatches: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    param_numel: int
    # The most bytes of gathered (unsharded) parameters and unsharded gradients FSDP held at once, looked at at
    # every collective and after each forward and backward: a few units around the one computing, or (pp > 1,
    # ZeRO-2-like layouts) the whole stage and its accumulating fp32 gradients until the step's last micro-batch.
    unsharded_bytes: int = 0
    collectives: list[Collective] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def model_state_bytes(self) -> int:
        """Parameters, gradients and optimizer states together."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


# TorchDispatchMode's __init_subclass__ and __init__ carry no annotations in torch.
class _CollectiveRecorder(TorchDispatchMode):
    """Record every c10d and functional collective that passes through the dispatcher."""

    def __init__(self, group_dims: dict[str, str], on_collective: Callable[[Collective], None] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.group_dims = group_dims
        self.records: list[Collective] = []
        self.on_collective = on_collective

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if func.namespace == "c10d" and name in _C10D_KINDS:
            self.records.append(self._c10d(_C10D_KINDS[name], name, args))
        elif func.namespace == "_c10d_functional" and name in _FUNCTIONAL_KINDS:
            self.records.append(self._functional(_FUNCTIONAL_KINDS[name], args))
        else:
            return func(*args, **kwargs)
        if self.on_collective is not None:
            self.on_collective(self.records[-1])
        return func(*args, **kwargs)

    def _group(self, group: Any) -> tuple[str, int]:
        if isinstance(group, str):
            # Functional collectives name their group; torch resolves names only through this private function.
            group = dist.distributed_c10d._resolve_process_group(GroupName(group))
        elif not isinstance(group, dist.ProcessGroup):
            group = dist.ProcessGroup.unbox(group)
        return self.group_dims.get(group.group_name, "other"), group.size()

    def _c10d(self, kind: str, name: str, args: tuple[Any, ...]) -> Collective:
        if name in ("_allgather_base_", "allgather_into_tensor_coalesced_", "_reduce_scatter_base_"):
            outputs, inputs, group = args[0], args[1], args[2]
            full = outputs if kind == "all_gather" else inputs
        elif name == "reduce_scatter_tensor_coalesced_":
            full, group = args[1], args[2]
        else:  # allreduce_, allreduce_coalesced_, alltoall_base_, broadcast_: the first argument is the message
            full, group = args[0], args[2] if name == "alltoall_base_" else args[1]
        dim, size = self._group(group)
        return Collective(kind, dim, size, _nbytes(full))

    def _functional(self, kind: str, args: tuple[Any, ...]) -> Collective:
        tensor, group = args[0], args[-1]
        dim, size = self._group(group)
        message = _nbytes(tensor) * (size if kind == "all_gather" else 1)
        return Collective(kind, dim, size, message)


def _nbytes(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(_nbytes(t) for t in tensors)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@contextmanager
def fake_process_group(world_size: int, rank: int = 0) -> Iterator[None]:
    """A process group of `world_size` ranks, this process being `rank`, that sends nothing."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised; the layout trace needs its own fake one")
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()
        _forget_meshes()


def _forget_meshes() -> None:
    """Drop DTensor's caches: they key on meshes by value, so a later trace (another rank, same shape) would
    reuse sharding decisions that point at this trace's destroyed process groups."""
    from torch.distributed.tensor import _redistribute

    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache.cache_clear()
    propagator._propagate_tensor_meta_cached.cache_clear()
    _redistribute._gen_transform_infos.cache_clear()
    _redistribute._planner_cache.clear()


def _group_dims(dims: ParallelDims) -> dict[str, str]:
    names: dict[str, str] = {}
    for dim in MESH_DIMS:
        mesh = dims.submesh(dim)  # None when the dimension has degree 1
        if mesh is not None:
            names[mesh.get_group().group_name] = dim
    return names


def unsharded_bytes(parts: list[CausalLM]) -> int:
    """Bytes FSDP holds right now in gathered parameters and in unsharded (not yet reduced) gradients."""
    from torch.distributed.fsdp._fully_shard._fsdp_param import ShardedState

    total = 0
    for part in parts:
        for module in part.modules():
            if not isinstance(module, FSDPModule):
                continue
            for group in module._get_fsdp_state()._fsdp_param_groups:
                for fsdp_param in group.fsdp_params:
                    unsharded = fsdp_param._unsharded_param if hasattr(fsdp_param, "_unsharded_param") else None
                    if unsharded is None:
                        continue
                    if fsdp_param.sharded_state == ShardedState.UNSHARDED:
                        dtype = fsdp_param.param_dtype or fsdp_param.orig_dtype
                        total += _local(unsharded).numel() * dtype.itemsize  # a TP DTensor: this rank's part
                    grad = fsdp_param.unsharded_accumulated_grad
                    grad = grad if grad is not None else unsharded.grad
                    if grad is not None:
                        total += _nbytes(_local(grad))
    return total


def _run_microbatch(
    parts: list[CausalLM],
    stage_ids: list[int],
    n_stages: int,
    tokens: torch.Tensor,
    layout: Layout,
    seq: int,
    held: list[int],
    autocast: torch.dtype | None = None,
) -> list[Collective]:
    """Forward and backward of one micro-batch through this rank's stages; stage-boundary sends as `send`.

    Appends to `held` what FSDP holds unsharded after each forward and each backward.
    """
    sends: list[Collective] = []
    batch, _ = tokens.shape
    for part, stage_id in zip(parts, stage_ids, strict=True):
        if stage_id == 0:
            inputs: torch.Tensor = tokens
        else:  # what the previous stage sends: the hidden states (this rank's sequence shard under SP)
            local_seq = seq // layout.tp if layout.sequence_parallel else seq
            dtype = autocast or _compute_dtype(part)
            inputs = torch.empty(batch, local_seq, part.cfg.dim, dtype=dtype, requires_grad=True)
        output = part(inputs)
        held.append(unsharded_bytes(parts))
        if stage_id == n_stages - 1:
            loss = cross_entropy_loss(output, torch.zeros(tokens.shape, dtype=torch.long))
            loss.backward()
        else:
            sends.append(Collective("send", "pp", layout.pp, _nbytes(output)))
            output.backward(torch.empty_like(output))
        if stage_id != 0:
            sends.append(Collective("send", "pp", layout.pp, _nbytes(inputs)))  # the input's gradient, backward
        held.append(unsharded_bytes(parts))
    return sends


def _compute_dtype(part: CausalLM) -> torch.dtype:
    if isinstance(part, FSDPModule):
        policy = part._get_fsdp_state()._mp_policy
        if policy.param_dtype is not None:
            return policy.param_dtype
    return torch.float32


def _pipeline_flags(parts: list[CausalLM], last: bool) -> None:
    """The FSDP settings torch's pipeline schedule applies: no reshard and no reduction until the last backward."""
    for part in parts:
        if isinstance(part, FSDPModule):
            part.set_is_last_backward(last)
            part.set_reshard_after_backward(last)
            part.set_requires_gradient_sync(last)


def trace_layout(
    model_cfg: ModelConfig,
    layout: Layout,
    *,
    seq_len: int,
    micro_batch: int = 1,
    microbatches: int = 1,
    ac: str = "none",
    param_dtype: torch.dtype | None = torch.bfloat16,
    parallel_cfg: ParallelConfig | None = None,
    rank: int = 0,
) -> LayoutTrace:
    """Apply jijian's parallelisation to `model_cfg` for `layout` on a fake group and trace one step of `rank`.

    `microbatches` is the number of micro-batches per step: the pipeline's (`layout.pp_microbatches`) or, without
    a pipeline, the gradient-accumulation steps. `param_dtype` is FSDP's compute dtype (bf16 as on an accelerator).
    """
    start = time.perf_counter()
    parallel_cfg = parallel_cfg or ParallelConfig()
    # Validated as the config file's [train] section is: `ac` arrives as a plain string.
    train_cfg = TrainConfig.model_validate({"seq_len": seq_len, "ac": ac})
    # The device only decides CPU-specific choices (explicit FSDP prefetch); trace the accelerator's path.
    device = torch.device("cuda")
    with fake_process_group(layout.world_size, rank):
        dims = build_parallel_dims(layout, "cpu")
        n_stages = layout.pp * layout.stages_per_rank
        stage_ids = stage_indices(layout, dims.pp_rank) if layout.pp > 1 else [0]
        fsdp_dtype = param_dtype if dims.fsdp_mesh is not None else None
        parts = [
            parallelize_stage(model_cfg, train_cfg, dims, stage_id, device, fsdp_dtype, parallel_cfg)
            for stage_id in stage_ids
        ]
        # As `jijian train` on an accelerator: bf16 through FSDP's policy, or autocast when nothing is sharded.
        autocast = param_dtype if fsdp_dtype is None else None
        with FakeTensorMode(allow_non_fake_inputs=True):
            trace = _trace_step(
                parts, dims, stage_ids, n_stages, model_cfg, train_cfg, micro_batch, microbatches, autocast
            )
    trace.seconds = time.perf_counter() - start
    return trace


def _trace_step(
    parts: list[CausalLM],
    dims: ParallelDims,
    stage_ids: list[int],
    n_stages: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    micro_batch: int,
    microbatches: int,
    autocast: torch.dtype | None,
) -> LayoutTrace:
    """Materialise the parts as fake tensors, run the step's micro-batches and one optimizer step, and count."""
    layout, seq_len = dims.layout, train_cfg.seq_len
    for part in parts:
        part.to_empty(device="cpu")
        part.tie_weights()
        part.model.inv_freq = rope_inverse_frequencies(model_cfg, device=torch.device("cpu"))
    params = list({id(p): p for part in parts for p in part.parameters() if p.requires_grad}.values())
    held: list[int] = []

    # FSDP's gathered buffers peak around its collectives (a unit gathered, the next prefetched, gradients waiting
    # for their reduce-scatter): look at them there, and after each forward and backward.
    def look(collective: Collective) -> None:
        # A gradient reduce-scatter's fp32 input is a buffer of its own, next to whatever is still gathered.
        reducing = collective.kind == "reduce_scatter" and collective.dim in ("dp_shard", "dp_replicate")
        held.append(unsharded_bytes(parts) + (collective.message_bytes if reducing else 0))

    recorder = _CollectiveRecorder(_group_dims(dims), look)
    tokens = torch.zeros(micro_batch, seq_len, dtype=torch.long)
    # First, middle and last micro-batch: what differs between them is when gradients are reduced and
    # parameters resharded, which the trainer (pp = 1) and the pipeline schedule (pp > 1) decide.
    # Without a pipeline every micro-step but the last runs alike (FSDP gathers again each time), so the first
    # stands for them all; a pipeline gathers once, on its first micro-batch, and reduces on its last.
    if microbatches == 1:
        phases = [("first", 1.0)]
    elif layout.pp == 1 or microbatches == 2:
        phases = [("first", float(microbatches - 1)), ("last", 1.0)]
    else:
        phases = [("first", 1.0), ("middle", float(microbatches - 2)), ("last", 1.0)]
    collectives: list[Collective] = []
    for index, (_, count) in enumerate(phases):
        last = index == len(phases) - 1
        if layout.pp > 1:
            _pipeline_flags(parts, last)
        else:
            set_gradient_sync(parts, last)
        before = len(recorder.records)
        precision = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with recorder, precision:
            sends = _run_microbatch(parts, stage_ids, n_stages, tokens, layout, seq_len, held, autocast)
        for record in [*recorder.records[before:], *sends]:
            collectives.append(Collective(record.kind, record.dim, record.group_size, record.message_bytes, count))
    # The real optimizer, stepped on this rank's local shards: a DTensor's optimizer states are shards laid out
    # like its parameter's, and stepping plain shards spares the sharding propagation of every foreach op.
    # A gradient's local part is what the rank holds; DTensor may leave it laid out otherwise than its parameter
    # (the vocabulary-split embedding's arrives replicated), so the optimizer gets it in the parameter's layout.
    grad_bytes = sum(_nbytes(_local(p.grad)) for p in params if p.grad is not None)
    shards = []
    for param in params:
        shard = _local(param).detach().requires_grad_()
        grad = param.grad
        if isinstance(grad, DTensor):
            sharded = cast(DTensor, param)  # a DTensor gradient belongs to a DTensor parameter
            if grad.placements != sharded.placements:
                grad = grad.redistribute(sharded.device_mesh, sharded.placements)
        shard.grad = None if grad is None else _local(grad)
        shards.append(shard)
    optimizer = build_optimizer(shards, train_cfg)
    optimizer.step()
    param_bytes = sum(_nbytes(shard) for shard in shards)
    optimizer_bytes = sum(
        _nbytes(_local(value))
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    )
    numel = sum(_local(p).numel() for p in params)
    return LayoutTrace(
        layout=layout,
        rank=dist.get_rank(),
        stage_ids=stage_ids,
        microbatches=microbatches,
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes,
        param_numel=numel,
        unsharded_bytes=max(held, default=0),
        collectives=_merge(collectives),
    )


def _merge(collectives: list[Collective]) -> list[Collective]:
    """Identical collectives folded into one entry with their summed count."""
    merged: dict[tuple[str, str, int, int], float] = {}
    for c in collectives:
        key = (c.kind, c.dim, c.group_size, c.message_bytes)
        merged[key] = merged.get(key, 0.0) + c.count
    return [Collective(*key, count=count) for key, count in merged.items()]
