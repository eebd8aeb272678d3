"""Initialise a (possibly sharded) model so that every layout starts from the same weights.

Each parameter's full value comes from a generator seeded by (seed, parameter name), so it does
not depend on how the parameter is split; a rank then keeps only its shard. Only one parameter is
ever materialised in full, on the host: a model larger than one rank's memory can be built.
"""

from __future__ import annotations

import zlib

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

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
def load_full_state(model: CausalLM, state: dict[str, torch.Tensor], device: torch.device, seed: int = 0) -> None:
    """Copy a full (unsharded) state dict, e.g. a Hugging Face checkpoint, into a possibly sharded model.

    LoRA adapters, which a base checkpoint lacks, start from their usual initial values.
    """
    model.model.inv_freq = rope_inverse_frequencies(model.cfg, device=device)
    for name, param in model.named_parameters():
        if name not in state and is_lora_parameter(name):
            assign_full_value(param, full_initial_value(model, name, param.shape, seed))
            continue
        if name not in state:
            raise KeyError(f"initial state has no tensor {name!r}")
        assign_full_value(param, state[name].to(dtype=torch.float32, device="cpu"))


@torch.no_grad()
def assign_full_value(param: torch.Tensor, full: torch.Tensor) -> None:
    """Set a parameter from its full value: a DTensor keeps only its own shard."""
    if isinstance(param, DTensor):
        # src_data_rank=None: every rank already holds `full`, so slicing needs no communication.
        local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
        param.to_local().copy_(local)
    else:
        param.copy_(full)
