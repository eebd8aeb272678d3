"""Tensor-parallel serving: one model split over N processes, driven by the engine in the first.

The split follows Megatron-LM: q/k/v and gate/up are cut by output rows (each rank keeps whole heads
and a slice of the FFN), o_proj and down_proj by input columns, whose partial products one all-reduce
per block sums. Query heads go with their key/value head, so a rank's grouped-query attention needs
nothing from the others; KV-head groups and FFN rows are dealt out as evenly as possible, which also
serves head counts that N does not divide (SmolLM2's 3 KV heads over 2 ranks: 2 + 1). Norms, the
embedding and the output head are replicated.

The engine (scheduler, KV block bookkeeping, sampling) runs only in rank 0's process, as in vLLM.
Each step, `TensorParallelRunner.execute` broadcasts the step's inputs — token ids, positions, block
tables — and every rank runs the same forward pass over its own shard and its own paged KV cache
(only its KV heads). Rank 0 samples from the logits; the workers' logits are dropped.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import shutil
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from jijian.config import ModelConfig, UserInputError
from jijian.config.hf_config import HFFormatError, read_hf_config
from jijian.model.device import process_group_backend, resolve_device
from jijian.model.hf import model_config_from_hf, read_hf_slices
from jijian.model.llama import CausalLM, build_model, rope_inverse_frequencies
from jijian.serve.quant import Int4Linear, Int8Linear, quantize_model
from jijian.serve.runner import ModelRunner

if TYPE_CHECKING:
    from jijian.config import DeployConfig

FIELD = "serve.tensor_parallel"


class TensorParallelError(UserInputError):
    """A tensor-parallel degree the model cannot be split into."""


def even_split(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges cutting `total` into `parts` pieces whose sizes differ by at most one."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for part in range(parts):
        end = start + base + (1 if part < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def check_tensor_parallel(cfg: ModelConfig, world: int) -> None:
    """Refuse a degree that leaves a rank without a key/value head (every rank needs one to attend)."""
    if world < 1:
        raise TensorParallelError(f"{FIELD} = {world} must be at least 1")
    if world > cfg.kv_heads:
        raise TensorParallelError(
            f"{FIELD} = {world} exceeds the model's {cfg.kv_heads} key/value heads: each rank needs at least "
            f"one; use {FIELD} <= {cfg.kv_heads}"
        )


class RowParallelLinear(nn.Module):
    """A linear layer over a slice of its input features: local product, then a sum over the ranks."""

    def __init__(self, local: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.local = local
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.local(x)
        dist.all_reduce(out)  # the default group: the serving ranks and nothing else
        return out if self.bias is None else out + self.bias


def _sliced(module: nn.Module, rows: slice = slice(None), cols: slice = slice(None)) -> nn.Module:
    """A copy of a linear layer (float, int8 or int4) keeping output rows `rows` and input columns `cols`."""
    if isinstance(module, Int8Linear):
        weight, scale, full_bias = module.weight, module.scale, module.bias
        # Buffers, which nn.Module's typing sees as Tensor | Module.
        assert isinstance(weight, torch.Tensor) and isinstance(scale, torch.Tensor)
        bias = full_bias[rows] if isinstance(full_bias, torch.Tensor) and cols == slice(None) else None
        return Int8Linear(weight[rows, cols].contiguous(), scale[rows].contiguous(), bias)
    if isinstance(module, Int4Linear):  # a directory imported with int4 projections: split its portable form
        return _sliced_int4(module, rows, cols)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"cannot split a {type(module).__name__} for tensor parallelism")
    weight = module.weight.detach()[rows, cols].contiguous()
    has_bias = module.bias is not None and cols == slice(None)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        out.bias = nn.Parameter(module.bias.detach()[rows].contiguous(), requires_grad=False)
    return out


def _sliced_int4(module: Int4Linear, rows: slice, cols: slice) -> Int4Linear:
    group = module.group_size
    start, stop, _ = cols.indices(module.in_features)
    if start % group or stop % group:
        raise TensorParallelError(
            f"{FIELD}: input features {start}..{stop} of an int4 projection do not fall on its groups of {group}; "
            "serve this model with fewer ranks, or import it with --weights int8 or fp32"
        )
    packed, scales, full_bias = module.qweight, module.scales_and_zeros, module.bias
    # Buffers, which nn.Module's typing sees as Tensor | Module.
    assert isinstance(packed, torch.Tensor) and isinstance(scales, torch.Tensor)
    bias = full_bias[rows] if isinstance(full_bias, torch.Tensor) and cols == slice(None) else None
    qweight = packed[rows, start // 2 : stop // 2].contiguous()
    scales_and_zeros = scales[start // group : stop // group, rows].contiguous()
    return Int4Linear(qweight, scales_and_zeros, group, bias)


def rank_rows(cfg: ModelConfig, rank: int, world: int) -> tuple[slice, slice, slice]:
    """The output rows rank `rank` keeps of (q_proj, k/v_proj, gate/up_proj): its KV-head groups and FFN rows."""
    check_tensor_parallel(cfg, world)
    head_dim, per_group = cfg.head_size, cfg.n_heads // cfg.kv_heads
    kv_start, kv_end = even_split(cfg.kv_heads, world)[rank]
    kv_rows = slice(kv_start * head_dim, kv_end * head_dim)
    q_rows = slice(kv_start * per_group * head_dim, kv_end * per_group * head_dim)
    ffn_start, ffn_end = even_split(cfg.ffn_dim, world)[rank]
    return q_rows, kv_rows, slice(ffn_start, ffn_end)


def shard_slices(cfg: ModelConfig, rank: int, world: int) -> dict[str, tuple[slice, ...]]:
    """How rank `rank` cuts each split tensor, by its Hugging Face name; other tensors are kept whole."""
    q_rows, kv_rows, ffn_rows = rank_rows(cfg, rank, world)
    every = slice(None)
    cuts: dict[str, tuple[slice, ...]] = {}
    for index in range(cfg.n_layers):
        attn, mlp = f"model.layers.{index}.self_attn", f"model.layers.{index}.mlp"
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            cuts[f"{attn}.{name}.weight"] = (rows,)
            cuts[f"{attn}.{name}.bias"] = (rows,)
        cuts[f"{attn}.o_proj.weight"] = (every, q_rows)
        cuts[f"{mlp}.gate_proj.weight"] = (ffn_rows,)
        cuts[f"{mlp}.up_proj.weight"] = (ffn_rows,)
        cuts[f"{mlp}.down_proj.weight"] = (every, ffn_rows)
    return cuts


def shard_model(model: CausalLM, rank: int, world: int) -> CausalLM:
    """Keep rank `rank`'s share of every block (in place): its KV-head groups and FFN rows."""
    cfg = model.cfg
    check_tensor_parallel(cfg, world)
    if world == 1:
        return model
    q_rows, kv_rows, ffn_rows = rank_rows(cfg, rank, world)
    for layer in model.model.layers.values():
        attn, mlp = layer.get_submodule("self_attn"), layer.get_submodule("mlp")
        attn.q_proj = _sliced(attn.get_submodule("q_proj"), rows=q_rows)
        attn.k_proj = _sliced(attn.get_submodule("k_proj"), rows=kv_rows)
        attn.v_proj = _sliced(attn.get_submodule("v_proj"), rows=kv_rows)
        attn.o_proj = _row_parallel(attn.get_submodule("o_proj"), q_rows)
        mlp.gate_proj = _sliced(mlp.get_submodule("gate_proj"), rows=ffn_rows)
        mlp.up_proj = _sliced(mlp.get_submodule("up_proj"), rows=ffn_rows)
        mlp.down_proj = _row_parallel(mlp.get_submodule("down_proj"), ffn_rows)
    return model


def load_shard(directory: Path, rank: int, world: int, dtype: torch.dtype | None) -> CausalLM:
    """Rank `rank`'s shard of an HF directory, reading only its slices of the split tensors (on the CPU).

    The model is laid out on the meta device and cut there, so the shapes and module names are those
    `shard_model` gives; then each tensor is read from the memory-mapped files already cut.
    """
    cfg = model_config_from_hf(read_hf_config(directory), source=str(directory / "config.json"))
    model = shard_model(build_model(cfg, device="meta"), rank, world)
    cuts = shard_slices(cfg, rank, world)
    # A row-parallel layer's product lives in `.local`; its bias (added once, after the sum) stays whole.
    names = {name: name.replace(".local.", ".") for name, _ in model.named_parameters()}
    tensors = read_hf_slices(directory, {hf: cuts.get(hf, ()) for hf in names.values()}, dtype)
    for name, hf in names.items():
        expected = tuple(model.get_parameter(name).shape)
        if tuple(tensors[hf].shape) != expected:
            raise HFFormatError(
                f"{directory}: tensor {hf} gives rank {rank} a shape {tuple(tensors[hf].shape)}, "
                f"config.json implies {expected}"
            )
    model.load_state_dict({name: tensors[hf] for name, hf in names.items()}, strict=False, assign=True)
    model.tie_weights()
    model.model.inv_freq = rope_inverse_frequencies(cfg)
    return model.eval()


def _row_parallel(module: nn.Module, cols: slice) -> RowParallelLinear:
    bias = getattr(module, "bias", None)
    return RowParallelLinear(_sliced(module, cols=cols), None if bias is None else bias.detach())


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: sends each step's inputs to the worker ranks, then runs its own shard."""

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, team: TensorParallelTeam) -> None:
        super().__init__(model, num_blocks, block_size)
        self.team = team

    def execute(
        self,
        token_ids: Sequence[Sequence[int]],
        start_positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        logits_counts: Sequence[int],
        adapter_ids: Sequence[int | None] | None = None,
    ) -> torch.Tensor:
        """Broadcast the step, then run it here too (every rank must join each block's all-reduce)."""
        if adapter_ids is not None and any(a is not None for a in adapter_ids):
            raise ValueError("LoRA adapters are not served under tensor parallelism")
        step = [list(map(list, token_ids)), list(start_positions), list(map(list, block_tables)), list(logits_counts)]
        self.team.send(step)
        return super().execute(token_ids, start_positions, block_tables, logits_counts)

    def close(self) -> None:
        """Stop the worker ranks and leave the process group."""
        self.team.close()


class TensorParallelTeam:
    """The worker processes of a tensor-parallel model and the process group rank 0 shares with them."""

    def __init__(self, world: int, workers: list[Any], store_dir: Path) -> None:
        self.world = world
        self.workers = workers
        self.store_dir = store_dir
        self.closed = False

    def send(self, step: list[Any] | None) -> None:
        """Broadcast one step's inputs (None: stop) from rank 0."""
        dist.broadcast_object_list([step], src=0)

    def close(self) -> None:
        """Tell the workers to stop, wait for them, and tear the group down (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # a worker that died already cannot hear the message
            self.send(None)
        for worker in self.workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(self.store_dir, ignore_errors=True)


def _join_group(store_dir: Path, rank: int, world: int, device: torch.device, timeout_s: float) -> None:
    # A file store: no port to find, hold and hand over (another process could take it in between).
    # torch.distributed re-exports FileStore without __all__ or an `as` alias, which strict mypy does not count.
    store = dist.FileStore(str(store_dir / "store"), world)
    dist.init_process_group(
        process_group_backend(device), store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )


def _worker_main(config: DeployConfig, rank: int, world: int, store_dir: Path, num_blocks: int) -> None:
    """A worker rank: load and shard the model, then run every step rank 0 broadcasts until told to stop."""
    from jijian.serve.server import load_model  # deferred: the server module imports this one

    torch.set_grad_enabled(False)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    shard, _, _ = load_model(config, tp_rank=rank)
    device = rank_device(config, rank)
    _join_group(store_dir, rank, world, device, config.serve.request_timeout_s)
    runner = ModelRunner(_on_device(shard, config, rank, device), num_blocks, config.serve.block_size)
    try:
        while True:
            message: list[Any] = [None]
            dist.broadcast_object_list(message, src=0)
            if message[0] is None:
                break
            runner.execute(*message[0])
    finally:
        dist.destroy_process_group()


def rank_device(config: DeployConfig, rank: int) -> torch.device:
    """Rank r serves from accelerator r of this machine (or the CPU)."""
    device = resolve_device(config.serve.device, "serve.device")
    if device.type == "cpu":
        return device
    if rank >= torch.accelerator.device_count():
        raise TensorParallelError(
            f"{FIELD} = {config.serve.tensor_parallel} but this machine has "
            f"{torch.accelerator.device_count()} {device.type} devices"
        )
    torch.accelerator.set_device_index(rank)
    return torch.device(device.type, rank)


def start_tensor_parallel(config: DeployConfig, shard: CausalLM, num_blocks: int) -> TensorParallelRunner:
    """Start ranks 1..N-1 (spawned processes), join them in a process group, and serve rank 0's shard.

    `shard` is rank 0's shard on the host (`load_model(config)` gives it); it moves to rank 0's device.
    Each other rank loads its own shard.
    """
    world = config.serve.tensor_parallel
    check_tensor_parallel(shard.cfg, world)
    if dist.is_initialized():
        raise TensorParallelError(f"{FIELD} needs its own process group, but this process already joined one")
    store_dir = Path(tempfile.mkdtemp(prefix="jijian-tp-"))
    context = mp.get_context("spawn")
    workers = [
        context.Process(
            target=_worker_main, args=(config, rank, world, store_dir, num_blocks), name=f"jijian-tp{rank}", daemon=True
        )
        for rank in range(1, world)
    ]
    for worker in workers:
        worker.start()
    device = rank_device(config, 0)
    team = TensorParallelTeam(world, workers, store_dir)
    try:
        _join_group(store_dir, 0, world, device, config.serve.request_timeout_s)
    except BaseException:
        team.closed = True
        for worker in workers:
            worker.kill()
        shutil.rmtree(store_dir, ignore_errors=True)
        raise
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    return TensorParallelRunner(_on_device(shard, config, 0, device), num_blocks, config.serve.block_size, team)


def _on_device(shard: CausalLM, config: DeployConfig, rank: int, device: torch.device) -> CausalLM:
    """Rank `rank`'s shard on its device, its projections in `[serve] weights` format (packed for that device)."""
    serve = config.serve
    on_device = shard.to(device)
    return quantize_model(on_device, serve.weights, group_size=serve.int4_group_size, source=f"rank {rank}'s shard")
