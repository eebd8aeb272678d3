"""The fake-process-group trace of jijian's real parallelisation: Llama 3 8B on a 4-D layout of 1,024 ranks.

Rank 0's parameter shards must be exactly the sizes worked out by hand from the model's shapes and the
layout (TP splits, FSDP's dim-0 chunks), and its traffic must move with the TP degree as ring collectives do.
"""

from __future__ import annotations

import math

import pytest

from jijian.config import ModelConfig
from jijian.train.layout import Layout
from jijian.train.parallel.trace import LayoutTrace, trace_layout

pytestmark = pytest.mark.slow  # tracing 1,024 fake ranks takes about 14 s

SEQ = 8192
MICROBATCHES = 4
CFG = ModelConfig(preset="llama3-8b")


def layout(tp: int) -> Layout:
    """pp=4 x dp_replicate=2 x dp_shard=16 x tp: 1,024 ranks at tp=8."""
    return Layout(pp=4, dp_replicate=2, dp_shard=16, tp=tp, sequence_parallel=True, pp_microbatches=MICROBATCHES)


@pytest.fixture(scope="module")
def traces() -> dict[int, LayoutTrace]:
    return {tp: trace_layout(CFG, layout(tp), seq_len=SEQ, microbatches=MICROBATCHES) for tp in (4, 8)}


def expected_rank0_numel(tp: int, fsdp: int, pp: int) -> int:
    """Parameters rank 0 stores: the first stage's layers and the embedding, split by TP, then FSDP's first chunk."""
    h, ffn, vocab = CFG.dim, CFG.ffn_dim, CFG.vocab_size
    q, kv = CFG.n_heads * CFG.head_size, CFG.kv_heads * CFG.head_size

    def fsdp_chunk(rows: int, cols: int = 1) -> int:
        return math.ceil(rows / fsdp) * cols  # FSDP2 shards dim 0; rank 0 gets a full first chunk

    layer = (
        fsdp_chunk(q // tp, h)  # q_proj, column-wise: output rows split over TP
        + 2 * fsdp_chunk(kv // tp, h)  # k_proj, v_proj
        + fsdp_chunk(h, q // tp)  # o_proj, row-wise: input columns split over TP
        + 2 * fsdp_chunk(ffn // tp, h)  # gate_proj, up_proj
        + fsdp_chunk(h, ffn // tp)  # down_proj
        + 2 * fsdp_chunk(h)  # the two RMSNorm weights: replicated over TP (sequence parallel), sharded by FSDP
    )
    layers = math.ceil(CFG.n_layers / pp)
    return layers * layer + fsdp_chunk(vocab // tp, h)  # embedding, row-wise over the vocabulary


def test_rank0_holds_exactly_its_shards_on_1024_ranks(traces):
    trace = traces[8]
    assert trace.layout.world_size == 1024
    numel = expected_rank0_numel(tp=8, fsdp=16, pp=4)
    assert trace.param_numel == numel
    assert trace.param_bytes == 4 * numel  # FSDP2 keeps the fp32 master shard; bf16 only while gathered
    assert trace.grad_bytes == 4 * numel  # fp32 gradients, reduce-scattered to the shard
    assert trace.optimizer_bytes == 8 * numel  # AdamW's two moments, laid out like the shard
    # The pipeline keeps the stage gathered (bf16) with fp32 gradients accumulating until the last micro-batch.
    # DTensor computes the row-wise embedding's gradient replicated, so that one is the whole vocabulary's.
    unsharded = 16 * numel  # every parameter x 16 FSDP ranks, give or take rank 0's padding
    embedding_extra = (CFG.vocab_size - CFG.vocab_size // 8) * CFG.dim * 4
    assert trace.unsharded_bytes == pytest.approx(unsharded * (2 + 4) + embedding_extra, rel=0.01)


def by_dim(trace: LayoutTrace) -> dict[str, float]:
    """Ring bytes sent per step by mesh dimension (all-reduce 2(n-1)/n, others (n-1)/n, a send its message)."""
    out: dict[str, float] = {}
    for c in trace.collectives:
        share = (c.group_size - 1) / c.group_size * (2 if c.kind == "all_reduce" else 1)
        sent = c.message_bytes if c.kind == "send" else share * c.message_bytes
        out[c.dim] = out.get(c.dim, 0.0) + sent * c.count
    return out


def test_collectives_are_counted_per_step_and_scale_with_tp(traces):
    small, large = by_dim(traces[4]), by_dim(traces[8])
    assert set(large) == {"tp", "dp_shard", "dp_replicate", "pp"}
    assert all(v > 0 for v in large.values())
    # Same activations through a TP group twice as large: the ring sends (n-1)/n of them, 7/8 against 3/4.
    assert large["tp"] / small["tp"] == pytest.approx((7 / 8) / (3 / 4), rel=1e-6)
    # Each TP rank's parameter shard halves, and with it FSDP's gathers and reductions and the replica all-reduce
    # (within the norms, which TP replicates, and rounding).
    assert large["dp_shard"] / small["dp_shard"] == pytest.approx(0.5, rel=0.01)
    assert large["dp_replicate"] / small["dp_replicate"] == pytest.approx(0.5, rel=0.01)
    # Under sequence parallelism rank 0 sends its shard of the hidden states forward, once per micro-batch.
    assert large["pp"] == MICROBATCHES * SEQ * CFG.dim * 2 / 8


def test_fsdp_gathers_once_and_reduces_once_per_pipelined_step(traces):
    trace = traces[8]
    gathers = [c for c in trace.collectives if c.dim == "dp_shard" and c.kind == "all_gather"]
    reductions = [c for c in trace.collectives if c.dim == "dp_shard" and c.kind == "reduce_scatter"]
    # One all-gather and one reduce-scatter per FSDP unit per step: the schedule keeps the stage gathered.
    units = math.ceil(CFG.n_layers / 4) + 1
    assert sum(c.count for c in gathers) == units
    assert sum(c.count for c in reductions) == units
    # bf16 gathers and fp32 reductions of the same parameters: twice the bytes.
    assert sum(c.message_bytes * c.count for c in reductions) == 2 * sum(c.message_bytes * c.count for c in gathers)
