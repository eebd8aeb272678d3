"""The local hardware profile: what `jijian plan calibrate` measured on this machine, as a planner device.

The probe itself needs torch and lives in jijian.train.hardware_probe; this module only reads and writes
its JSON and turns it into an accelerator and a calibration, so the planner stays torch-free. A profile
records the machine it was measured on; using it anywhere else is refused.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jijian.files import write_json_atomic
from jijian.plan.errors import PlanError
from jijian.plan.hardware import Accelerator, Calibration, calibration, get_accelerator

PROFILE_ENV = "JIJIAN_HARDWARE_PROFILE"
PROFILE_VERSION = 1
LOCAL = "local"


def default_profile_path() -> Path:
    """$JIJIAN_HARDWARE_PROFILE, else ~/.cache/jijian/hardware-profile.json."""
    given = os.environ.get(PROFILE_ENV)
    return Path(given) if given else Path.home() / ".cache" / "jijian" / "hardware-profile.json"


def machine_fingerprint() -> dict[str, str | int]:
    """What identifies this machine's compute: host name, CPU model and logical CPU count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": model, "logical_cpus": os.cpu_count() or 1}


def save_profile(measured: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write a probe's measurements with this machine's fingerprint (atomically); returns what was written."""
    profile = {
        "version": PROFILE_VERSION,
        "machine": machine_fingerprint(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **measured,
    }
    write_json_atomic(path, profile)
    return profile


def load_profile(path: Path | None = None, *, require_this_machine: bool = True) -> dict[str, Any]:
    """Read a profile; PlanError if it is missing, unreadable, or (by default) from another machine."""
    path = path or default_profile_path()
    if not path.exists():
        raise PlanError(f"no local hardware profile at {path}; run `jijian plan calibrate` (about a minute) first")
    try:
        profile: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        matmul, memory = profile["matmul"], profile["memory"]
        float(profile["op_overhead_us"])
        if profile.get("version") != PROFILE_VERSION or not matmul or not memory:
            raise ValueError("unknown version or empty measurements")
        reference = profile.get("reference_step")
        if reference is not None and not (
            float(reference["seconds"]) > 0
            and int(reference["batch"]) > 0
            and int(reference["seq"]) > 0
            and isinstance(reference["model"], dict)
        ):
            raise ValueError("reference_step needs a model, a positive batch, seq and seconds")
        if reference is not None:
            from jijian.config import ModelConfig

            ModelConfig(**reference["model"])  # a model the planner can shape (pydantic's error is a ValueError)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a hardware profile written by `jijian plan calibrate` ({exc})") from None
    here = machine_fingerprint()
    if require_this_machine and profile.get("machine") != here:
        there = profile.get("machine", {})
        raise PlanError(
            f"{path} was measured on {there.get('host')!r} ({there.get('cpu')}, {there.get('logical_cpus')} CPUs), "
            f"this is {here['host']!r} ({here['cpu']}, {here['logical_cpus']} CPUs); nearest feasible: run "
            f"`jijian plan calibrate` here, or --gpu cpu for the catalogue's figures"
        )
    return profile


def profile_matches_this_machine(path: Path | None = None) -> bool:
    """Whether a profile of this machine exists (no error when it does not)."""
    try:
        load_profile(path)
    except PlanError:
        return False
    return True


def local_device(profile: dict[str, Any]) -> tuple[Accelerator, Calibration]:
    """The profiled machine as one device: peak = its fastest matmul; measured curves for matmuls and memory."""
    peak_tflops = max(row["tflops"] for row in profile["matmul"])
    curve = sorted((2.0 * r["m"] * r["k"] * r["n"], r["tflops"] / peak_tflops) for r in profile["matmul"])
    memory = sorted((float(r["bytes"]), float(r["gbs"])) for r in profile["memory"])
    base = get_accelerator("cpu")
    host = profile.get("machine", {}).get("host", "?")
    device = replace(
        base,
        name=f"{LOCAL} ({host})",
        bf16_tflops=peak_tflops,
        memory_bandwidth_gbs=max(gbs for _, gbs in memory),
        source=f"measured by `jijian plan calibrate` at {profile.get('measured_at')}",
    )
    calib = replace(
        calibration("cpu"),
        op_overhead_us=float(profile["op_overhead_us"]),
        softmax_ns_per_logit=float(profile.get("softmax_ns_per_logit", 0.0)),
        optimizer_ns_per_param=float(profile.get("optimizer_ns_per_param", 0.0)),
        matmul_curve=tuple(curve),
        memory_curve=tuple(memory),
    )
    reference = profile.get("reference_step")
    if reference:  # profiles written before the reference step keep the kernel figures alone
        measured = float(reference["seconds"])
        calib = replace(calib, step_time_scale=measured / _predicted_step_s(reference, device, calib))
    return device, calib


def _predicted_step_s(reference: dict[str, Any], device: Accelerator, calib: Calibration) -> float:
    """The planner's step time for the profile's reference model, from the kernel figures alone."""
    from jijian.config import ModelConfig
    from jijian.plan.estimate import Layout, Workload, estimate
    from jijian.plan.hardware import Cluster, Prices
    from jijian.spec.shape import ModelShape

    shape = ModelShape.from_config(ModelConfig(**reference["model"]))
    batch, seq = int(reference["batch"]), int(reference["seq"])
    free = Prices("CNY", 0.0, 0.0, 1.0, 0.0, 1.0)  # step time only: prices do not enter it
    cluster = Cluster(device, 1, free, calib)
    work = Workload(shape, seq, batch, float(batch * seq))
    return estimate(work, Layout(micro_batch=batch), cluster).step_time_s
