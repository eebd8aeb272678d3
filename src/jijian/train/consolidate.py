"""The one way a run's final model is written: stream a sharded DCP checkpoint into a Hugging Face directory.

The end of a training run and `jijian train export` both call `write_hf_from_dcp`. It reads the
checkpoint's metadata for shapes, then loads and writes one safetensors shard at a time, so the
writing process holds at most one shard (`max_shard_bytes`), never the whole model — a 70B run's
export needs a few GB of host memory, not hundreds.
"""

from __future__ import annotations

from pathlib import Path

import torch

# DCP's package __init__ re-exports these without __all__, so strict mypy sees them only in their own modules.
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from jijian.config import ModelConfig
from jijian.config.hf_config import WriteBytes
from jijian.config.schema import LoraConfig
from jijian.model.hf import DEFAULT_MAX_SHARD_BYTES, TensorSpec, save_hf_tensors
from jijian.model.lora import (
    INT8_SCALE_SUFFIX,
    dequantize_int8_base,
    int8_base_layers,
    is_lora_parameter,
    merge_lora_state,
)
from jijian.model.tokenizer import Tokenizer

MODEL_PREFIX = "model."


def model_tensor_specs(checkpoint: Path, prefix: str = MODEL_PREFIX) -> dict[str, TensorSpec]:
    """Shape and dtype of every model tensor in a DCP checkpoint, keyed by its Hugging Face name."""
    metadata = FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    return {
        key.removeprefix(prefix): TensorSpec(tuple(meta.size), meta.properties.dtype)
        for key, meta in metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }


def _load(checkpoint: Path, specs: dict[str, TensorSpec], names: list[str]) -> dict[str, torch.Tensor]:
    """Just these model tensors, each assembled by DCP from however many ranks' shards were saved."""
    state = {MODEL_PREFIX + n: torch.empty(specs[n].shape, dtype=specs[n].dtype) for n in names}
    dcp_load(state, storage_reader=FileSystemReader(checkpoint), no_dist=True)
    return {n: state[MODEL_PREFIX + n] for n in names}


def write_hf_from_dcp(
    checkpoint: Path,
    model_cfg: ModelConfig,
    tokenizer: Tokenizer | None,
    to: Path,
    *,
    lora: LoraConfig | None = None,
    write_bytes: WriteBytes | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the model tensors of DCP checkpoint `checkpoint` as an HF directory `to`, one shard in memory at a time.

    With `lora`, each adapted weight is written merged (W + alpha/rank * B A), read beside its two adapters.
    A frozen base stored as int8 (`train.lora.base_weights = "int8"`) is written dequantised, codes * scale,
    in the dtype of the checkpoint's other float tensors, and the adapters merge onto that dequantised weight:
    the model the run trained and evaluated, not the original float base (which differs by int8 rounding).
    """
    specs = model_tensor_specs(checkpoint)
    int8_layers = int8_base_layers(specs, {n: spec.dtype for n, spec in specs.items()})
    float_dtype = next(
        (spec.dtype for n, spec in specs.items() if spec.dtype.is_floating_point and not n.endswith(INT8_SCALE_SUFFIX)),
        torch.float32,
    )
    int8_weights = {f"{layer}.weight" for layer in int8_layers}
    base = {
        n: TensorSpec(spec.shape, float_dtype) if n in int8_weights else spec
        for n, spec in specs.items()
        if not is_lora_parameter(n) and n.removesuffix(INT8_SCALE_SUFFIX) not in int8_layers
    }

    def fetch(names: list[str]) -> dict[str, torch.Tensor]:
        adapted = [n for n in names if f"{n.removesuffix('.weight')}.lora_A.weight" in specs]
        extra = [f"{n.removesuffix('.weight')}.lora_{ab}.weight" for n in adapted for ab in "AB"]
        scales = [f"{n.removesuffix('.weight')}{INT8_SCALE_SUFFIX}" for n in names if n in int8_weights]
        tensors = dequantize_int8_base(_load(checkpoint, specs, names + scales + (extra if lora is not None else [])))
        if lora is not None:
            tensors = merge_lora_state(tensors, lora.alpha / lora.rank)
        return {n: t.to(float_dtype) if n in int8_weights else t for n, t in tensors.items()}

    return save_hf_tensors(
        base, fetch, model_cfg, tokenizer, to, max_shard_bytes=max_shard_bytes, write_bytes=write_bytes
    )


def read_lora_from_dcp(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The LoRA adapter tensors of a DCP checkpoint (small: rank x width per adapted matrix)."""
    specs = model_tensor_specs(checkpoint)
    return _load(checkpoint, specs, [n for n in specs if is_lora_parameter(n)])
