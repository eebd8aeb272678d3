"""The device's peak FLOP/s, for model FLOPs utilisation (MFU; the FLOPs per token are jijian.spec.shape's)."""

from __future__ import annotations

import time

import torch

from jijian.spec import accelerator_for_device, catalogue


def measure_matmul_flops(device: torch.device, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a square fp32 matmul, measured (the honest peak of a CPU, whose datasheet rarely applies)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up: thread pool and caches
    runs, start = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * size**3 * runs / elapsed


def catalogue_peak_flops(device_name: str) -> tuple[float, str] | None:
    """The catalogue's dense bf16 peak FLOP/s for a device the driver names, and its source; None if unknown."""
    accelerator = accelerator_for_device(device_name)
    if accelerator is None:
        return None
    tflops = float(catalogue()["accelerators"][accelerator]["bf16_tflops"])
    return tflops * 1e12, f"catalogue bf16 dense for {accelerator} ({device_name})"


def peak_flops(device: torch.device, configured_tflops: float | None) -> tuple[float, str]:
    """Peak FLOP/s per device and where the figure came from."""
    if configured_tflops is not None:
        return configured_tflops * 1e12, "[hardware] peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = catalogue_peak_flops(name)
        if peak is not None:
            return peak
        return measure_matmul_flops(device, size=4096), f"measured fp32 matmul on {name}"
    if device.type != "cpu":
        return measure_matmul_flops(device, size=4096), f"measured fp32 matmul on {device.type}"
    return measure_matmul_flops(device), "measured fp32 matmul on this CPU"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this rank so far: allocated on the accelerator, or the process's peak RSS on CPU."""
    if device.type != "cpu":
        return torch.accelerator.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
