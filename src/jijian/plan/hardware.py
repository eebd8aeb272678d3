"""The planner's view of the hardware catalogue (spec/hardware.toml): accelerators, prices, calibration, overrides."""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass, fields, replace
from typing import Any

from jijian.config import HardwareConfig
from jijian.plan.errors import PlanError
from jijian.spec import catalogue

GB = 1e9
TERA = 1e12


@dataclass(frozen=True)
class Accelerator:
    """One accelerator model: peak compute, memory, links, power and price (CNY)."""

    name: str
    bf16_tflops: float
    fp8_tflops: float
    memory_gb: float
    memory_bandwidth_gbs: float
    link_gbs: float
    network_gbs: float
    devices_per_node: int
    device_watts: float
    node_kw: float
    rent_per_device_hour: float
    purchase_price: float
    source: str
    device_class: str = "gpu"  # whose [calibration] constants apply: "gpu" or "cpu"

    @property
    def peak_flops(self) -> float:
        """Dense bf16 peak in FLOP/s (the MFU denominator)."""
        return self.bf16_tflops * TERA

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.memory_gb * GB


@dataclass(frozen=True)
class Calibration:
    """Constants of the step-time and memory models for one device class (hardware.toml [calibration.*])."""

    gemm_efficiency: float
    elementwise_bytes_per_hidden: float
    link_efficiency: float
    usable_memory_fraction: float
    op_overhead_us: float  # host-side cost of one dispatched operation (launch, dispatcher)
    ops_per_layer: float  # operations one transformer layer dispatches per micro-batch, forward and backward
    ops_per_step: float  # operations outside the layers: embedding, head, loss, clipping, optimizer
    fragmentation_fraction: float  # allocator fragmentation on top of the live bytes
    optimizer_bytes_per_param: float  # memory traffic of gradient clipping and the AdamW step, per parameter
    mfu_error_low: float  # 10th percentile of log(observed / predicted) MFU under cross-validation
    mfu_error_high: float  # ... 90th percentile
    # Measured on one machine (`jijian plan calibrate`): (FLOPs of one matmul, achieved fraction of peak),
    # ascending; empty means every matmul runs at gemm_efficiency.
    matmul_curve: tuple[tuple[float, float], ...] = ()
    # Measured the same way: (bytes an elementwise kernel moves, achieved GB/s); empty means the datasheet figure.
    memory_curve: tuple[tuple[float, float], ...] = ()
    # Measured loss cost (log-softmax forward + backward) per logit; 0 means the bandwidth model of the logits.
    softmax_ns_per_logit: float = 0.0
    # Measured clipping + AdamW cost per parameter; 0 means optimizer_bytes_per_param over bandwidth.
    optimizer_ns_per_param: float = 0.0
    # Measured whole training step / the step the figures above predict for the same model (a local profile's
    # reference step): what separate kernel timings leave out. Scales a device's compute time, not its traffic.
    step_time_scale: float = 1.0

    def matmul_efficiency(self, flops: float) -> float:
        """Achieved fraction of peak for one matmul of `flops`: the measured curve (log-interpolated) or flat."""
        return _interpolate(self.matmul_curve, flops) if self.matmul_curve else self.gemm_efficiency

    def bandwidth_gbs(self, moved_bytes: float, datasheet_gbs: float) -> float:
        """Achieved GB/s of an elementwise kernel moving `moved_bytes`: the measured curve, or the datasheet's."""
        return _interpolate(self.memory_curve, moved_bytes) if self.memory_curve else datasheet_gbs


def _interpolate(curve: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear in log(x) through ascending (x, y) points, flat beyond the ends."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x <= x1:
            return y0 + math.log(x / x0) / math.log(x1 / x0) * (y1 - y0)
    return curve[-1][1]


@dataclass(frozen=True)
class Prices:
    """What a device-hour and a kWh cost, in `currency`."""

    currency: str
    rent_per_device_hour: float
    purchase_price_per_device: float
    amortization_years: float
    electricity_price_per_kwh: float
    pue: float


@dataclass(frozen=True)
class Cluster:
    """The machines a plan is made for: accelerator, node size, prices and calibration."""

    accelerator: Accelerator
    devices_per_node: int
    prices: Prices
    calibration: Calibration


def _catalogue() -> dict[str, Any]:
    return catalogue()


def accelerator_names() -> list[str]:
    """Names of every accelerator in the catalogue."""
    return list(_catalogue()["accelerators"])


DEVICE_CLASSES = ("gpu", "cpu")


def calibration(device_class: str = "gpu") -> Calibration:
    """The catalogue's calibration constants of a device class ("gpu": fitted on published runs)."""
    if device_class not in DEVICE_CLASSES:
        raise PlanError(f"unknown device class {device_class!r}; known: {', '.join(DEVICE_CLASSES)}")
    section = _catalogue()["calibration"][device_class]
    measured = ("matmul_curve", "memory_curve", "softmax_ns_per_logit", "optimizer_ns_per_param", "step_time_scale")
    constants: dict[str, Any] = {f.name: float(section[f.name]) for f in fields(Calibration) if f.name not in measured}
    return Calibration(**constants)


def get_accelerator(name: str) -> Accelerator:
    """Look an accelerator up by name (case-insensitive); unknown names suggest the closest ones."""
    table = _catalogue()["accelerators"]
    by_lower = {key.lower(): key for key in table}
    key = by_lower.get(name.lower())
    if key is None:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(by_lower[c] for c in close)}? " if close else ""
        raise PlanError(f"unknown accelerator {name!r}; {hint}known: {', '.join(table)}")
    # `device_names` serve the trainer's lookup by driver name; the planner names devices itself.
    return Accelerator(name=key, **{k: v for k, v in table[key].items() if k != "device_names"})


def currency_rate(currency: str) -> float:
    """CNY per unit of `currency`."""
    rates = _catalogue()["currency"]
    if currency not in rates:
        raise PlanError(f"hardware.currency: no exchange rate for {currency!r}; known: {', '.join(rates)}")
    return float(rates[currency])


def make_cluster(
    accelerator: str,
    hardware: HardwareConfig | None = None,
    devices_per_node: int | None = None,
    calib: Calibration | None = None,
) -> Cluster:
    """The cluster for `accelerator`, with `[hardware]`'s price fields overriding the catalogue's.

    "local" is this machine as `jijian plan calibrate` measured it; "cpu" is too when such a profile exists
    (otherwise the catalogue's server CPU).
    """
    from jijian.plan.profile import LOCAL, load_profile, local_device, profile_matches_this_machine

    measured: Calibration | None = None
    if accelerator.lower() == LOCAL or (accelerator.lower() == "cpu" and profile_matches_this_machine()):
        device, measured = local_device(load_profile())
    else:
        device = get_accelerator(accelerator)
    hardware = hardware or HardwareConfig(accelerator=device.name)
    if hardware.peak_tflops is not None:  # the same figure jijian train divides by for its MFU
        device = replace(device, bf16_tflops=hardware.peak_tflops)
    defaults = _catalogue()["defaults"]
    rate = currency_rate(hardware.currency)

    def pick(override: float | None, catalogue_cny: float, convert: bool = True) -> float:
        if override is not None:
            return override
        return catalogue_cny / rate if convert else catalogue_cny

    prices = Prices(
        currency=hardware.currency,
        rent_per_device_hour=pick(hardware.rent_per_device_hour, device.rent_per_device_hour),
        purchase_price_per_device=pick(hardware.purchase_price_per_device, device.purchase_price),
        amortization_years=pick(hardware.amortization_years, defaults["amortization_years"], convert=False),
        electricity_price_per_kwh=pick(hardware.electricity_price_per_kwh, defaults["electricity_price_per_kwh"]),
        pue=pick(hardware.pue, defaults["pue"], convert=False),
    )
    per_node = devices_per_node or device.devices_per_node
    return Cluster(device, per_node, prices, calib or measured or calibration(device.device_class))


HOURS_PER_YEAR = 24 * 365


def kwh_per_device_hour(cluster: Cluster) -> float:
    """Energy drawn from the grid per device-hour: the server's draw per device, times PUE."""
    return cluster.accelerator.node_kw / cluster.devices_per_node * cluster.prices.pue


def capital_cost_per_device_hour(cluster: Cluster) -> float:
    """Purchase price spread over the amortisation period, per device-hour."""
    prices = cluster.prices
    return prices.purchase_price_per_device / (prices.amortization_years * HOURS_PER_YEAR)
