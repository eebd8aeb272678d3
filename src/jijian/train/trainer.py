"""The training loop. It receives a model that is already placed (and, later, parallelised) from outside."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from jijian.config import TrainConfig
from jijian.train.metrics import MetricsLogger
from jijian.train.optim import build_lr_scheduler, build_optimizer

Batch = tuple[torch.Tensor, torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; target -100 is ignored (padding)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1), ignore_index=-100)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision compute dtype: bf16 on CUDA by default; fp32 on CPU (CPU bf16 is far slower here)."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class TrainResult:
    """What a run did: steps, tokens, time, per-step training loss and the last validation loss."""

    steps: int
    tokens: int
    elapsed_s: float
    losses: dict[int, float] = field(default_factory=dict)
    val_loss: float | None = None
    stopped_early: bool = False

    def loss_at(self, step: int) -> float:
        """Training loss of optimiser step `step` (1-based)."""
        return self.losses[step]

    @property
    def final_loss(self) -> float:
        """Training loss of the last step."""
        return self.losses[max(self.losses)]


class Trainer:
    """AdamW + warmup/cosine, global-norm clipping, gradient accumulation, optional bf16 autocast."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        batches: Iterator[Batch],
        *,
        device: torch.device,
        eval_batches: Sequence[Batch] | None = None,
        logger: MetricsLogger | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.batches = batches
        self.device = device
        self.eval_batches = list(eval_batches or [])
        self.logger = logger
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg)
        self.autocast = autocast_dtype(cfg.dtype, device)
        self.step = 0
        self.tokens_seen = 0

    def _compute_context(self) -> AbstractContextManager:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step over `grad_accum_steps` micro-batches; returns (loss, grad norm), unsynced."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.cfg.grad_accum_steps
        total = torch.zeros((), device=self.device)
        for _ in range(accum):
            inputs, targets = next(self.batches)
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self._compute_context():
                logits = self.model(inputs)
            # Each micro-batch has the same token count, so the mean of means is the full-batch mean.
            loss = cross_entropy_loss(logits, targets) / accum
            loss.backward()
            total += loss.detach()
            self.tokens_seen += inputs.numel()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return total, grad_norm

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the fixed evaluation batches (None when there are none)."""
        if not self.eval_batches:
            return None
        self.model.eval()
        losses = []
        for inputs, targets in self.eval_batches:
            with self._compute_context():
                logits = self.model(inputs.to(self.device))
            losses.append(cross_entropy_loss(logits, targets.to(self.device)))
        self.model.train()
        return float(torch.stack(losses).mean())

    def fit(self) -> TrainResult:
        """Train until `steps` (or `max_minutes`), logging every `log_every` steps."""
        cfg = self.cfg
        start = last_time = time.perf_counter()
        last_tokens = self.tokens_seen
        losses: dict[int, float] = {}
        pending: list[tuple[int, torch.Tensor]] = []
        stopped_early = False
        val_loss = None
        while self.step < cfg.steps:
            lr = self.scheduler.get_last_lr()[0]
            loss, grad_norm = self.train_step()
            pending.append((self.step, loss))
            last_step = self.step == cfg.steps
            out_of_time = cfg.max_minutes is not None and time.perf_counter() - start > cfg.max_minutes * 60
            if self.step % cfg.log_every == 0 or self.step == 1 or last_step or out_of_time:
                # Synchronise with the device only when logging, so GPU steps can queue up in between.
                for step, value in pending:
                    losses[step] = float(value)
                pending.clear()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {float(loss)} at step {self.step}")
                now = time.perf_counter()
                self._log(
                    step=self.step,
                    loss=losses[self.step],
                    lr=lr,
                    grad_norm=float(grad_norm),
                    tokens_per_s=(self.tokens_seen - last_tokens) / max(now - last_time, 1e-9),
                    tokens=self.tokens_seen,
                    elapsed_s=now - start,
                )
                last_time, last_tokens = now, self.tokens_seen
            elif self.logger is not None:
                self.logger.advance(self.step)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not last_step:
                val_loss = self.evaluate()
                if val_loss is not None:
                    self._log(step=self.step, val_loss=val_loss)
            if out_of_time and not last_step:
                stopped_early = True
                self._log(step=self.step, event="stopped: train.max_minutes reached")
                break
        val_loss = self.evaluate()
        if val_loss is not None:
            self._log(step=self.step, val_loss=val_loss)
        return TrainResult(
            steps=self.step,
            tokens=self.tokens_seen,
            elapsed_s=time.perf_counter() - start,
            losses=losses,
            val_loss=val_loss,
            stopped_early=stopped_early,
        )

    def _log(self, **record: object) -> None:
        if self.logger is not None:
            self.logger.log(record)
