"""The device and dtype a model runs on, chosen through `torch.accelerator` (CUDA, XPU, ... without special cases).

Training (`[train] device/dtype`) and serving (`[serve] device/dtype`) resolve them here, so both refuse
the same impossible requests with the same messages, naming the field.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from jijian.config import UserInputError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class DeviceError(UserInputError):
    """A config asks for a device or dtype this machine cannot run."""


def accelerator_type() -> str | None:
    """The accelerator PyTorch found (cuda, xpu, mps, ...), or None on a CPU-only machine."""
    if not torch.accelerator.is_available():
        return None
    current = torch.accelerator.current_accelerator()
    return current.type if current is not None else None


def resolve_device(name: str, field: str) -> torch.device:
    """'auto' picks the accelerator PyTorch finds, else the CPU; asking for a missing one is an error."""
    found = accelerator_type()
    if name == "auto":
        return torch.device(found or "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if found != name:
        have = f"this machine has {found}" if found else "this machine has no accelerator"
        raise DeviceError(f'{field} = {name!r} but {have}; use {field} = "auto" (or "cpu")')
    return torch.device(name)


def supports_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the device computes in `dtype`: bf16 needs CUDA compute capability 8.0+; CPUs lack fast fp16."""
    if dtype == torch.bfloat16 and device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return not (dtype == torch.float16 and device.type == "cpu")


def device_name(device: torch.device) -> str:
    """A human name for messages: the GPU's model, else the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "the CPU" if device.type == "cpu" else device.type


def resolve_dtype(name: str, device: torch.device, field: str) -> torch.dtype:
    """'auto' is bf16 on an accelerator that has it (else fp16) and fp32 on the CPU; others are checked."""
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if supports_dtype(device, torch.bfloat16) else torch.float16
    if name not in DTYPES:
        raise DeviceError(f"{field} = {name!r} is not one of auto, {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if not supports_dtype(device, dtype):
        raise DeviceError(f'{field} = {name!r} but {device_name(device)} cannot run it; use "auto" or "float32"')
    return dtype


def process_group_backend(device: torch.device) -> str:
    """A backend for CPU tensors and one for the accelerator's, e.g. 'cpu:gloo,cuda:nccl'.

    One group serves both devices, so a small CPU-side tensor (a flag, an object list) can be
    all-reduced beside the accelerator's tensors; an NCCL-only group would fail on the first one.
    """
    if device.type == "cpu":
        return "gloo"
    accelerator_backend = dist.Backend.default_device_backend_map.get(device.type)
    if accelerator_backend is None:
        raise DeviceError(f"torch.distributed knows no collective backend for device type {device.type!r}")
    if accelerator_backend == "gloo":
        return "gloo"
    return f"cpu:gloo,{device.type}:{accelerator_backend}"
