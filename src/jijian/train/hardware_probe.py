"""A short probe of this machine for the planner's local profile: matmul throughput, memory bandwidth, op overhead.

`jijian plan calibrate` runs it and saves the result (jijian.plan.profile reads it, without torch). Each
figure is the median of repeated samples, each timing back-to-back calls for at least SAMPLE_S: a kernel
shorter than the scheduler's time slice would otherwise run unpreempted and miss the share of the cores
other work takes, which a whole training step does not miss.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

# (m, k, n) of the matmuls a training step runs, from a 128-wide toy model to a 768-wide one with 2,048-token
# micro-batches, plus the square shapes that show the machine's peak.
MATMUL_SHAPES = (
    (256, 64, 256),
    (2048, 128, 64),
    (2048, 128, 128),
    (2048, 128, 384),
    (2048, 384, 128),
    (2048, 256, 768),
    (1024, 512, 512),
    (1024, 512, 1536),
    (512, 768, 768),
    (512, 768, 2048),
    (2048, 128, 4096),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
)
# Bytes moved by one elementwise add (two inputs, one output): cache-sized to DRAM-sized working sets.
# Every probed kernel allocates its output, as eager training does.
MEMORY_SIZES = (256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)


SAMPLE_S = 0.1  # longer than a scheduler time slice (a few ms), shorter than a training step


def _median_seconds(run: Callable[[], object], budget_s: float, min_samples: int = 3) -> float:
    """Seconds per call of `run`: the median over samples of back-to-back calls, within about `budget_s`."""
    run()  # warm up: allocation, thread pool, oneDNN primitive creation
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_samples or time.perf_counter() - started < budget_s:
        calls, t0 = 0, time.perf_counter()
        while True:
            run()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= SAMPLE_S:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def matmul_throughput(budget_s: float, dtype: torch.dtype = torch.float32) -> list[dict[str, float]]:
    """Achieved TFLOP/s of each shape in MATMUL_SHAPES as nn.Linear runs it in training (weight stored
    (n, k)): forward x @ w.T, input gradient dy @ w, weight gradient dy.T @ x (a long reduction)."""
    results = []
    per_shape = budget_s / len(MATMUL_SHAPES)
    for m, k, n in MATMUL_SHAPES:
        x, w, dy = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(m, n, dtype=dtype)

        def three(x: torch.Tensor = x, w: torch.Tensor = w, dy: torch.Tensor = dy) -> None:
            torch.mm(x, w.t())
            torch.mm(dy, w)
            torch.mm(dy.t(), x)

        seconds = _median_seconds(three, per_shape)
        results.append({"m": m, "k": k, "n": n, "tflops": 3 * 2.0 * m * k * n / seconds / 1e12})
    return results


def softmax_cost_ns(budget_s: float, tokens: int = 2048, vocab: int = 4096) -> float:
    """Nanoseconds per logit of the loss: log-softmax forward and backward over a (tokens, vocab) fp32 batch
    (exp and log make it compute-bound on a CPU, not bandwidth-bound)."""
    logits = torch.randn(tokens, vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))

    def loss_step() -> None:
        torch.nn.functional.cross_entropy(logits, targets).backward()

    return _median_seconds(loss_step, budget_s) / (tokens * vocab) * 1e9


def memory_bandwidth(budget_s: float) -> list[dict[str, float]]:
    """Achieved GB/s of an elementwise add at each working-set size in MEMORY_SIZES (bytes read + written)."""
    results = []
    per_size = budget_s / len(MEMORY_SIZES)
    for size in MEMORY_SIZES:
        count = size // 12  # three fp32 tensors
        a, b = torch.randn(count), torch.randn(count)

        # A fresh output each call, as eager training allocates one per operation (page faults included).
        def add(a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
            return torch.add(a, b)

        seconds = _median_seconds(add, per_size)
        results.append({"bytes": 12 * count, "gbs": 12 * count / seconds / 1e9})
    return results


def op_overhead_us(budget_s: float) -> float:
    """Microseconds one dispatched operation costs when it does almost no work (a 16-element add)."""
    a, b = torch.randn(16), torch.randn(16)
    return _median_seconds(lambda: torch.add(a, b), budget_s) * 1e6


def optimizer_cost_ns(budget_s: float, params: int = 1 << 22) -> float:
    """Nanoseconds per parameter of gradient clipping plus a foreach AdamW step (as jijian's trainer runs
    them) over fp32 tensors: sqrt and division make it more than a memory-bandwidth cost on a CPU."""
    weights = [torch.nn.Parameter(torch.randn(params // 4)) for _ in range(4)]
    for weight in weights:
        weight.grad = torch.randn_like(weight)
    optimizer = torch.optim.AdamW(weights, lr=1e-4, weight_decay=0.1, foreach=True)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(weights, 1.0, foreach=True)
        optimizer.step()

    return _median_seconds(step, budget_s) / params * 1e9


# A model that is in none of plan_local's shapes nor the quick start's: a whole training step of it is what the
# kernel-by-kernel figures above leave out (cold caches between operations, autograd's bookkeeping, allocation).
REFERENCE_MODEL: dict[str, Any] = {
    "dim": 384, "n_layers": 2, "n_heads": 6, "n_kv_heads": 2, "ffn_dim": 1024, "vocab_size": 8192,
}  # fmt: skip
REFERENCE_BATCH, REFERENCE_SEQ = 4, 256


def reference_step_seconds(budget_s: float) -> float:
    """Median seconds of one real training step (jijian's Trainer: forward, backward, clipping, AdamW) of
    REFERENCE_MODEL, after one step that lets the allocator and the optimizer state settle."""
    from jijian.config import ModelConfig, TrainConfig
    from jijian.model import build_model
    from jijian.train.trainer import Trainer

    cfg = ModelConfig(**REFERENCE_MODEL)
    tokens = torch.randint(0, cfg.vocab_size, (REFERENCE_BATCH, REFERENCE_SEQ + 1))
    batches = itertools.repeat((tokens[:, :-1], tokens[:, 1:]))
    train = TrainConfig(steps=1 << 20, warmup_steps=0, batch_size=REFERENCE_BATCH, seq_len=REFERENCE_SEQ)
    trainer = Trainer(build_model(cfg), train, batches, device=torch.device("cpu"))
    trainer.train_step()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < budget_s:
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probe(seconds: float = 45.0) -> dict[str, Any]:
    """Measure this machine (about `seconds` of work, fp32 as jijian trains on a CPU) for the planner."""
    started = time.perf_counter()
    overhead = op_overhead_us(seconds * 0.1)
    memory = memory_bandwidth(seconds * 0.2)
    softmax = softmax_cost_ns(seconds * 0.1)
    optimizer = optimizer_cost_ns(seconds * 0.1)
    matmul = matmul_throughput(seconds * 0.4)
    reference = reference_step_seconds(seconds * 0.1)
    return {
        "device": "cpu",
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "op_overhead_us": overhead,
        "softmax_ns_per_logit": softmax,
        "optimizer_ns_per_param": optimizer,
        "memory": memory,
        "matmul": matmul,
        "reference_step": {
            "model": REFERENCE_MODEL,
            "batch": REFERENCE_BATCH,
            "seq": REFERENCE_SEQ,
            "seconds": reference,
        },
        "probe_seconds": time.perf_counter() - started,
    }
