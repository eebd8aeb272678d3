"""A training run from a DeployConfig, as one process or as one rank of many: data, model, loop, export."""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console

# DCP's package __init__ re-exports these without __all__, so strict mypy sees them only in their own modules.
from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from jijian.config import DeployConfig, ModelConfig, UserInputError, dump_config
from jijian.config.hf_config import read_hf_config
from jijian.config.schema import LoraConfig
from jijian.data import PackedLoader, open_train_loader
from jijian.files.rundir import checkpoint_step
from jijian.model import CausalLM
from jijian.model.device import resolve_device
from jijian.model.hf import model_config_from_hf
from jijian.model.lora import base_fingerprint, lora_state, save_peft_adapter
from jijian.model.tokenizer import Tokenizer
from jijian.spec.shape import ModelShape, training_flops_per_token
from jijian.train.checkpoint import CheckpointManager, Rejected, newest_valid_checkpoint
from jijian.train.consolidate import MODEL_PREFIX, read_lora_from_dcp, write_hf_from_dcp
from jijian.train.distributed import check_dtype, env_world_size, init_distributed, is_rank0
from jijian.train.flops import peak_flops
from jijian.train.goodput import LEDGER, GoodputLedger
from jijian.train.layout import resolve_layout
from jijian.train.metrics import MetricsLogger
from jijian.train.norms import local_part
from jijian.train.parallel import ModelParts, build_model_parts, build_parallel_dims
from jijian.train.parallel.parallelize import int8_base_problem
from jijian.train.trainer import (
    Throughput,
    Trainer,
    TrainResult,
    cross_entropy_loss,
    read_instability,
)

if TYPE_CHECKING:
    from jijian.data.chat import ChatBatches

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


def model_shape(config: DeployConfig) -> ModelConfig:
    """The model's shape: [model], or the config.json of [model].hf_path (whose weights each rank reads later)."""
    if config.model.hf_path is None:
        return config.model
    hf_path = config.model.hf_path
    return model_config_from_hf(read_hf_config(hf_path), source=str(hf_path / "config.json"))


def _batches(
    config: DeployConfig, tokenizer: Tokenizer, console: Console | None
) -> tuple[PackedLoader | ChatBatches, list[tuple[torch.Tensor, ...]] | None, int, int]:
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


def write_final_model(
    trainer: Trainer, config: DeployConfig, model_cfg: ModelConfig, tokenizer: Tokenizer, model_dir: Path
) -> None:
    """Write the trained model in HF format from its shards: every rank saves its own, rank 0 streams them out.

    The run's last checkpoint already holds the final weights when checkpoints are on; otherwise the
    ranks save the model's shards once to a scratch directory. Either way the HF directory is written
    by `write_hf_from_dcp`, as `jijian train export` writes it, and no rank gathers the whole model.
    """
    source: Path | None = None
    scratch = config.train.output_dir / ".final-model-shards"
    if trainer.checkpoints is not None and is_rank0():
        newest, _ = newest_valid_checkpoint(checkpoint_dir(config))
        source = newest if newest is not None and checkpoint_step(newest) == trainer.step else None
    if dist.is_initialized():
        shared = [str(source) if source is not None else None]
        dist.broadcast_object_list(shared, src=0)
        source = Path(shared[0]) if shared[0] is not None else None
    if source is None:
        state = {f"{MODEL_PREFIX}{k}": v for part in trainer.parts.parts for k, v in part.state_dict().items()}
        if is_rank0():
            shutil.rmtree(scratch, ignore_errors=True)
        dcp_save(state, storage_writer=FileSystemWriter(scratch), no_dist=not dist.is_initialized())
        source = scratch
    if is_rank0():
        lora = config.train.lora
        # A LoRA run: the merged model for everything else, and the adapter alone (PEFT) to serve beside the base.
        write_hf_from_dcp(source, model_cfg, tokenizer, model_dir, lora=lora)
        if lora is not None:
            adapter = read_lora_from_dcp(source)
            save_lora_adapter(adapter, lora, model_cfg, config.train.output_dir / "adapter", config.model.hf_path)
        shutil.rmtree(scratch, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def checkpoint_dir(config: DeployConfig) -> Path:
    """[checkpoint].dir, else `checkpoints/` inside the run's output directory."""
    return config.checkpoint.dir or config.train.output_dir / "checkpoints"


def run_training(config: DeployConfig, *, console: Console | None = None) -> TrainRun:
    """Train [model] on [data].sources per [train] and [parallel]; rank 0 writes metrics and the HF model."""
    tcfg = config.train
    world_size = env_world_size()
    layout = resolve_layout(config, world_size)
    problem = int8_base_problem(tcfg, layout)
    if problem:  # every rank refuses here, before any process group or data exists
        raise TrainSetupError(problem)
    device = resolve_device(tcfg.device, "train.device")
    check_dtype(device, tcfg.dtype)
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
    model_cfg = model_shape(config)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise TrainSetupError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {model_cfg.vocab_size}"
        )
    if config.data.format == "chat" and layout.pp > 1:
        raise TrainSetupError("data.format = 'chat' (document-masked packing) does not run under parallel.pp > 1")
    if tcfg.seq_len > model_cfg.max_seq_len:
        raise TrainSetupError(f"train.seq_len ({tcfg.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
    batches, eval_batches, train_tokens, n_files = _batches(config, tokenizer, console)

    accum = tcfg.grad_accum_steps

    def pipeline_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, targets) / accum

    # Multi-rank accelerator runs keep bf16 parameters under FSDP's policy; one device uses autocast instead.
    bf16 = device.type != "cpu" and tcfg.dtype in ("auto", "bfloat16")
    fsdp_bf16 = bf16 and dims.fsdp_mesh is not None
    parts = build_model_parts(
        model_cfg,
        tcfg,
        dims,
        device,
        pipeline_loss,
        param_dtype=torch.bfloat16 if fsdp_bf16 else None,
        initial_hf_dir=config.model.hf_path,
        parallel_cfg=config.parallel,
    )
    peak, peak_source = peak_flops(device, config.hardware.peak_tflops)
    model_flops = training_flops_per_token(ModelShape.from_config(model_cfg), tcfg.seq_len)
    throughput = Throughput(model_flops, peak, layout.world_size)

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
    resumed_from: Path | None = None
    skipped: list[Rejected] = []
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
            # The prefetch thread (started by fit's first batch) stops before the interpreter does: a
            # daemon thread still copying tokens in numpy when Python finalises is unwound through C++
            # frames and aborts the rank ("terminate called without an active exception").
            batches.close()
            if trainer.checkpoints is not None:
                trainer.checkpoints.close()
    if ledger is not None:
        ledger.record("end", step=trainer.step)
        ledger.close()
    model_dir = output_dir / "model"
    write_final_model(trainer, config, model_cfg, tokenizer, model_dir)
    if is_rank0():
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
