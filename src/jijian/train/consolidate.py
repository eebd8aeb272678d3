"""The one way a run's final model is written: stream a sharded DCP checkpoint into a Hugging Face directory.

The end of a training run and `jijian train export` both call `write_hf_from_dcp`. It reads the
checkpoint's metadata for shapes, then loads and writes one safetensors shard at a time, so the
writing process holds at most one shard (`max_shard_bytes`), never the whole model — a 70B run's
export needs a few GB of host memory, not hundreds.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from jijian.config import ModelConfig
from jijian.config.hf_config import WriteBytes
from jijian.model.hf import DEFAULT_MAX_SHARD_BYTES, TensorSpec, save_hf_tensors
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


def write_hf_from_dcp(
    checkpoint: Path,
    model_cfg: ModelConfig,
    tokenizer: Tokenizer | None,
    to: Path,
    *,
    write_bytes: WriteBytes | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the model tensors of DCP checkpoint `checkpoint` as an HF directory `to`, one shard in memory at a time."""
    specs = model_tensor_specs(checkpoint)
    reader = FileSystemReader(checkpoint)

    def fetch(names: list[str]) -> dict[str, torch.Tensor]:
        # DCP assembles each tensor from however many ranks' shards were saved, reading only these keys.
        state = {MODEL_PREFIX + n: torch.empty(specs[n].shape, dtype=specs[n].dtype) for n in names}
        dcp.load(state, storage_reader=reader, no_dist=True)
        return {n: state[MODEL_PREFIX + n] for n in names}

    return save_hf_tensors(
        specs, fetch, model_cfg, tokenizer, to, max_shard_bytes=max_shard_bytes, write_bytes=write_bytes
    )
