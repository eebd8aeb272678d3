"""The planner's time and cost estimate for the train stage, as `jijian up --dry-run` prints it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from jijian.config import DeployConfig
from jijian.plan import Estimate

MIN_CALIBRATED_STEPS = 50  # the train stage's floor when [up] train_minutes sizes the schedule
ALL = 1 << 30  # every fitting layout, fastest first


@dataclass
class TrainEstimate:
    """The best layout's predicted time and cost for [train] on [hardware], with the cross-validated range."""

    layout: str
    devices: int
    accelerator: str
    tokens: float
    steps: int
    step_s: float
    step_range_s: tuple[float, float]
    hours: float
    hours_range: tuple[float, float]
    gpu_hours: float
    rent_cost: float
    energy_kwh: float
    electricity_cost: float
    currency: str
    mfu: float
    mfu_range: tuple[float, float]
    sized_by_minutes: float | None = None

    def describe(self) -> str:
        """One line for the plan."""
        rent = f", rent {self.rent_cost:,.2f} {self.currency}"
        (step_low, step_high), (low, high) = self.step_range_s, self.hours_range
        sized = f" (steps sized to {self.sized_by_minutes:g} minutes)" if self.sized_by_minutes is not None else ""
        return (
            f"{self.layout} on {self.devices} x {self.accelerator}: {self.steps:,} steps{sized}, "
            f"{self.tokens:,.0f} tokens, {self.step_s:.3g} s/step ({step_low:.3g}-{step_high:.3g}), about "
            f"{_duration(self.hours)} ({_duration(low)}-{_duration(high)}; {self.gpu_hours:,.3g} device-hours{rent}; "
            f"{self.energy_kwh:,.3g} kWh, electricity {self.electricity_cost:,.2f} {self.currency}), "
            f"MFU {self.mfu:.0%} ({self.mfu_range[0]:.0%}-{self.mfu_range[1]:.0%})"
        )


def estimate_training(config: DeployConfig) -> TrainEstimate:
    """Search the layouts of [hardware] for [model] x [train] steps (pure Python, milliseconds).

    With [up] train_minutes the train stage sizes its schedule to that wall time from a measured step; the
    estimate sizes it the same way from the predicted step, so it says what the stage will run.
    """
    from jijian.plan import search
    from jijian.plan.deploy import cluster_for, device_count, shape_for, workload_for

    shape = shape_for(config, None, {})
    cluster = cluster_for(config, None, None)
    count = device_count(config, None, cluster)
    work, _ = workload_for(config, shape, count, None, None, None)
    best = _as_configured(config, search(work, cluster, count, None, top=ALL, jijian_only=True).best)
    tokens_per_step = work.global_batch * work.seq
    steps = config.train.steps
    minutes = config.up.train_minutes
    if minutes is not None:
        steps = max(MIN_CALIBRATED_STEPS, int(minutes * 60 / best.step_time_s))
        work = replace(work, tokens=float(steps * tokens_per_step))
        best = _as_configured(config, search(work, cluster, count, None, top=ALL, jijian_only=True).best)
    # The run ends with a validation pass: eval_batches forward passes, a third of a training step each.
    eval_s = config.train.eval_batches * best.step_time_s / (3 * config.train.grad_accum_steps)
    scale = (best.days * 24 + eval_s / 3600) / (best.days * 24)
    hours = best.days * 24 * scale
    low_step, high_step = best.step_time_range_s
    return TrainEstimate(
        layout=best.layout.describe(),
        devices=count,
        accelerator=cluster.accelerator.name,
        tokens=work.tokens,
        steps=best.steps,
        step_s=best.step_time_s,
        step_range_s=best.step_time_range_s,
        hours=hours,
        hours_range=(hours * low_step / best.step_time_s, hours * high_step / best.step_time_s),
        gpu_hours=best.gpu_hours * scale,
        rent_cost=best.cost_rent * scale,
        energy_kwh=best.energy_kwh * scale,
        electricity_cost=best.cost_electricity * scale,
        currency=best.currency,
        mfu=best.mfu,
        mfu_range=best.mfu_range,
        sized_by_minutes=minutes,
    )


def _as_configured(config: DeployConfig, fastest_first: list[Estimate]) -> Estimate:
    """The fastest layout that runs [train] as written: its micro-batch (batch_size over the data-parallel
    ranks) and recomputation; the fastest of all when none does."""
    for result in fastest_first:
        layout = result.layout
        micro_batch = config.train.batch_size // layout.data_ranks
        if layout.micro_batch == micro_batch and layout.recompute == config.train.ac:
            return result
    return fastest_first[0]


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} minutes"
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"
