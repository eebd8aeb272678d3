"""Consolidate a run's newest valid sharded checkpoint into a Hugging Face model directory, one shard at a time."""

from __future__ import annotations

from pathlib import Path

from jijian.config import UserInputError, load_config
from jijian.config.hf_config import WriteBytes
from jijian.files.rundir import checkpoint_step
from jijian.train.checkpoint import newest_valid_checkpoint, validate_checkpoint
from jijian.train.consolidate import read_lora_from_dcp, write_hf_from_dcp
from jijian.train.run import checkpoint_dir, load_tokenizer, model_shape, save_lora_adapter


class ExportError(UserInputError):
    """Nothing exportable: no run config, or no valid checkpoint."""


def export_checkpoint(
    run_dir: Path,
    to: Path,
    checkpoint: Path | None = None,
    write_bytes: WriteBytes | None = None,
    *,
    merge: bool = False,
) -> tuple[Path, Path]:
    """Write checkpoint (default: the newest valid one of `run_dir`) as HF weights; returns (model dir, source).

    A LoRA run exports its adapter in PEFT format, or with `merge` the base model with the adapters
    folded in. `write_bytes` writes each file instead of the file system (encryption at rest passes one).
    """
    config_path = run_dir / "deploy.toml"
    if not config_path.is_file():
        raise ExportError(f"{config_path} not found: RUN_DIR must be a training run's output directory")
    config = load_config(config_path)
    lora = config.train.lora
    if merge and lora is None:
        raise ExportError(f"--merge folds LoRA adapters into the base, but {config_path} has no [train] lora")
    if lora is not None and not merge and write_bytes is not None:
        raise ExportError("an encrypted export of a LoRA run needs --merge (adapters are written in plain PEFT format)")
    if checkpoint is None:
        checkpoint, rejected = newest_valid_checkpoint(checkpoint_dir(config))
        if checkpoint is None:
            reasons = "; ".join(f"{r.path.name}: {r.reason}" for r in rejected) or "none written"
            raise ExportError(f"no valid checkpoint under {checkpoint_dir(config)} ({reasons})")
    elif (reason := validate_checkpoint(checkpoint)) is not None:
        raise ExportError(f"checkpoint {checkpoint} is not valid: {reason}")
    model_cfg = model_shape(config)
    if lora is not None and not merge:
        adapter = read_lora_from_dcp(checkpoint)
        return save_lora_adapter(adapter, lora, model_cfg, to, base_model=config.model.hf_path), checkpoint
    write_hf_from_dcp(checkpoint, model_cfg, load_tokenizer(config), to, lora=lora, write_bytes=write_bytes)
    return to, checkpoint


def describe(checkpoint: Path) -> str:
    """'step N (path)' for messages."""
    return f"step {checkpoint_step(checkpoint)} ({checkpoint})"
