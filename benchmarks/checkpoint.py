"""Checkpoint cost: how long training is blocked by an async save, a synchronous save and `torch.save`.

One process builds a real model (~44M parameters; `--quick`: ~7M) and takes an AdamW step, so the
training state (fp32 parameters + two moments) is >= 500 MB. In one run it then measures, on the
same disk, alternating repetitions of:

- disk:        sequential write of the same byte count in 8 MiB blocks, then fsync (the ceiling);
- torch.save:  the full model + optimizer state dict into one file, then fsync;
- sync:        `CheckpointManager.save` with async_mode = "off": every shard written and fsynced (the
               manifest's checksums, the rename and pruning then run on a committer thread);
- async:       `CheckpointManager.save` with async_mode = "thread", as a training loop sees it: the save
               call, then the forward + backward of the next step (not counted), then the wait in
               `before_update` until the background copy of the state is done (counted). The write
               and commit finish in the background.

Each figure is the median over the repetitions (async: later saves only; the first one also allocates
the staging buffers, reported separately). Run from the repository root:

    .venv/bin/python benchmarks/checkpoint.py --quick   # ~100 MB, under a minute
    .venv/bin/python benchmarks/checkpoint.py           # ~530 MB

The last lines are `RESULT checkpoint_async_blocking_vs_sync <ratio> target <= 0.1 PASS|FAIL` and
`RESULT checkpoint_sync_throughput_vs_disk <ratio> target >= 0.7 PASS|FAIL`. Scratch files go under
--dir (default /work/exp/ckpt: a real disk, unlike a RAM-backed /tmp) and are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from jijian.config import ModelConfig, TrainConfig
from jijian.model import CausalLM
from jijian.train.checkpoint import CheckpointManager, optimizer_tensors
from jijian.train.optim import build_optimizer

ASYNC_TARGET = 0.1
THROUGHPUT_TARGET = 0.7


def forward_backward(model: CausalLM) -> None:
    """The part of a training step that reads parameters but does not change them."""
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 17))
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()


def build_state(quick: bool) -> tuple[CausalLM, torch.optim.Optimizer]:
    """A model and an optimizer that has taken one real step (so its moments exist)."""
    torch.manual_seed(0)
    if quick:
        cfg = ModelConfig(dim=256, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=768, vocab_size=8000, max_seq_len=64)
    else:
        cfg = ModelConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, ffn_dim=1536, vocab_size=16000, max_seq_len=64)
    model = CausalLM(cfg)
    optimizer = build_optimizer(model, TrainConfig(steps=10, warmup_steps=0))
    forward_backward(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def write_raw(path: Path, nbytes: int) -> float:
    """Seconds to write `nbytes` sequentially in 8 MiB blocks and fsync: what the disk can do."""
    block = os.urandom(8 << 20)
    start = time.perf_counter()
    with path.open("wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def torch_save(path: Path, model: CausalLM, optimizer: torch.optim.Optimizer) -> float:
    """Seconds for torch.save of the full model + optimizer state dict, fsynced."""
    start = time.perf_counter()
    with path.open("wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def main() -> None:
    """Run every measurement, print the table and the RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~100 MB state, fewer repetitions")
    parser.add_argument("--dir", type=Path, default=Path("/work/exp/ckpt"), help="scratch directory on the disk")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each measurement (default 3)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
    reps = args.reps or 3

    model, optimizer = build_state(args.quick)
    params = sum(p.numel() for p in model.parameters())

    def tensors() -> dict[str, torch.Tensor]:
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        state.update(optimizer_tensors([model], optimizer))
        return state

    nbytes = sum(t.numel() * t.element_size() for t in tensors().values())
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=args.dir))
    print(f"{params / 1e6:.1f}M parameters, training state {nbytes / 1e6:.0f} MB, scratch {scratch}")
    try:
        sync = CheckpointManager(scratch / "sync", tensors=tensors, interval=1, keep_last=1, async_mode="off")
        background = CheckpointManager(scratch / "async", tensors=tensors, interval=1, keep_last=1, async_mode="thread")
        times: dict[str, list[float]] = {"disk": [], "torch.save": [], "sync": [], "async": []}
        first_async = background.save(0, {"step": 0}) + background.before_update()
        background.wait()
        for rep in range(1, reps + 1):
            # Alternate, so that noise from other users of the disk hits every method alike.
            times["disk"].append(write_raw(scratch / "raw.bin", nbytes))
            times["torch.save"].append(torch_save(scratch / "full.pt", model, optimizer))
            times["sync"].append(sync.save(rep, {"step": rep}))
            sync.wait()  # its commit must not overlap the next measurement
            blocked = background.save(rep, {"step": rep})
            forward_backward(model)
            times["async"].append(blocked + background.before_update())
            background.wait()  # the background write must not overlap the next measurement
        sync.close()
        background.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'method':<12} {'blocking s':>11} {'MB/s':>9}")
    for name, seconds in med.items():
        print(f"{name:<12} {seconds:>11.3f} {nbytes / 1e6 / seconds:>9.0f}")
    print(f"async, first save (allocates staging buffers): {first_async:.3f} s")
    async_ratio = med["async"] / med["sync"]
    throughput_ratio = med["disk"] / med["sync"]  # = sync MB/s / disk MB/s
    print(f"async blocking / sync blocking = {async_ratio:.3f}; sync throughput / disk = {throughput_ratio:.3f}")
    print(f"sync throughput / torch.save throughput = {med['torch.save'] / med['sync']:.3f}")
    verdict = "PASS" if async_ratio <= ASYNC_TARGET else "FAIL"
    print(f"RESULT checkpoint_async_blocking_vs_sync {async_ratio:.3f} target <= {ASYNC_TARGET} {verdict}")
    verdict = "PASS" if throughput_ratio >= THROUGHPUT_TARGET else "FAIL"
    print(f"RESULT checkpoint_sync_throughput_vs_disk {throughput_ratio:.3f} target >= {THROUGHPUT_TARGET} {verdict}")


if __name__ == "__main__":
    main()
