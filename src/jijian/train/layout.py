"""The parallel layout of a run, resolved and checked before any rank starts.

Pure Python on purpose: the launcher validates `[parallel]` against the world size, the model shape
and the batch before it spends a second starting processes, and every error names its field.
"""

from __future__ import annotations

from dataclasses import dataclass

from jijian.config import DeployConfig, ParallelConfig, UserInputError
from jijian.spec.layout import batch_problem, pipeline_chunks, pipeline_problem, tensor_parallel_problem


class LayoutError(UserInputError):
    """`[parallel]` (with `[model]` and `[train]`) describes a layout that cannot run."""


@dataclass(frozen=True)
class Layout:
    """Degrees of each parallel dimension for one world size; their product is the world size."""

    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    sequence_parallel: bool = False
    pp_schedule: str = "1f1b"
    pp_microbatches: int = 1

    @property
    def world_size(self) -> int:
        """Ranks the layout needs."""
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different slices of each batch are processed at once."""
        return self.dp_replicate * self.dp_shard

    @property
    def stages_per_rank(self) -> int:
        """Pipeline stages held by each pipeline rank (2 for the interleaved schedule, else 1)."""
        return pipeline_chunks(self.pp, self.pp_schedule)

    def describe(self) -> str:
        """Short human-readable form, e.g. 'dp_shard=2 x tp=2 (world 4)'."""
        parts = [f"{name}={getattr(self, name)}" for name in ("dp_replicate", "dp_shard", "tp", "pp")]
        parts = [p for p in parts if not p.endswith("=1")] or ["single process"]
        extra = []
        if self.tp > 1:
            extra.append("sp" if self.sequence_parallel else "no sp")
        if self.pp > 1:
            extra.append(f"{self.pp_schedule}, {self.pp_microbatches} microbatches")
        return " x ".join(parts) + (f" ({', '.join(extra)})" if extra else "") + f", world {self.world_size}"


def requested_world_size(parallel: ParallelConfig) -> int | None:
    """The world size the layout implies on its own, or None when dp_shard = -1 leaves it open."""
    if parallel.dp_shard == -1:
        return None
    return parallel.dp_replicate * parallel.dp_shard * parallel.tp * parallel.pp


def resolve_layout(config: DeployConfig, world_size: int) -> Layout:
    """Fill in dp_shard = -1 and the microbatch default, and check every constraint; raise LayoutError."""
    par, model, train = config.parallel, config.model, config.train
    others = par.dp_replicate * par.tp * par.pp
    if par.dp_shard == -1:
        if world_size % others:
            raise LayoutError(
                f"parallel: dp_replicate x tp x pp = {others} does not divide the world size {world_size}, "
                "so dp_shard = -1 cannot fill the remaining ranks"
            )
        dp_shard = world_size // others
    else:
        dp_shard = par.dp_shard
        if others * dp_shard != world_size:
            raise LayoutError(
                f"parallel: dp_replicate x dp_shard x tp x pp = {par.dp_replicate} x {dp_shard} x {par.tp} x "
                f"{par.pp} = {others * dp_shard}, but the world size is {world_size}; the product must equal it"
            )
    problem = tensor_parallel_problem(
        par.tp,
        heads=model.n_heads,
        kv_heads=model.kv_heads,
        ffn=model.ffn_dim,
        seq_len=train.seq_len,
        sequence_parallel=par.sequence_parallel,
    )
    microbatches = 1
    if par.pp > 1:
        # The default keeps every stage busy: one microbatch per stage a rank holds.
        microbatches = par.pp_microbatches or par.pp * pipeline_chunks(par.pp, par.pp_schedule)
    problem = problem or pipeline_problem(
        par.pp,
        schedule=par.pp_schedule,
        microbatches=microbatches,
        layers=model.n_layers,
        tied_embeddings=model.tie_embeddings,
    )
    problem = problem or batch_problem(train.batch_size, par.dp_replicate * dp_shard, microbatches)
    if problem:
        raise LayoutError(problem)
    return Layout(
        pp=par.pp,
        dp_replicate=par.dp_replicate,
        dp_shard=dp_shard,
        tp=par.tp,
        sequence_parallel=par.sequence_parallel and par.tp > 1,
        pp_schedule=par.pp_schedule,
        pp_microbatches=microbatches,
    )
