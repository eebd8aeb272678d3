"""The layout rules, written once: what a parallel layout must divide for `jijian train` to run it.

The trainer raises on the first problem before any rank starts; the planner skips the layouts that
have one, so it never recommends a layout the trainer would refuse. Messages name the config fields.
"""

from __future__ import annotations

PIPELINE_CHUNKS = 2  # model chunks each pipeline rank holds under the interleaved schedule


def pipeline_chunks(pp: int, schedule: str) -> int:
    """Stages each pipeline rank holds: 2 under the interleaved schedule, else 1."""
    return PIPELINE_CHUNKS if pp > 1 and schedule == "interleaved_1f1b" else 1


def tensor_parallel_problem(
    tp: int, *, heads: int, kv_heads: int, ffn: int, seq_len: int, sequence_parallel: bool = True
) -> str | None:
    """Why the model cannot be split `tp` ways (None when it can).

    Megatron-style tensor parallelism gives each rank whole attention heads, whole key/value heads and
    an equal slice of the MLP; sequence parallelism also splits the sequence between the blocks.
    """
    if tp == 1:
        return None
    if heads % tp:
        return f"parallel.tp = {tp} does not divide model.n_heads = {heads}"
    if kv_heads % tp:
        return f"parallel.tp = {tp} does not divide the key/value heads ({kv_heads})"
    if ffn % tp:
        return f"parallel.tp = {tp} does not divide model.ffn_dim = {ffn}"
    if sequence_parallel and seq_len % tp:
        return f"parallel.sequence_parallel splits train.seq_len = {seq_len} over tp = {tp}: it must divide"
    return None


def pipeline_problem(pp: int, *, schedule: str, microbatches: int, layers: int, tied_embeddings: bool) -> str | None:
    """Why this pipeline cannot run (None when it can); `microbatches` is the count per step per data rank."""
    if pp == 1:
        return None
    chunks = pipeline_chunks(pp, schedule)
    stages = pp * chunks
    if stages > layers:
        return (
            f"parallel.pp = {pp} needs {stages} pipeline stages"
            + (f" ({chunks} per rank for interleaved_1f1b)" if chunks > 1 else "")
            + f", more than model.n_layers = {layers}"
        )
    if tied_embeddings:
        return (
            "parallel.pp > 1 puts the embedding and the LM head on different stages, "
            "so model.tie_embeddings must be false"
        )
    if schedule != "gpipe" and microbatches < pp:
        return (
            f"parallel.pp_microbatches = {microbatches} is less than pp = {pp}: "
            f"{schedule} needs at least one microbatch per stage"
        )
    if schedule == "interleaved_1f1b" and microbatches % pp:
        return f"parallel.pp_microbatches = {microbatches} must be a multiple of pp = {pp} for interleaved_1f1b"
    return None


def batch_problem(batch_size: int, dp: int, microbatches: int) -> str | None:
    """Why the batch does not split over `dp` data-parallel ranks and then `microbatches` (None when it does)."""
    if batch_size % dp:
        return (
            f"train.batch_size = {batch_size} must divide by the data-parallel degree "
            f"dp_replicate x dp_shard = {dp}"
        )
    if (batch_size // dp) % microbatches:
        return (
            f"each data-parallel rank gets train.batch_size / dp = {batch_size // dp} sequences, "
            f"which parallel.pp_microbatches = {microbatches} does not divide"
        )
    return None
