"""The planner against real training steps on this machine: predicted vs measured step time on the CPU.

One run does both halves, so they see the same machine: `jijian plan calibrate`'s probe (matmul
throughput at several sizes, memory bandwidth at several working-set sizes, per-op overhead) writes a
local profile, then four model shapes from llama-tiny to llama-125m (1-2 layers) train for a few real
steps single-process (jijian's own Trainer, fp32 as on any CPU), and the planner predicts each step from
the profile alone. The "competitor" is the measured step. On a machine shared with other work timings
are noisy: the load average is printed at the start and the end, and both sides are medians/bests of
repeated timings taken minutes apart at most.

    .venv/bin/python benchmarks/plan_local.py --quick   # 15 s probe, 4 timed steps per shape (~1-2 min)
    .venv/bin/python benchmarks/plan_local.py           # 40 s probe, 8 timed steps per shape

Last line: RESULT plan_local_step_time_median_error <median |predicted / measured - 1|> target <= 0.25.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from jijian.config import ModelConfig, TrainConfig
from jijian.model import build_model
from jijian.plan.estimate import Layout, Workload, estimate
from jijian.plan.hardware import make_cluster
from jijian.plan.profile import PROFILE_ENV, save_profile
from jijian.spec.shape import ModelShape
from jijian.train import Trainer
from jijian.train.hardware_probe import probe

# (name, [model] fields, batch size, sequence length): llama-tiny's width up to llama-125m's.
SHAPES = (
    ("llama-tiny, 2 layers", {"preset": "llama-tiny", "n_layers": 2}, 8, 256),
    ("dim 256, 2 layers", {"dim": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 768,
                           "vocab_size": 8192}, 8, 256),
    ("dim 512, 2 layers", {"dim": 512, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "ffn_dim": 1536,
                           "vocab_size": 16384}, 4, 256),
    ("llama-125m, 1 layer", {"preset": "llama-125m", "n_layers": 1}, 2, 256),
)  # fmt: skip


def measured_step_s(model_fields: dict, batch: int, seq: int, steps: int, settle: int = 3) -> float:
    """Median wall time of `steps` real training steps (jijian's Trainer: forward, backward, clip, AdamW)."""
    cfg = ModelConfig(**model_fields)
    model = build_model(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    batches = itertools.repeat((tokens[:, :-1], tokens[:, 1:]))
    train = TrainConfig(steps=settle + steps, warmup_steps=0, batch_size=batch, seq_len=seq)
    trainer = Trainer(model, train, batches, device=torch.device("cpu"))
    for _ in range(settle):  # allocator and optimizer state settle first
        trainer.train_step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def predicted_step_s(model_fields: dict, batch: int, seq: int, accelerator: str) -> tuple[float, dict]:
    """The planner's step time for one device with the whole batch as one micro-batch."""
    shape = ModelShape.from_config(ModelConfig(**model_fields))
    result = estimate(
        Workload(shape, seq, batch, float(batch * seq)), Layout(micro_batch=batch), make_cluster(accelerator)
    )
    return result.step_time_s, result.time_breakdown_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter probe, fewer timed steps")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for probe and training alike (default 1: steadier "
        "on a shared machine, where a descheduled OpenMP thread stalls every kernel)",
    )
    args = parser.parse_args()
    probe_s, steps = (15.0, 4) if args.quick else (40.0, 8)
    torch.set_num_threads(args.threads)

    print(f"torch threads {torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.json"
        os.environ[PROFILE_ENV] = str(path)
        profile = save_profile(probe(probe_s), path)
        peak = max(r["tflops"] for r in profile["matmul"]) * 1e3
        dram = profile["memory"][-1]["gbs"]
        print(
            f"probe {profile['probe_seconds']:.0f} s: best matmul {peak:.0f} GFLOP/s, {dram:.1f} GB/s at "
            f"{profile['memory'][-1]['bytes'] / 2**20:.0f} MiB, {profile['op_overhead_us']:.1f} us per op"
        )
        print(
            f"{'shape':<22} {'tokens':>6} {'measured s':>10} {'predicted s':>11} {'error':>7} "
            f"{'no profile s':>12}  breakdown"
        )
        errors, catalogue_errors = [], []
        for name, fields, batch, seq in SHAPES:
            measured = measured_step_s(fields, batch, seq, steps)
            predicted, breakdown = predicted_step_s(fields, batch, seq, "local")
            os.environ[PROFILE_ENV] = str(Path(tmp) / "absent.json")  # the catalogue's CPU, for comparison
            catalogue, _ = predicted_step_s(fields, batch, seq, "cpu")
            os.environ[PROFILE_ENV] = str(path)
            errors.append(abs(predicted / measured - 1))
            catalogue_errors.append(abs(catalogue / measured - 1))
            parts = ", ".join(f"{k} {v * 1e3:.0f}ms" for k, v in breakdown.items() if v > 1e-4)
            print(
                f"{name:<22} {batch * seq:6d} {measured:10.3f} {predicted:11.3f} {predicted / measured - 1:+7.0%} "
                f"{catalogue:12.3f}  {parts}"
            )
    median_error = statistics.median(errors)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(
        f"median |predicted / measured - 1|: {median_error:.2f} with the profile, "
        f"{statistics.median(catalogue_errors):.2f} with the catalogue's CPU figures"
    )
    verdict = "PASS" if median_error <= 0.25 else "FAIL"
    print(f"RESULT plan_local_step_time_median_error {median_error:.3f} target <= 0.25 {verdict}")


if __name__ == "__main__":
    main()
