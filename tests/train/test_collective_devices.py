"""Every collective runs on a tensor whose device has a backend: the trainer's own device.

An NCCL group cannot reduce a CPU tensor, so a flag made with `torch.tensor(...)` on the CPU stops every
multi-GPU run at its first step. On this CPU-only machine two tests stand in for the GPU:
- a 2-rank run records the device of every tensor that any collective receives (eager and functional);
- the trainer's own agreement collectives run with a non-CPU device (PyTorch's lazy tensors, which a
  CPU build can compute on), so a CPU-made tensor is caught exactly as NCCL would catch it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
import torch
import torch.distributed as dist
from torchrun_env import run_torchrun

from jijian.model.device import DeviceError, process_group_backend, resolve_device
from jijian.train.distributed import check_dtype
from jijian.train.trainer import InstabilityDetected, Trainer

HELPER = Path(__file__).with_name("spy_collectives.py")


@pytest.mark.multiprocess
def test_a_two_rank_run_sends_only_trainer_device_tensors_to_collectives(tmp_path, tokenizer, stdlib_paths):
    tokenizer.save(tmp_path / "tokenizer")
    config = {
        "model": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 64, "vocab_size": 512},
        "tokenizer": {"path": str(tmp_path / "tokenizer")},
        "data": {"sources": [str(p) for p in stdlib_paths[:4]], "output_dir": str(tmp_path / "data")},
        # max_minutes and the stability guard each add an agreement collective per step.
        "train": {
            "output_dir": str(tmp_path / "run"),
            "steps": 4,
            "warmup_steps": 1,
            "batch_size": 4,
            "seq_len": 16,
            "log_every": 1,
            "device": "cpu",
            "max_minutes": 30.0,
            "spike_zscore": 6.0,
        },
        "parallel": {"dp_shard": 2},
        "checkpoint": {"enabled": True, "interval": 2, "async_mode": "off"},
    }
    path = tmp_path / "deploy.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(HELPER)]
    proc = run_torchrun([*cmd, str(path), str(tmp_path)], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in range(2):
        record = json.loads((tmp_path / f"collectives-rank{rank}.json").read_text())
        ops = {op.replace("_", "") for op, _ in record["collectives"]}  # c10d._allgather_base_, ...
        # The run really communicated: FSDP's gathers and reductions and the trainer's agreement.
        assert any("allgather" in op for op in ops), ops
        assert any("reducescatter" in op for op in ops), ops
        assert any("allreduce" in op for op in ops), ops
        wrong = {(op, dev) for op, dev in record["collectives"] if dev != record["trainer_device"]}
        assert not wrong, f"rank {rank}: collectives on tensors off the trainer's device: {sorted(wrong)}"


@pytest.fixture
def fake_group():
    """A 2-rank fake process group in this process: collectives are accepted and do nothing."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    yield
    dist.destroy_process_group()


@pytest.fixture
def lazy_device():
    """PyTorch's lazy-tensor device: not the CPU, yet computable (and `.item()`-able) in a CPU-only build."""
    import torch._lazy.ts_backend

    torch._lazy.ts_backend.init()
    return torch.device("lazy")


def test_trainer_agreement_collectives_use_the_trainer_device(fake_group, lazy_device, monkeypatch):
    devices: list[str] = []

    def spy_all_reduce(tensor, op=None, group=None, async_op=False):
        devices.append(tensor.device.type)

    monkeypatch.setattr(dist, "all_reduce", spy_all_reduce)
    trainer = SimpleNamespace(
        device=lazy_device,
        dims=SimpleNamespace(distributed=True),
        cfg=SimpleNamespace(max_minutes=60.0),
        guard=SimpleNamespace(check=lambda loss, norm: "loss is nan"),
        optimizer=SimpleNamespace(zero_grad=lambda set_to_none: None),
        step=3,
    )
    # Started 61 minutes ago (time.perf_counter() counts from boot, which may be less than an hour ago).
    assert Trainer._out_of_time(trainer, start=time.perf_counter() - 61 * 60) is True
    with pytest.raises(InstabilityDetected):
        Trainer._check_stability(trainer, torch.tensor(float("nan")), torch.tensor(1.0), [7])
    assert devices == ["lazy", "lazy"]


def test_the_process_group_has_a_backend_for_cpu_and_for_the_accelerator():
    assert process_group_backend(torch.device("cpu")) == "gloo"
    assert process_group_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(torch.device("xpu", 0)) == "cpu:gloo,xpu:xccl"


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the error of a machine without accelerator")
def test_asking_for_a_missing_accelerator_names_the_field():
    assert resolve_device("auto", "train.device").type == "cpu"
    with pytest.raises(DeviceError, match=r"train\.device = 'cuda' but this machine has no accelerator"):
        resolve_device("cuda", "train.device")


def test_a_dtype_the_device_cannot_run_names_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(DeviceError, match=r"train\.dtype = 'bfloat16' but Tesla V100 cannot run it"):
        check_dtype(torch.device("cuda", 0), "bfloat16")
    check_dtype(torch.device("cpu"), "bfloat16")  # CPUs run bf16 (slowly): no error
