"""The hardware catalogue (hardware.toml) and how a device the driver names maps onto it."""

from __future__ import annotations

import functools
import tomllib
from importlib.resources import files
from typing import Any


@functools.cache
def catalogue() -> dict[str, Any]:
    """The parsed catalogue: `accelerators`, `calibration`, `defaults`, `currency` (read once)."""
    text = files("jijian.spec").joinpath("hardware.toml").read_text(encoding="utf-8")
    parsed: dict[str, Any] = tomllib.loads(text)
    return parsed


def accelerator_for_device(device_name: str) -> str | None:
    """The catalogue's accelerator for a name as the driver reports it ("NVIDIA H100 PCIe"), or None.

    Every accelerator lists the substrings its driver names contain; the longest one found wins, so
    the answer does not depend on the catalogue's order ("H100 PCIe" is not "H100 SXM", "H200" not "H20").
    """
    lowered = device_name.lower()
    best: tuple[int, str] | None = None
    for name, entry in catalogue()["accelerators"].items():
        for pattern in entry.get("device_names", ()):
            if pattern.lower() in lowered and (best is None or len(pattern) > best[0]):
                best = (len(pattern), name)
    return None if best is None else best[1]
