"""Training-step throughput of jijian's trainer against hand-written PyTorch, on CPU, in one run.

1. One process: `Trainer.train_step` (jijian's loop: global-norm clipping through its sharding-aware
   norms, LR schedule, loss bookkeeping) vs a minimal hand-written loop — forward, cross-entropy,
   backward, `clip_grad_norm_`, `AdamW.step`, `zero_grad` — on the same model, weights and batch.
2. Two ranks under torchrun (gloo): jijian with `dp_shard = 2` (FSDP2) vs PyTorch
   `DistributedDataParallel` on the same model and global batch.

Each side alternates in blocks of steps after warm-up, and each side's median step time is
reported, so noise on a shared machine hits both alike. Run from the repository root:

    .venv/bin/python benchmarks/train_throughput.py --quick   # about a minute
    .venv/bin/python benchmarks/train_throughput.py

Last lines: `RESULT train_step_vs_handwritten <ratio> target >= 0.95 PASS|FAIL` and
`RESULT fsdp2_dp2_vs_ddp <ratio> target >= 0.9 PASS|FAIL` (ratio = jijian tokens/s / competitor's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from jijian.config import MODEL_PRESETS, ModelConfig, ParallelConfig, TrainConfig
from jijian.train.layout import Layout
from jijian.train.parallel import build_model_parts, build_parallel_dims
from jijian.train.trainer import Trainer

MODEL = "llama-tiny"


def model_config() -> ModelConfig:
    return ModelConfig(**MODEL_PRESETS[MODEL])


def random_batches(vocab: int, batch: int, seq: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        tokens = torch.randint(0, vocab, (batch, seq + 1), generator=generator)
        yield tokens[:, :-1], tokens[:, 1:]


def interleaved_medians(sides: dict[str, Callable[[], None]], warmup: int, blocks: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each side, alternating blocks of `steps` steps."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(blocks):
        for name, fn in sides.items():
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def handwritten_step(model, optimizer, batches, clip: float) -> Callable[[], None]:
    def step() -> None:
        inputs, targets = next(batches)
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return step


def single_process(batch: int, seq: int, warmup: int, blocks: int, steps: int) -> float:
    cfg = model_config()
    tcfg = TrainConfig(steps=10**6, batch_size=batch, seq_len=seq, warmup_steps=0, lr=1e-4, device="cpu")
    dims = build_parallel_dims(Layout(), "cpu")
    parts = build_model_parts(cfg, tcfg, dims, torch.device("cpu"), loss_fn=None)  # type: ignore[arg-type]
    trainer = Trainer(parts, tcfg, random_batches(cfg.vocab_size, batch, seq), device=torch.device("cpu"), dims=dims)

    plain = build_model_parts(cfg, tcfg, dims, torch.device("cpu"), loss_fn=None).parts[0]  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    hand = handwritten_step(plain, optimizer, random_batches(cfg.vocab_size, batch, seq), tcfg.grad_clip)

    def ours() -> None:
        loss, _ = trainer.train_step()
        loss.item()

    medians = interleaved_medians({"jijian": ours, "handwritten": hand}, warmup, blocks, steps)
    tokens = batch * seq
    print(f"single process, {MODEL}, batch {batch} x {seq}:")
    for name, seconds in medians.items():
        print(f"  {name:12s} {seconds * 1e3:8.1f} ms/step  {tokens / seconds:10,.0f} tokens/s")
    return medians["handwritten"] / medians["jijian"]


def worker(batch: int, seq: int, warmup: int, blocks: int, steps: int, reshard: str) -> None:
    """One of two ranks: FSDP2 through jijian vs DDP, same model and global batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = model_config()
    tcfg = TrainConfig(steps=10**6, batch_size=batch, seq_len=seq, warmup_steps=0, lr=1e-4, device="cpu")
    dims = build_parallel_dims(Layout(dp_shard=2), "cpu")
    parallel = ParallelConfig(dp_shard=2, fsdp_reshard_after_forward=reshard)
    parts = build_model_parts(cfg, tcfg, dims, torch.device("cpu"), None, parallel_cfg=parallel)  # type: ignore[arg-type]
    trainer = Trainer(parts, tcfg, random_batches(cfg.vocab_size, batch, seq), device=torch.device("cpu"), dims=dims)

    single = build_model_parts(cfg, tcfg, build_parallel_dims(Layout(), "cpu"), torch.device("cpu"), loss_fn=None)
    ddp = DistributedDataParallel(single.parts[0])
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    local = random_batches(cfg.vocab_size, batch // 2, seq, seed=rank)
    hand = handwritten_step(ddp, optimizer, local, tcfg.grad_clip)

    def ours() -> None:
        loss, _ = trainer.train_step()
        loss.item()

    medians = interleaved_medians({"jijian_fsdp2": ours, "ddp": hand}, warmup, blocks, steps)
    # Every rank must agree on the verdict: take the slower rank's time per side.
    for name in medians:
        value = torch.tensor(medians[name])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        medians[name] = float(value)
    if rank == 0:
        print("RANKS " + json.dumps(medians), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def two_ranks(batch: int, seq: int, warmup: int, blocks: int, steps: int, reshard: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__]
    cmd += [
        "--worker",
        f"--batch={batch}",
        f"--seq={seq}",
        f"--warmup={warmup}",
        f"--blocks={blocks}",
        f"--steps={steps}",
        f"--reshard={reshard}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RANKS ")), None)
    if proc.returncode or line is None:
        sys.exit(f"two-rank benchmark failed:\n{proc.stderr[-3000:]}")
    medians = json.loads(line[len("RANKS ") :])
    tokens = batch * seq
    print(f"two ranks (gloo, 1 thread each), {MODEL}, global batch {batch} x {seq}:")
    for name, seconds in medians.items():
        print(f"  {name:12s} {seconds * 1e3:8.1f} ms/step  {tokens / seconds:10,.0f} tokens/s")
    return medians["ddp"] / medians["jijian_fsdp2"]


def verdict(name: str, value: float, target: float) -> str:
    return f"RESULT {name} {value:.3f} target >= {target} {'PASS' if value >= target else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (about a minute)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--reshard",
        choices=["default", "always", "never"],
        default="default",
        help="[parallel] fsdp_reshard_after_forward",
    )
    args = parser.parse_args()
    blocks = args.blocks or (3 if args.quick else 8)
    if args.worker:
        worker(args.batch, args.seq, args.warmup, blocks, args.steps, args.reshard)
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    single = single_process(args.batch, args.seq, args.warmup, blocks, args.steps)
    ranks = two_ranks(args.batch, args.seq, args.warmup, blocks, args.steps, args.reshard)
    print(verdict("train_step_vs_handwritten", single, 0.95))
    print(verdict("fsdp2_dp2_vs_ddp", ranks, 0.9))


if __name__ == "__main__":
    main()
