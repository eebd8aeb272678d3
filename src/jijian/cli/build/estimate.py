"""The planner's time and cost estimate for the train stage, as `jijian up --dry-run` prints it."""

from __future__ import annotations

from dataclasses import dataclass

from jijian.config import DeployConfig


@dataclass
class TrainEstimate:
    """The best layout's predicted time and cost for [train] on [hardware]."""

    layout: str
    devices: int
    accelerator: str
    tokens: float
    step_s: float
    hours: float
    gpu_hours: float
    rent_cost: float
    energy_kwh: float
    electricity_cost: float
    currency: str
    mfu: float

    def describe(self) -> str:
        """One line for the plan."""
        rent = f", rent {self.rent_cost:,.2f} {self.currency}"
        return (
            f"{self.layout} on {self.devices} x {self.accelerator}: {self.tokens:,.0f} tokens, "
            f"{self.step_s:.3g} s/step, about {_duration(self.hours)} ({self.gpu_hours:,.3g} device-hours{rent}; "
            f"{self.energy_kwh:,.3g} kWh, electricity {self.electricity_cost:,.2f} {self.currency}), MFU {self.mfu:.0%}"
        )


def estimate_training(config: DeployConfig) -> TrainEstimate:
    """Search the layouts of [hardware] for [model] x [train] steps (pure Python, milliseconds)."""
    from jijian.cli.plan import _cluster, _gpus, _shape, _workload
    from jijian.plan import search

    shape = _shape(config, None, {})
    cluster = _cluster(config, None, None)
    count = _gpus(config, None, cluster)
    work, _ = _workload(config, shape, count, None, None, None)
    best = search(work, cluster, count, None, top=1, jijian_only=True).best[0]
    return TrainEstimate(
        layout=best.layout.describe(),
        devices=count,
        accelerator=cluster.accelerator.name,
        tokens=work.tokens,
        step_s=best.step_time_s,
        hours=best.days * 24,
        gpu_hours=best.gpu_hours,
        rent_cost=best.cost_rent,
        energy_kwh=best.energy_kwh,
        electricity_cost=best.cost_electricity,
        currency=best.currency,
        mfu=best.mfu,
    )


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} minutes"
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"
