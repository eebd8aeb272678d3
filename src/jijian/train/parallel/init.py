"""Initialise a (possibly sharded) model so that every layout starts from the same weights.

Each parameter's full value comes from a generator seeded by (seed, parameter name), so it does
not depend on how the parameter is split; a rank then keeps only its shard. Only one parameter is
ever materialised in full, on the host: a model larger than one rank's memory can be built.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist

# DCP's package __init__ re-exports these without __all__, so strict mypy sees them only in their own modules.
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.tensor import DTensor, distribute_tensor

from jijian.config.hf_config import HFFormatError
from jijian.model import CausalLM
from jijian.model.llama import rope_inverse_frequencies
from jijian.model.lora import is_lora_parameter


def parameter_seed(seed: int, name: str) -> int:
    """A stable per-parameter seed (Python's hash() is salted per process, crc32 is not)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def full_initial_value(model: CausalLM, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The fp32 value parameter `name` starts from (on CPU), identical for every layout."""
    std = model.init_std(name)
    if std is None:
        return torch.ones(shape)
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_parameters(model: CausalLM, seed: int, device: torch.device) -> None:
    """Fill every parameter (plain or DTensor shard) and the RoPE buffer of a materialised model."""
    model.model.inv_freq = rope_inverse_frequencies(model.cfg, device=device)
    for name, param in model.named_parameters():
        assign_full_value(param, full_initial_value(model, name, param.shape, seed))


@torch.no_grad()
def load_hf_shards(model: CausalLM, hf_dir: Path, device: torch.device, seed: int = 0) -> None:
    """Fill a materialised (possibly sharded) model from a Hugging Face directory: each rank reads only its slices.

    DCP's Hugging Face reader memory-maps the safetensors files and copies, for every DTensor, just the
    rows or columns this rank owns (converting the dtype on the way), so no rank ever holds the full
    model: a 70B fine-tune on 8 GPUs reads 1/8 of the weights per rank. LoRA adapters, which a base
    checkpoint lacks, start from their usual initial values.
    """
    model.model.inv_freq = rope_inverse_frequencies(model.cfg, device=device)
    # named_parameters lists a tied weight once, under the embedding's name: the one HF stores.
    state = {}
    for name, param in model.named_parameters():
        if is_lora_parameter(name):
            assign_full_value(param, full_initial_value(model, name, param.shape, seed))
        else:
            state[name] = param
    metadata = HuggingFaceStorageReader(str(hf_dir)).read_metadata().state_dict_metadata
    missing = sorted(set(state) - set(metadata))
    if missing:
        raise HFFormatError(
            f"{hf_dir}: weights do not match config.json: missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    for name, param in state.items():
        # The reader describes every safetensors entry as a tensor (never as bytes).
        saved = tuple(cast(TensorStorageMetadata, metadata[name]).size)
        if saved != tuple(param.shape):
            raise HFFormatError(f"{hf_dir}: tensor {name} has shape {saved}, config.json implies {tuple(param.shape)}")
    dcp_load(state, storage_reader=HuggingFaceStorageReader(str(hf_dir)), no_dist=not dist.is_initialized())


@torch.no_grad()
def assign_full_value(param: torch.Tensor, full: torch.Tensor) -> None:
    """Set a parameter from its full value: a DTensor keeps only its own shard."""
    if isinstance(param, DTensor):
        # src_data_rank=None: every rank already holds `full`, so slicing needs no communication.
        local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
        param.to_local().copy_(local)
    else:
        param.copy_(full)
