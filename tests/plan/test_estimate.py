"""The step-time, memory and cost model of one layout behaves as the physics says."""

from __future__ import annotations

import pytest

from jijian.config import HardwareConfig, ModelConfig
from jijian.plan import Layout, PlanError, Workload, estimate, get_accelerator, make_cluster, pf_days
from jijian.plan.estimate import jijian_cannot_run
from jijian.spec.shape import ModelShape, training_flops_per_token

LLAMA_70B = ModelShape.from_config(ModelConfig(preset="llama3-70b"))
WORK = Workload(LLAMA_70B, 4096, 512, 1e12)


def test_recompute_trades_time_for_memory():
    cluster = make_cluster("H100-SXM")
    # Two micro-batches of 4 sequences each per rank: enough compute to hide FSDP's gathers.
    none, full = (estimate(WORK, Layout(fsdp=64, tp=4, micro_batch=4, recompute=r), cluster) for r in ("none", "full"))
    assert full.memory_breakdown_gb["activations"] < none.memory_breakdown_gb["activations"] / 5
    assert full.step_time_s > none.step_time_s
    assert full.hfu > full.mfu  # hardware FLOPs count the recomputed forward, model FLOPs do not
    assert none.hfu == pytest.approx(none.mfu)


def test_sharding_divides_model_states_and_tp_adds_traffic():
    cluster = make_cluster("H100-SXM")
    fsdp8, fsdp32 = (estimate(WORK, Layout(fsdp=n, tp=8, pp=32 // n), cluster) for n in (8, 32))
    assert fsdp32.memory_breakdown_gb["model_states"] < fsdp8.memory_breakdown_gb["model_states"]
    tp2, tp8 = (estimate(WORK, Layout(fsdp=256 // t, tp=t), cluster) for t in (2, 8))
    assert tp8.comm_bytes_per_step["tensor_parallel"] > tp2.comm_bytes_per_step["tensor_parallel"] > 0


def test_costs_follow_from_time_and_prices():
    hardware = HardwareConfig(accelerator="H800", rent_per_device_hour=10.0, electricity_price_per_kwh=0.3, pue=1.2)
    cluster = make_cluster("H800", hardware)
    result = estimate(WORK, Layout(fsdp=32, tp=8), cluster)
    hours = result.steps * result.step_time_s / 3600
    assert result.gpu_hours == pytest.approx(256 * hours)
    assert result.cost_rent == pytest.approx(result.gpu_hours * 10.0)
    # An H800 server draws ~11 kW for 8 devices; PUE multiplies it at the meter.
    assert result.energy_kwh == pytest.approx(result.gpu_hours * 11.0 / 8 * 1.2)
    assert result.cost_electricity == pytest.approx(result.energy_kwh * 0.3)
    assert result.cost_buy > result.cost_electricity
    owned = make_cluster(
        "H800", hardware.model_copy(update={"purchase_price_per_device": 1e5, "amortization_years": 2.0})
    )
    bought = estimate(WORK, Layout(fsdp=32, tp=8), owned)
    assert bought.cost_buy == pytest.approx(bought.gpu_hours * 1e5 / (2 * 24 * 365) + bought.cost_electricity)
    assert result.pf_days == pytest.approx(pf_days(training_flops_per_token(LLAMA_70B, 4096) * 1e12))
    assert 0 < result.mfu < 1


def test_cheaper_electricity_lowers_only_the_buying_cost():
    dear, cheap = (
        estimate(WORK, Layout(fsdp=32, tp=8), make_cluster("A800", HardwareConfig(electricity_price_per_kwh=p)))
        for p in (1.0, 0.3)
    )
    assert cheap.cost_buy < dear.cost_buy
    assert cheap.cost_rent == dear.cost_rent
    assert dear.cost_electricity == pytest.approx(cheap.cost_electricity / 0.3)


def test_catalogue_prices_convert_to_the_configured_currency():
    cny = make_cluster("H100-SXM")
    usd = make_cluster("H100-SXM", HardwareConfig(currency="USD"))
    assert usd.prices.rent_per_device_hour == pytest.approx(cny.prices.rent_per_device_hour / 7.2)
    with pytest.raises(PlanError, match="exchange rate"):
        make_cluster("H100-SXM", HardwareConfig(currency="XYZ"))


def test_unknown_accelerator_suggests_the_closest_names():
    with pytest.raises(PlanError, match="did you mean H800"):
        get_accelerator("H900")
    assert get_accelerator("h800").name == "H800"


def test_every_catalogue_entry_has_a_source_and_sane_figures():
    from jijian.plan import accelerator_names

    for name in accelerator_names():
        device = get_accelerator(name)
        assert device.source, name
        assert device.bf16_tflops > 0 and device.memory_gb > 0 and device.memory_bandwidth_gbs > 0, name
        assert device.link_gbs >= device.network_gbs or name == "cpu", name


def test_a_batch_that_does_not_split_is_an_error_not_a_crash():
    with pytest.raises(PlanError, match="does not split"):
        estimate(Workload(LLAMA_70B, 4096, 100, 1e12), Layout(fsdp=64, tp=4), make_cluster("H800"))


def test_reducing_gradients_every_micro_batch_under_a_pipeline_trades_traffic_for_memory():
    # Llama 3 405B as Meta ran it on 8,192 H100s: FSDP 64 x TP 8 x PP 16, 32 micro-batches per step.
    work = Workload(ModelShape.from_config(ModelConfig(preset="llama3-405b")), 8192, 2048, 1e12)
    cluster = make_cluster("H100-SXM")
    base = Layout(fsdp=64, tp=8, pp=16, schedule="interleaved_1f1b", chunks=8)
    step = estimate(work, base, cluster)
    per_microbatch = estimate(work, Layout(**{**base.__dict__, "grad_sync": "microbatch"}), cluster)
    # One layer's gradients unsharded at a time instead of the whole stage's in fp32 (12.6 GB at 405B / 16 / 8),
    # and no whole-vocabulary embedding gradient: the published run fits only this way.
    saved = step.memory_breakdown_gb["buffers"] - per_microbatch.memory_breakdown_gb["buffers"]
    stage_fp32_grads = 405e9 / 16 / 8 * 4 / 2**30
    assert saved > stage_fp32_grads
    assert per_microbatch.fits and not step.fits
    # The gradients travel 32 times instead of once; the parameters are gathered once either way.
    assert per_microbatch.comm_bytes_per_step["fsdp"] > 16 * step.comm_bytes_per_step["fsdp"]
    assert jijian_cannot_run(Layout(fsdp=64, tp=8, pp=16)) is None
    assert "once per step" in str(jijian_cannot_run(Layout(fsdp=64, tp=8, pp=16, grad_sync="microbatch")))
    assert "grad_sync=microbatch" in per_microbatch.layout.describe()
    with pytest.raises(PlanError, match=r"grad_sync must be one of step, microbatch, got 'sometimes'"):
        Layout(grad_sync="sometimes")
