"""A training run from a DeployConfig, as one process or as one rank of many: data, model, loop, export."""

from __future__ import annotations

import json
import os
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from torch.distributed.tensor import DTensor

from jijian.config import DeployConfig, ModelConfig, UserInputError, dump_config
from jijian.config.schema import LoraConfig
from jijian.data import PackedLoader, open_train_loader
from jijian.model import CausalLM
from jijian.model.hf import load_hf, save_hf_state_dict
from jijian.model.lora import base_fingerprint, lora_state, merge_lora_state, save_peft_adapter
from jijian.model.tokenizer import Tokenizer
from jijian.train.checkpoint import CheckpointManager
from jijian.train.distributed import env_world_size, init_distributed, is_rank0
from jijian.train.flops import flops_per_token, peak_flops
from jijian.train.goodput import LEDGER, GoodputLedger
from jijian.train.layout import resolve_layout
from jijian.train.metrics import MetricsLogger
from jijian.train.norms import local_part
from jijian.train.parallel import ModelParts, ParallelDims, build_model_parts, build_parallel_dims
from jijian.train.trainer import (
    Throughput,
    Trainer,
    TrainResult,
    cross_entropy_loss,
    read_instability,
    resolve_device,
)

INSTABILITY = "instability.json"


class TrainSetupError(UserInputError):
    """The config asks for a run that cannot start (no data, no tokenizer, shapes that disagree)."""


@dataclass
class TrainRun:
    """Where a finished run put its outputs, and what it measured."""

    output_dir: Path
    model_dir: Path
    metrics_path: Path
    result: TrainResult


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(config: DeployConfig) -> Tokenizer:
    """The tokenizer named by [tokenizer].path, else the one inside [model].hf_path."""
    if config.tokenizer.path is not None:
        return Tokenizer.load(config.tokenizer.path)
    hf_path = config.model.hf_path
    if hf_path is not None and (hf_path / "tokenizer.json").is_file():
        return Tokenizer.load(hf_path)
    raise TrainSetupError(
        "tokenizer.path is not set and model.hf_path has no tokenizer.json: "
        "train one with `jijian tokenizer train` and set [tokenizer] path"
    )


def _starting_point(config: DeployConfig) -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
    """The model shape, and the weights to start from when [model].hf_path is given (else random init)."""
    if config.model.hf_path is None:
        return config.model, None
    model, _ = load_hf(config.model.hf_path, device="cpu")
    return model.cfg, {k: v.detach() for k, v in model.state_dict().items()}


def _batches(
    config: DeployConfig, tokenizer: Tokenizer, console: Console | None
) -> tuple[PackedLoader, list | None, int, int]:
    """The packed shards of [data] (built or reused by rank 0 first) as global batches and validation batches."""
    # Every rank draws the same global batches and keeps its own rows: the layout never changes the data.
    # Only rank 0 builds, so ranks never write the same shard files; the others open them afterwards.
    if is_rank0():
        data = open_train_loader(config, tokenizer, console=console)
    if dist.is_initialized():
        dist.barrier()
    if not is_rank0():
        data = open_train_loader(config, tokenizer, build=False)
    return data.loader, data.eval_batches or None, data.train_tokens, data.manifest["stats"]["input_files"]


def gather_full_state(parts: ModelParts, dims: ParallelDims) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU, assembled on rank 0 (other ranks get an empty dict)."""
    state: dict[str, torch.Tensor] = {}
    for part in parts.parts:
        for name, tensor in part.state_dict().items():
            # full_tensor() is a collective over the stage's mesh: every rank of the stage calls it in order.
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            state[name] = full.detach().to("cpu", copy=True)
    # One rank per pipeline stage (the one at data- and tensor-parallel position 0) sends it to rank 0.
    if dims.layout.pp > 1 and dims.dp_rank == 0 and dims.tp_rank == 0:
        gathered: list | None = [None] * dims.layout.pp if dist.get_rank() == 0 else None
        dist.gather_object(state, gathered, dst=0, group=dims.pp_group)
        if gathered is not None:
            state = {k: v for stage_state in gathered for k, v in stage_state.items()}
    return state if is_rank0() else {}


def checkpoint_dir(config: DeployConfig) -> Path:
    """[checkpoint].dir, else `checkpoints/` inside the run's output directory."""
    return config.checkpoint.dir or config.train.output_dir / "checkpoints"


def run_training(config: DeployConfig, *, console: Console | None = None) -> TrainRun:
    """Train [model] on [data].sources per [train] and [parallel]; rank 0 writes metrics and the HF model."""
    tcfg = config.train
    world_size = env_world_size()
    layout = resolve_layout(config, world_size)
    device = resolve_device(tcfg.device)
    if world_size > 1:
        device = init_distributed(device, tcfg.collective_timeout_s)
    if tcfg.cpu_offload and (device.type != "cuda" or layout.dp == 1):
        raise TrainSetupError(
            "train.cpu_offload moves FSDP-sharded parameters and optimizer state from GPU to host memory: "
            "it needs train.device = cuda and dp_replicate x dp_shard > 1"
        )
    dims = build_parallel_dims(layout, device.type)
    seed_everything(tcfg.seed)
    tokenizer = load_tokenizer(config)
    model_cfg, initial_state = _starting_point(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise TrainSetupError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {model_cfg.vocab_size}"
        )
    if tcfg.lora is not None and layout.tp > 1:
        raise TrainSetupError(
            "train.lora with parallel.tp > 1 is not supported: shard a LoRA run with dp_shard / dp_replicate instead"
        )
    if config.data.format == "chat" and layout.pp > 1:
        raise TrainSetupError("data.format = 'chat' (document-masked packing) does not run under parallel.pp > 1")
    if tcfg.seq_len > model_cfg.max_seq_len:
        raise TrainSetupError(f"train.seq_len ({tcfg.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
    batches, eval_batches, train_tokens, n_files = _batches(config, tokenizer, console)

    accum = tcfg.grad_accum_steps

    def pipeline_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, targets) / accum

    # Multi-rank CUDA runs keep bf16 parameters under FSDP's policy; one GPU uses autocast instead.
    bf16 = device.type == "cuda" and tcfg.dtype in ("auto", "bfloat16")
    fsdp_bf16 = bf16 and dims.fsdp_mesh is not None
    parts = build_model_parts(
        model_cfg,
        tcfg,
        dims,
        device,
        pipeline_loss,
        param_dtype=torch.bfloat16 if fsdp_bf16 else None,
        initial_state=initial_state,
        parallel_cfg=config.parallel,
    )
    peak, peak_source = peak_flops(device, config.hardware.peak_tflops)
    throughput = Throughput(flops_per_token(model_cfg, tcfg.seq_len), peak, layout.world_size)

    output_dir = tcfg.output_dir
    metrics_path = output_dir / "metrics.jsonl"
    ledger = None
    if is_rank0():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "deploy.toml").write_text(dump_config(config), encoding="utf-8")
        ledger = GoodputLedger(output_dir / LEDGER)
        ledger.record("attempt", restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    trainer = Trainer(
        parts,
        tcfg,
        batches,
        device=device,
        dims=dims,
        eval_batches=eval_batches,
        logger=None,
        throughput=throughput,
        autocast=torch.bfloat16 if bf16 and not fsdp_bf16 else None,
        ledger=ledger,
    )
    resumed_from, skipped = None, []
    if config.checkpoint.enabled:
        ckpt = config.checkpoint
        trainer.checkpoints = CheckpointManager(
            checkpoint_dir(config),
            tensors=trainer.state_tensors,
            interval=ckpt.interval,
            keep_last=ckpt.keep_last,
            keep_every=ckpt.keep_every,
            async_mode=ckpt.async_mode,
            log=ledger.record_event if ledger is not None else None,
        )
        resumed_from, skipped = trainer.checkpoints.choose()
        trainer.instability_path = output_dir / INSTABILITY
        if resumed_from is not None:
            trainer.restore(resumed_from)
            skip, rollbacks = read_instability(trainer.instability_path)
            trainer.skip_batches |= skip
            trainer.rollbacks = max(trainer.rollbacks, rollbacks)
    if ledger is not None:
        ledger.record("resume", to_step=trainer.step, checkpoint=str(resumed_from) if resumed_from else None)
    append = resumed_from is not None or bool(skipped)
    logging = (
        MetricsLogger(metrics_path, tcfg.steps, console=console, append=append) if is_rank0() else nullcontext(None)
    )
    with logging as logger:
        trainer.logger = logger
        for bad in skipped:
            trainer._log(step=trainer.step, event="checkpoint_skipped", path=str(bad.path), reason=bad.reason)
        if resumed_from is not None:
            trainer._log(step=trainer.step, event="resumed", checkpoint=str(resumed_from))
        if logger is not None:
            with torch.device("meta"):
                n_params = CausalLM(model_cfg).num_parameters()
            logger.log(
                {
                    "step": 0,
                    "event": "start",
                    "device": str(device),
                    "layout": layout.describe(),
                    "parameters": n_params,
                    "parameter_bytes_per_rank": _local_parameter_bytes(parts),
                    "trainable_parameters": _trainable_parameters(parts),
                    "data_dir": str(config.data.output_dir),
                    "train_tokens": train_tokens,
                    "files": n_files,
                    "flops_per_token": throughput.flops_per_token,
                    "peak_tflops_per_device": peak / 1e12,
                    "peak_source": peak_source,
                }
            )
        try:
            result = trainer.fit()
        finally:
            if trainer.checkpoints is not None:
                trainer.checkpoints.close()
    if ledger is not None:
        ledger.record("end", step=trainer.step)
        ledger.close()
    state = gather_full_state(parts, dims)
    model_dir = output_dir / "model"
    if is_rank0():
        if tcfg.lora is not None:
            # The adapter alone (PEFT format) for serving next to the base, and the merged model for everything else.
            save_lora_adapter(state, tcfg.lora, model_cfg, output_dir / "adapter", base_model=config.model.hf_path)
            state = merge_lora_state(state, tcfg.lora.alpha / tcfg.lora.rank)
        save_hf_state_dict(state, model_cfg, tokenizer, model_dir)
        summary = {k: v for k, v in asdict(result).items() if k != "losses"}
        summary["layout"] = layout.describe()
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return TrainRun(output_dir=output_dir, model_dir=model_dir, metrics_path=metrics_path, result=result)


def save_lora_adapter(
    state: dict[str, torch.Tensor], lora: LoraConfig, model_cfg: ModelConfig, to: Path, base_model: Path | None = None
) -> Path:
    """Write the adapter tensors of a full state dict as a PEFT LoRA directory."""
    return save_peft_adapter(
        lora_state(state),
        to,
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        targets=lora.targets,
        base_model=str(base_model or ""),
        base_fingerprint=base_fingerprint(model_cfg),
    )


def _trainable_parameters(parts: ModelParts) -> int:
    """Parameters the optimizer updates, over all ranks' shards (DTensor shapes are global)."""
    return sum(p.numel() for p in parts.parameters())


def _local_parameter_bytes(parts: ModelParts) -> int:
    """Bytes of parameters this rank stores (its shards only): shows how far sharding divides the model."""
    return sum(local_part(p).numel() * local_part(p).element_size() for p in parts.parameters())
