"""The hardware catalogue (hardware.toml): accelerators, prices, calibration, and `[hardware]` overrides."""

from __future__ import annotations

import difflib
import functools
import tomllib
from dataclasses import dataclass, fields, replace
from importlib.resources import files

from jijian.config import HardwareConfig
from jijian.plan.errors import PlanError

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
    """Fitted constants of the step-time model (see the [calibration] section of hardware.toml)."""

    gemm_efficiency: float
    elementwise_bytes_per_hidden: float
    link_efficiency: float
    usable_memory_fraction: float


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


@functools.cache
def _catalogue() -> dict:
    return tomllib.loads(files("jijian.plan").joinpath("hardware.toml").read_text(encoding="utf-8"))


def accelerator_names() -> list[str]:
    """Names of every accelerator in the catalogue."""
    return list(_catalogue()["accelerators"])


def calibration() -> Calibration:
    """The fitted calibration constants."""
    section = _catalogue()["calibration"]
    return Calibration(**{f.name: float(section[f.name]) for f in fields(Calibration)})


def get_accelerator(name: str) -> Accelerator:
    """Look an accelerator up by name (case-insensitive); unknown names suggest the closest ones."""
    table = _catalogue()["accelerators"]
    by_lower = {key.lower(): key for key in table}
    key = by_lower.get(name.lower())
    if key is None:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(by_lower[c] for c in close)}? " if close else ""
        raise PlanError(f"unknown accelerator {name!r}; {hint}known: {', '.join(table)}")
    return Accelerator(name=key, **table[key])


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
    """The cluster for `accelerator`, with `[hardware]`'s price fields overriding the catalogue's."""
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
    return Cluster(device, per_node, prices, calib or calibration())


def with_calibration(cluster: Cluster, **changes: float) -> Cluster:
    """The same cluster with some calibration constants changed (used when fitting them)."""
    return replace(cluster, calibration=replace(cluster.calibration, **changes))


HOURS_PER_YEAR = 24 * 365


def kwh_per_device_hour(cluster: Cluster) -> float:
    """Energy drawn from the grid per device-hour: the server's draw per device, times PUE."""
    return cluster.accelerator.node_kw / cluster.devices_per_node * cluster.prices.pue


def capital_cost_per_device_hour(cluster: Cluster) -> float:
    """Purchase price spread over the amortisation period, per device-hour."""
    prices = cluster.prices
    return prices.purchase_price_per_device / (prices.amortization_years * HOURS_PER_YEAR)
