"""Step time, memory, MFU, energy and money of one parallel layout: the planner's performance model.

Per micro-batch, the busiest pipeline stage spends matmul time (FLOPs over the calibrated fraction of
peak), memory-bound time (norms, activations, residuals: calibrated bytes per token over HBM
bandwidth), tensor-parallel collectives (not overlapped, as in Megatron-LM) and pipeline
point-to-point sends. A step runs m micro-batches plus the pipeline bubble. Data-parallel gradient
all-reduce overlaps the last micro-batch's backward; FSDP all-gathers and reduce-scatters overlap the
compute of the micro-batch they belong to; only what sticks out of that compute is counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jijian.plan.comms import (
    all_gather_bytes,
    all_reduce_bytes,
    bubble_fraction,
    group_is_intra_node,
    pipeline_in_flight,
    transfer_time,
)
from jijian.plan.errors import PlanError
from jijian.plan.hardware import GB, Calibration, Cluster, capital_cost_per_device_hour, kwh_per_device_hour
from jijian.plan.memory import (
    GRAD_BYTES,
    PARAM_BYTES,
    REDUCE_BYTES,
    model_state_split,
)
from jijian.spec.layout import PIPELINE_CHUNKS
from jijian.spec.shape import ModelShape, activation_bytes_per_layer, training_flops_per_token

# Units the planner reports compute in: one PetaFLOP/s sustained for one day (Inspur's unit).
PF_DAY = 1e15 * 86400
# Softmax and cross-entropy over the vocabulary: fp32 logits written, read for the loss, and their gradient
# written and read again (4 passes of 4 bytes per logit).
LOGITS_TRAFFIC_BYTES = 16
# Bottleneck = the largest loss unless every loss is smaller than this share of the step.
COMPUTE_BOUND_SHARE = 0.15


def pf_days(flops: float) -> float:
    """FLOPs expressed in PetaFLOP/s-days."""
    return flops / PF_DAY


GRAD_SYNC_MODES = ("step", "microbatch")


@dataclass(frozen=True)
class Layout:
    """A parallel layout: degrees of each dimension, micro-batch, recomputation and pipeline schedule."""

    dp: int = 1  # replicated data parallel (gradient all-reduce)
    fsdp: int = 1  # fully-sharded data parallel (ZeRO-3)
    tp: int = 1
    pp: int = 1
    micro_batch: int = 1
    recompute: str = "none"  # none | selective | full
    schedule: str = "1f1b"  # 1f1b | interleaved_1f1b | gpipe
    sequence_parallel: bool = True
    zero_stage: int | None = None  # for dp without fsdp: ZeRO stage 1 or 2 over the dp ranks (None = plain DDP)
    chunks: int = PIPELINE_CHUNKS  # model chunks per stage in the interleaved schedule (jijian train runs 2)
    # How FSDP under a pipeline reduces gradients: "step" accumulates the stage's gradients unsharded and
    # reduce-scatters once after the last micro-batch (torch.distributed.pipelining, which jijian train runs);
    # "microbatch" reduce-scatters every micro-batch's backward into sharded accumulators (Llama 3's FSDP keeps
    # gradients sharded): less memory, more traffic. Without a pipeline FSDP already reduces every micro-batch.
    grad_sync: str = "step"

    def __post_init__(self) -> None:
        if self.grad_sync not in GRAD_SYNC_MODES:
            raise PlanError(f"grad_sync must be one of {', '.join(GRAD_SYNC_MODES)}, got {self.grad_sync!r}")

    @property
    def gpus(self) -> int:
        """Devices the layout uses."""
        return self.dp * self.fsdp * self.tp * self.pp

    @property
    def data_ranks(self) -> int:
        """Ranks that see different data."""
        return self.dp * self.fsdp

    def describe(self) -> str:
        """Short text such as 'fsdp=32,tp=8 mb=1 recompute=selective'."""
        degrees = [f"{k}={v}" for k, v in (("dp", self.dp), ("fsdp", self.fsdp), ("tp", self.tp), ("pp", self.pp))]
        shown = [d for d in degrees if not d.endswith("=1")] or ["dp=1"]
        if self.zero_stage:
            shown.insert(1 if self.dp > 1 else 0, f"zero={self.zero_stage}")
        extra = f" {self.schedule}" if self.pp > 1 else ""
        if self.pp > 1 and self.fsdp > 1 and self.grad_sync != "step":
            extra += f" grad_sync={self.grad_sync}"
        return f"{','.join(shown)} mb={self.micro_batch} recompute={self.recompute}{extra}"


@dataclass(frozen=True)
class Workload:
    """What is trained: the model shape, sequence length, global batch (sequences) and total tokens."""

    shape: ModelShape
    seq: int
    global_batch: int
    tokens: float


@dataclass
class Estimate:
    """Everything the planner predicts for one layout."""

    layout: Layout
    gpus: int
    microbatches: int
    fits: bool
    memory_per_device_gb: float
    memory_breakdown_gb: dict[str, float]
    step_time_s: float
    time_breakdown_s: dict[str, float]
    mfu: float
    hfu: float
    tokens_per_s: float
    bottleneck: str
    steps: int
    days: float
    gpu_hours: float
    pf_days: float
    energy_kwh: float
    cost_electricity: float
    cost_rent: float
    cost_buy: float
    currency: str
    comm_bytes_per_step: dict[str, float] = field(default_factory=dict)
    jijian_runs: bool = True  # whether `jijian train` can run this layout (see jijian_cannot_run)
    # The range the truth has fallen in for runs the constants were not fitted on: MFU (and throughput) times
    # exp(low) .. exp(high), step time divided by them (hardware.toml mfu_error_low / mfu_error_high).
    mfu_range: tuple[float, float] = (0.0, 0.0)
    step_time_range_s: tuple[float, float] = (0.0, 0.0)

    def mfu_text(self) -> str:
        """'MFU 41% (33-47%)'."""
        low, high = self.mfu_range
        return f"{self.mfu:.0%} ({low:.0%}-{high:.0%})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `layout` also appears as its short text."""
        out = asdict(self)
        out["layout"] = {**asdict(self.layout), "text": self.layout.describe()}
        return out


def matmul_seconds(
    shape: ModelShape, seq: int, micro_batch: int, tp: int, layers: int, recompute: str, peak: float, calib: Calibration
) -> float:
    """Matmul time of one micro-batch on the busiest stage: each matmul's FLOPs at the efficiency of its size.

    Forward and backward (two matmuls of the same size per forward one) plus what recomputation repeats;
    the efficiency is flat for GPUs and a measured curve for a calibrated local machine.
    """
    tokens = seq * micro_batch
    h, hd = shape.hidden, shape.head_dim
    # (m, k, n, how many) of one layer as jijian's block runs them: Q, K and V, output projection, the MLP's
    # gate and up (or one input matrix), MLP out.
    layer = [
        (tokens, h, shape.heads * hd / tp, 1),
        (tokens, h, shape.kv_heads * hd / tp, 2),
        (tokens, shape.heads * hd / tp, h, 1),
        (tokens, h, shape.ffn / tp, 2 if shape.gated else 1),
        (tokens, shape.ffn / tp, h, 1),
    ]
    scores = [(seq, hd, seq, 2 * micro_batch * shape.heads / tp)]  # QK^T and attention x V, per head
    selective_scores = 3.0 if shape.flash_attention else 4.0  # without flash, selective redoes the scores
    passes = {"none": (3.0, 3.0), "selective": (3.0, selective_scores), "full": (4.0, 4.0)}[recompute]

    def seconds(matmuls: Sequence[tuple[float, float, float, float]], repeat: float) -> float:
        total = 0.0
        for m, k, n, count in matmuls:
            flops = 2.0 * m * k * n
            total += repeat * count * flops / (peak * calib.matmul_efficiency(flops))
        return total

    head = seconds([(tokens, h, shape.vocab / tp, 1)], 3.0)
    return layers * (seconds(layer, passes[0]) + seconds(scores, passes[1])) + head


def tp_recompute_collectives(recompute: str, sequence_parallel: bool) -> float:
    """Tensor-parallel collectives per layer (in all-reduces) that recomputing a layer's forward sends again.

    As jijian's engine runs it (counted on a fake process group): full recomputation redoes the attention
    output's reduction and, under sequence parallelism, both all-gathers of the norm outputs (the block's last
    reduction is not needed by backward and is skipped); selective recomputation keeps the reductions' outputs
    but recomputes the norms, so only the two all-gathers (one all-reduce's worth) run again.
    """
    if recompute == "full":
        return 1.5 if sequence_parallel else 1.0
    if recompute == "selective" and sequence_parallel:
        return 1.0
    return 0.0


def stage_layers(shape: ModelShape, pp: int) -> int:
    """Layers on the busiest pipeline stage."""
    return math.ceil(shape.layers / pp)


def stage_params(shape: ModelShape, layout: Layout) -> float:
    """Parameters on one device of the busiest stage: its layers and an embedding matrix, split by tp.

    Without a pipeline the one stage holds both the input embedding and the output head; with one, the
    first stage holds the embedding and the last the head (each as large as the other).
    """
    embeddings = shape.embedding_params if layout.pp == 1 else shape.vocab * shape.hidden
    return (stage_layers(shape, layout.pp) * shape.layer_params + embeddings) / layout.tp


def model_state_breakdown(shape: ModelShape, layout: Layout) -> dict[str, float]:
    """Bytes of parameters, gradients and optimizer states on one device of the busiest stage."""
    stage, shard = zero_sharding(layout)
    params = stage_params(shape, layout)
    split = model_state_split(stage, shard)
    pad = fsdp_padding(shape, layout.tp, shard) if stage in (2, 3) else 1.0  # ZeRO-2/3 run as FSDP2 (dim-0 chunks)
    sharded = {"params": stage >= 3, "grads": stage >= 2, "optimizer": stage >= 1}
    return {name: params * per_param * (pad if sharded[name] else 1.0) for name, per_param in split.items()}


def fsdp_padding(shape: ModelShape, tp: int, ranks: int) -> float:
    """How much larger FSDP2's shards are than an even split: it cuts each weight's dim 0 into `ranks` chunks of
    ceil(rows / ranks) rows, padding the last ones, so a weight with fewer rows than ranks is padded up to one row
    per rank (a tp=8 Llama 3 8B's 128-row k_proj over 2,048 ranks moves and stores 16 times its size)."""
    if ranks <= 1:
        return 1.0
    h, q, kv, ffn = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    # (rows on one TP rank, columns, how many) per layer: q, k and v and the MLP's inputs split their rows over
    # TP, the output projections their columns; the norms are replicated.
    layer = [(q // tp, h, 1), (kv // tp, h, 2), (h, q // tp, 1), (ffn // tp, h, 2 if shape.gated else 1)]
    layer += [(h, ffn // tp, 1), (h, 1, 2)]
    ends = [(shape.vocab // tp, h, 1 if shape.tied_embeddings else 2)]  # embedding and head split the vocabulary
    weights = [(rows, cols, count * shape.layers) for rows, cols, count in layer] + ends
    even = sum(rows * cols * count for rows, cols, count in weights)
    padded = sum(math.ceil(rows / ranks) * ranks * cols * count for rows, cols, count in weights)
    return padded / even


def sharding_buffers(shape: ModelShape, layout: Layout) -> float:
    """Bytes of gathered parameters and unsharded gradients that sharded data parallelism holds at its peak.

    As jijian's engine runs FSDP2 (measured on a fake process group by `jijian plan --check`): without a pipeline
    the root (embedding and head) stays gathered from forward to backward, next to the layers being gathered and
    reduced, and at backward's end its gradients are reduce-scattered from an fp32 buffer. With a pipeline,
    PyTorch's schedule keeps the whole stage gathered and accumulates its gradients unsharded in fp32 until the
    last micro-batch: ZeRO-3 then saves optimizer memory only. ZeRO-2 (FSDP2 without resharding) already counts
    its gathered parameters.
    """
    zero2 = layout.fsdp == 1 and layout.dp > 1 and layout.zero_stage == 2
    if layout.fsdp == 1 and not zero2:
        return 0.0
    gathered = 0 if zero2 else PARAM_BYTES
    if zero2 and layout.pp == 1:  # the layer being reduced: its bf16 gradients and their fp32 buffer
        return shape.layer_params / layout.tp * (GRAD_BYTES + REDUCE_BYTES)
    # DTensor computes the gradient of the row-wise (vocabulary-split) embedding replicated: every TP rank holds
    # the whole vocabulary's, which a pipeline accumulates across micro-batches.
    replicated_embedding = shape.vocab * shape.hidden * (1 - 1 / layout.tp)
    if layout.pp > 1 and layout.grad_sync == "microbatch" and not zero2:
        # The stage stays gathered; only the layer whose gradients are being reduced (bf16, and the fp32 buffer
        # they are reduce-scattered from) is unsharded at a time. Such engines split the embedding's gradient
        # over the vocabulary like its weight, so the whole-vocabulary copy above does not arise.
        return stage_params(shape, layout) * gathered + shape.layer_params / layout.tp * (GRAD_BYTES + REDUCE_BYTES)
    if layout.pp > 1:
        return stage_params(shape, layout) * (gathered + REDUCE_BYTES) + replicated_embedding * REDUCE_BYTES
    root = shape.embedding_params / layout.tp
    layer = shape.layer_params / layout.tp
    return max(
        root * REDUCE_BYTES,  # backward's end: the root resharded, its gradients in their fp32 reduce-scatter buffer
        root * gathered + 2 * layer * (gathered + GRAD_BYTES),  # mid-backward: two layers gathered, with gradients
    )


def zero_sharding(layout: Layout) -> tuple[int, int]:
    """(ZeRO stage, ranks sharing the model states) implied by the layout."""
    if layout.fsdp > 1:
        if layout.zero_stage:
            rest = "".join(f",{k}={v}" for k, v in (("tp", layout.tp), ("pp", layout.pp)) if v > 1)
            raise PlanError(zero_with_fsdp_message(layout.zero_stage, layout.dp, layout.fsdp, rest))
        return 3, layout.fsdp
    stage = layout.zero_stage or 0
    return stage, (layout.dp if stage else 1)


def jijian_cannot_run(layout: Layout) -> str | None:
    """Why `jijian train` cannot run the layout (None when it can: FSDP2, HSDP, TP, PP and ZeRO-2 through
    FSDP2 without resharding after forward)."""
    if layout.pp > 1 and layout.schedule == "interleaved_1f1b" and layout.chunks != PIPELINE_CHUNKS:
        return f"jijian train interleaves {PIPELINE_CHUNKS} chunks per pipeline stage, not {layout.chunks}"
    if layout.pp > 1 and layout.fsdp > 1 and layout.grad_sync != "step":
        return (
            "jijian train's pipeline (torch.distributed.pipelining) accumulates a stage's gradients unsharded and "
            "reduce-scatters them once per step (grad_sync = step), not every micro-batch"
        )
    if layout.zero_stage == 1 and layout.dp > 1:
        return (
            "jijian train has no ZeRO-1 (FSDP2 shards gradients along with optimizer states); "
            'zero=2 runs as dp_shard with fsdp_reshard_after_forward = "never"'
        )
    return None


def zero_with_fsdp_message(stage: int, dp: int, fsdp: int, rest: str = "") -> str:
    """Why zero=N and fsdp>1 do not combine, with the two nearest layouts that do (`rest`: ',tp=8,pp=2')."""
    return (
        f"zero={stage} with fsdp={fsdp}: fsdp already shards parameters, gradients and optimizer states "
        f"(ZeRO-3) over its ranks, and zero={stage} shards over dp ranks; nearest feasible: "
        f"'dp={dp * fsdp},zero={stage}{rest}' (ZeRO-{stage} over the same {dp * fsdp} ranks) or "
        f"'{f'dp={dp},' if dp > 1 else ''}fsdp={fsdp}{rest}' (ZeRO-3, no zero key)"
    )


def memory_breakdown(work: Workload, layout: Layout, cluster: Cluster) -> dict[str, float]:
    """Bytes per device on the fullest stage: model states, activations, logits and temporary buffers.

    Without a pipeline one stage holds everything. With one, the first stage keeps the most micro-batches in
    flight and the last holds the logits; the first gets the floor of layers / pp (an uneven split puts the
    remainder on later stages, as Llama 3 does, section 3.3.2), and the fuller of the two is reported.
    """
    shape, tp, pp = work.shape, layout.tp, layout.pp
    layers = stage_layers(shape, pp)
    microbatches = work.global_batch // (layout.data_ranks * layout.micro_batch)
    in_flight = pipeline_in_flight(layout.schedule, pp, microbatches, layout.chunks)
    per_layer = activation_bytes_per_layer(
        shape, work.seq, layout.micro_batch, tp, layout.sequence_parallel, layout.recompute
    )
    recomputed = 0.0
    if layout.recompute == "full":  # one layer's activations exist again while it is recomputed
        recomputed = activation_bytes_per_layer(shape, work.seq, layout.micro_batch, tp, layout.sequence_parallel)
    tokens = work.seq * layout.micro_batch
    logits = tokens * shape.vocab / tp * 4 * 2  # fp32 logits and their gradient
    if pp == 1:
        activations = per_layer * layers + recomputed
    else:
        first = per_layer * (shape.layers // pp) * in_flight + recomputed
        last = per_layer * layers + recomputed
        activations, logits = (first, 0.0) if first >= last + logits else (last, logits)
    buffers = sharding_buffers(shape, layout)
    return {
        "model_states": sum(model_state_breakdown(shape, layout).values()),
        "activations": activations,
        "logits": logits,
        "buffers": buffers,
    }


def estimate(work: Workload, layout: Layout, cluster: Cluster) -> Estimate:
    """Predict memory, step time, MFU, duration, energy and cost of training `work` with `layout`."""
    shape, device, calib = work.shape, cluster.accelerator, cluster.calibration
    tp, pp, per_node = layout.tp, layout.pp, cluster.devices_per_node
    if work.global_batch % (layout.data_ranks * layout.micro_batch):
        raise PlanError(
            f"the global batch of {work.global_batch} sequences does not split into micro-batches of "
            f"{layout.micro_batch} over {layout.data_ranks} data-parallel ranks"
        )
    microbatches = work.global_batch // (layout.data_ranks * layout.micro_batch)
    tokens_mb = work.seq * layout.micro_batch
    layers = stage_layers(shape, pp)

    # Compute of one micro-batch on the busiest stage (which also holds the output head).
    layer_matmul = 2.0 * (shape.attention_params + shape.mlp_params)
    layer_scores = 4.0 * shape.heads * shape.head_dim * work.seq
    selective_share = 0.0 if shape.flash_attention else layer_scores  # flash: only elementwise work is redone
    recompute_share = {"none": 0.0, "selective": selective_share, "full": layer_matmul + layer_scores}[layout.recompute]
    matmul_s = matmul_seconds(
        shape, work.seq, layout.micro_batch, tp, layers, layout.recompute, device.peak_flops, calib
    )
    recompute_forward = 1.0 + (layout.recompute == "full") / 3.0  # full recomputation repeats the forward third
    elementwise = calib.elementwise_bytes_per_hidden * shape.hidden * recompute_forward
    split = tp if layout.sequence_parallel else 1
    # An elementwise kernel reads two tensors and writes one; its size decides whether caches serve it (the
    # measured curve of a local profile; GPUs use the datasheet bandwidth).
    activation_gbs = calib.bandwidth_gbs(3 * tokens_mb * shape.hidden * 4 / split, device.memory_bandwidth_gbs)
    logits_gbs = calib.bandwidth_gbs(3 * tokens_mb * shape.vocab * 4 / tp, device.memory_bandwidth_gbs)
    memory_s = tokens_mb * layers * elementwise / split / (activation_gbs * 1e9)
    if calib.softmax_ns_per_logit:  # measured on this machine: exp and log make the loss compute-bound
        memory_s += tokens_mb * shape.vocab / tp * calib.softmax_ns_per_logit * 1e-9
    else:
        memory_s += tokens_mb * shape.vocab / tp * LOGITS_TRAFFIC_BYTES / (logits_gbs * 1e9)
    overhead_s = calib.op_overhead_us * 1e-6 * layers * calib.ops_per_layer * recompute_forward
    # A local profile's whole-step correction (1 elsewhere): what separately timed kernels leave out.
    matmul_s, memory_s, overhead_s = (t * calib.step_time_scale for t in (matmul_s, memory_s, overhead_s))

    def link(stride: int, size: int) -> float:
        return device.link_gbs if group_is_intra_node(stride, size, per_node) else device.network_gbs

    # Tensor parallelism: 2 all-reduces per layer forward and 2 backward (with sequence parallelism each becomes
    # an all-gather + reduce-scatter: the same bytes), plus what recomputation sends again (tp_recompute_collectives)
    # and the all-gather of the logits over the vocabulary for the loss (jijian's head returns full logits). The
    # embedding's output and the head's input take one all-reduce's worth each (the head's stage has one, the
    # stage holding both without a pipeline two).
    collectives = 4 + tp_recompute_collectives(layout.recompute, layout.sequence_parallel)
    ends = 2 if pp == 1 else 1
    tp_bytes = (collectives * layers + ends) * all_reduce_bytes(tokens_mb * shape.hidden * PARAM_BYTES, tp)
    tp_bytes += all_gather_bytes(tokens_mb * shape.vocab * PARAM_BYTES, tp)
    tp_s = transfer_time(tp_bytes, link(1, tp), calib.link_efficiency)
    chunks = layout.chunks if layout.schedule == "interleaved_1f1b" else 1
    pp_bytes = 0.0 if pp == 1 else 2.0 * chunks * tokens_mb * shape.hidden * PARAM_BYTES / split
    pp_s = transfer_time(pp_bytes, link(tp, pp), calib.link_efficiency)
    microbatch_s = matmul_s + memory_s + overhead_s + tp_s + pp_s

    bubble = bubble_fraction(layout.schedule, pp, microbatches, layout.chunks)
    pipeline_s = microbatch_s * microbatches * (1.0 + bubble)

    # Data parallelism over the stage's parameters.
    params = stage_params(shape, layout)
    grad_bytes = params * REDUCE_BYTES  # as reduced: in fp32
    fsdp_bytes = fsdp_exposed_s = 0.0
    if layout.fsdp > 1:
        # Without a pipeline FSDP reshards after forward and gathers again for backward, except the root (embedding
        # and head, needed at once by backward) and the last layer, which backward starts with.
        kept = 0.0 if pp > 1 else (shape.embedding_params + shape.layer_params) / tp
        gathered = (2 if pp == 1 else 1) * params - kept
        pad = fsdp_padding(shape, tp, layout.fsdp)
        gather = all_gather_bytes(gathered * PARAM_BYTES * pad, layout.fsdp)
        scatter = all_gather_bytes(params * REDUCE_BYTES * pad, layout.fsdp)  # the gradients' reduce-scatter
        fsdp_link = link(tp * pp, layout.fsdp)
        if pp > 1 and layout.grad_sync == "microbatch":
            # The stage is gathered once; every micro-batch's backward reduce-scatters, overlapping its own
            # backward (two thirds of the micro-batch).
            fsdp_bytes = gather + scatter * microbatches
            gather_s = transfer_time(gather, fsdp_link, calib.link_efficiency)
            scatter_s = transfer_time(scatter, fsdp_link, calib.link_efficiency)
            fsdp_exposed_s = max(0.0, gather_s - microbatch_s)
            fsdp_exposed_s += microbatches * max(0.0, scatter_s - microbatch_s * 2.0 / 3.0)
        else:
            rounds = microbatches if pp == 1 else 1
            fsdp_bytes = (gather + scatter) * rounds
            round_s = transfer_time(gather + scatter, fsdp_link, calib.link_efficiency)
            fsdp_exposed_s = rounds * max(0.0, round_s - microbatch_s)
    dp_link = link(tp * pp * layout.fsdp, layout.dp)
    stage, shard = zero_sharding(layout)
    if stage in (1, 2):
        # ZeRO-1/2 (Megatron's distributed optimizer, DeepSpeed): gradients are reduce-scattered to the rank
        # that owns their optimizer shard, and the updated parameters all-gathered after the step: together
        # the bytes of one all-reduce. ZeRO-1 keeps whole gradients and reduce-scatters once, overlapping the
        # last backward; ZeRO-2 keeps only its shard, so every micro-batch's backward reduce-scatters. The
        # parameter all-gather overlaps the next step's first forward.
        pad = fsdp_padding(shape, tp, layout.dp) if stage == 2 else 1.0  # jijian runs ZeRO-2 as FSDP2
        scatter = all_gather_bytes(grad_bytes * pad, layout.dp)
        gather = all_gather_bytes(params * PARAM_BYTES * pad, layout.dp)
        rounds = microbatches if stage == 2 else 1
        dp_bytes = scatter * rounds + gather
        scatter_s = transfer_time(scatter, dp_link, calib.link_efficiency)
        gather_s = transfer_time(gather, dp_link, calib.link_efficiency)
        dp_exposed_s = rounds * max(0.0, scatter_s - microbatch_s * 2.0 / 3.0)
        dp_exposed_s += max(0.0, gather_s - microbatch_s / 3.0)
    else:
        dp_bytes = all_reduce_bytes(grad_bytes / layout.fsdp, layout.dp)
        dp_s = transfer_time(dp_bytes, dp_link, calib.link_efficiency)
        dp_exposed_s = max(0.0, dp_s - microbatch_s * 2.0 / 3.0)  # overlaps the last backward
    optimizer_s = params / (shard if stage >= 1 else 1) * calib.optimizer_bytes_per_param
    optimizer_gbs = calib.bandwidth_gbs(3 * shape.hidden * shape.ffn / tp * 4, device.memory_bandwidth_gbs)
    optimizer_s /= optimizer_gbs * 1e9
    if calib.optimizer_ns_per_param:  # measured on this machine: sqrt and division, not only bytes
        optimizer_s = params / (shard if stage >= 1 else 1) * calib.optimizer_ns_per_param * 1e-9
    optimizer_s *= calib.step_time_scale
    step_overhead_s = calib.op_overhead_us * 1e-6 * calib.ops_per_step * calib.step_time_scale
    step_s = pipeline_s + fsdp_exposed_s + dp_exposed_s + optimizer_s + step_overhead_s

    tokens_per_step = work.global_batch * work.seq
    model_flops = training_flops_per_token(shape, work.seq) * tokens_per_step
    hardware_flops = model_flops + tokens_per_step * shape.layers * recompute_share
    peak_total = device.peak_flops * layout.gpus
    memory = memory_breakdown(work, layout, cluster)
    used = sum(memory.values())

    losses = {
        "memory": (memory_s * microbatches + optimizer_s),
        "overhead": overhead_s * microbatches + step_overhead_s,
        "network": (tp_s + pp_s) * microbatches + fsdp_exposed_s + dp_exposed_s,
        "bubble": microbatch_s * microbatches * bubble,
    }
    worst = max(losses, key=losses.__getitem__)
    bottleneck = worst if losses[worst] >= COMPUTE_BOUND_SHARE * step_s else "compute"

    mfu = model_flops / (step_s * peak_total)
    steps = math.ceil(work.tokens / tokens_per_step)
    hours = steps * step_s / 3600
    prices = cluster.prices
    energy_kwh = layout.gpus * hours * kwh_per_device_hour(cluster)
    electricity = energy_kwh * prices.electricity_price_per_kwh
    amortized = layout.gpus * hours * capital_cost_per_device_hour(cluster)
    return Estimate(
        layout=layout,
        gpus=layout.gpus,
        microbatches=microbatches,
        fits=used * (1.0 + calib.fragmentation_fraction) <= device.memory_bytes * calib.usable_memory_fraction,
        memory_per_device_gb=used / GB,
        memory_breakdown_gb={k: v / GB for k, v in memory.items()},
        step_time_s=step_s,
        time_breakdown_s={
            "matmul": matmul_s * microbatches,
            "memory_bound": memory_s * microbatches,
            "op_overhead": overhead_s * microbatches + step_overhead_s,
            "tensor_parallel": tp_s * microbatches,
            "pipeline_p2p": pp_s * microbatches,
            "bubble": microbatch_s * microbatches * bubble,
            "fsdp_exposed": fsdp_exposed_s,
            "dp_exposed": dp_exposed_s,
            "optimizer": optimizer_s,
        },
        mfu=mfu,
        hfu=hardware_flops / (step_s * peak_total),
        tokens_per_s=tokens_per_step / step_s,
        bottleneck=bottleneck,
        steps=steps,
        days=hours / 24,
        gpu_hours=hours * layout.gpus,
        pf_days=pf_days(training_flops_per_token(shape, work.seq) * work.tokens),
        energy_kwh=energy_kwh,
        cost_electricity=electricity,
        cost_rent=hours * layout.gpus * prices.rent_per_device_hour,
        cost_buy=amortized + electricity,
        currency=prices.currency,
        comm_bytes_per_step={
            "tensor_parallel": tp_bytes * microbatches,
            "pipeline_p2p": pp_bytes * microbatches,
            "fsdp": fsdp_bytes,
            "data_parallel": dp_bytes,
        },
        jijian_runs=jijian_cannot_run(layout) is None,
        mfu_range=(mfu * math.exp(calib.mfu_error_low), mfu * math.exp(calib.mfu_error_high)),
        step_time_range_s=(step_s / math.exp(calib.mfu_error_high), step_s / math.exp(calib.mfu_error_low)),
    )
