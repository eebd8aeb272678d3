"""The local hardware profile: written and read back, used by --gpu local, refused on another machine."""

from __future__ import annotations

import json

import pytest

from jijian.plan import PlanError, Workload, make_cluster
from jijian.plan.estimate import Layout, estimate
from jijian.plan.profile import PROFILE_ENV, load_profile, local_device, machine_fingerprint, save_profile
from jijian.spec.shape import ModelShape

MEASURED = {
    "device": "cpu",
    "dtype": "float32",
    "torch_threads": 1,
    "op_overhead_us": 3.0,
    "softmax_ns_per_logit": 6.0,
    "memory": [{"bytes": 1 << 20, "gbs": 40.0}, {"bytes": 64 << 20, "gbs": 10.0}],
    "matmul": [
        {"m": 2048, "k": 128, "n": 128, "tflops": 0.03},
        {"m": 2048, "k": 2048, "n": 2048, "tflops": 0.1},
    ],
    "probe_seconds": 1.0,
}
TINY = ModelShape(layers=2, hidden=128, heads=4, kv_heads=2, head_dim=32, ffn=384, vocab=4096)


@pytest.fixture
def profile_path(tmp_path, monkeypatch):
    path = tmp_path / "profile.json"
    monkeypatch.setenv(PROFILE_ENV, str(path))
    return path


def test_profile_round_trips_and_becomes_the_local_device(profile_path):
    save_profile(MEASURED, profile_path)
    profile = load_profile()
    assert profile["machine"] == machine_fingerprint()
    device, calib = local_device(profile)
    assert device.bf16_tflops == pytest.approx(0.1)  # the fastest measured matmul is the MFU denominator
    assert calib.matmul_efficiency(2 * 2048**3) == pytest.approx(1.0)
    assert calib.matmul_efficiency(2 * 2048 * 128 * 128) == pytest.approx(0.3)
    assert calib.bandwidth_gbs(1 << 20, 999.0) == pytest.approx(40.0)
    assert calib.bandwidth_gbs(1 << 40, 999.0) == pytest.approx(10.0)  # flat beyond the largest size
    # "local" and "cpu" both plan with the measured figures once this machine is profiled.
    assert make_cluster("local").accelerator.bf16_tflops == pytest.approx(0.1)
    assert make_cluster("cpu").accelerator.bf16_tflops == pytest.approx(0.1)


def test_small_work_is_dominated_by_measured_overheads_not_the_roofline(profile_path):
    save_profile(MEASURED, profile_path)
    work = Workload(TINY, 256, 8, 2048.0)
    result = estimate(work, Layout(micro_batch=8), make_cluster("local"))
    times = result.time_breakdown_s
    # Small matmuls run at 30% of the best measured rate, the loss costs its measured ns per logit.
    assert times["memory_bound"] >= 2048 * 4096 * 6e-9
    assert times["op_overhead"] > 0 and times["matmul"] > 0
    assert result.step_time_range_s[0] < result.step_time_s < result.step_time_range_s[1]


def test_missing_profile_and_another_machines_profile_are_refused(profile_path):
    with pytest.raises(PlanError, match=r"no local hardware profile.*jijian plan calibrate"):
        make_cluster("local")
    assert make_cluster("cpu").accelerator.name == "cpu"  # the catalogue's CPU without a profile
    save_profile(MEASURED, profile_path)
    data = json.loads(profile_path.read_text())
    data["machine"] = {"host": "other-box", "cpu": "Some Other CPU", "logical_cpus": 256}
    profile_path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"measured on 'other-box'.*nearest feasible: run `jijian plan calibrate` here"):
        make_cluster("local")
    assert make_cluster("cpu").accelerator.name == "cpu"
    profile_path.write_text("{not json")
    with pytest.raises(PlanError, match="not a hardware profile"):
        load_profile()


def test_every_estimate_carries_the_cross_validated_range():
    from jijian.config import ModelConfig

    shape = ModelShape.from_config(ModelConfig(preset="llama3-8b"))
    result = estimate(Workload(shape, 4096, 256, 1e11), Layout(fsdp=64), make_cluster("H100-SXM"))
    low, high = result.mfu_range
    assert low < result.mfu < high
    assert result.mfu_text().startswith(f"{result.mfu:.0%} (")


def test_a_measured_reference_step_scales_the_compute_the_kernel_figures_predict(profile_path):
    save_profile(MEASURED, profile_path)
    work = Workload(TINY, 256, 8, 2048.0)
    kernels_only = estimate(work, Layout(micro_batch=8), make_cluster("local"))
    assert make_cluster("local").calibration.step_time_scale == 1.0  # a profile without a reference step
    # The same machine, whose probe also timed a whole training step of TINY at 1.5x what the kernels predict.
    model = {"dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 384, "vocab_size": 4096}
    reference = {"model": model, "batch": 8, "seq": 256, "seconds": 1.5 * kernels_only.step_time_s}
    save_profile({**MEASURED, "reference_step": reference}, profile_path)
    assert make_cluster("local").calibration.step_time_scale == pytest.approx(1.5)
    scaled = estimate(work, Layout(micro_batch=8), make_cluster("local"))
    assert scaled.step_time_s == pytest.approx(1.5 * kernels_only.step_time_s)
    assert scaled.time_breakdown_s["matmul"] == pytest.approx(1.5 * kernels_only.time_breakdown_s["matmul"])
    save_profile({**MEASURED, "reference_step": {**reference, "seconds": 0}}, profile_path)
    with pytest.raises(PlanError, match=r"profile.json: not a hardware profile.*reference_step"):
        make_cluster("local")
