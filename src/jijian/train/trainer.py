"""The training loop. It receives model parts that are already placed and parallelised from outside."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule

from jijian.config import TrainConfig, UserInputError
from jijian.files import write_json_atomic
from jijian.model import CausalLM
from jijian.train.checkpoint import CheckpointManager, materialize_optimizer_state, optimizer_tensors
from jijian.train.distributed import agree_any
from jijian.train.flops import peak_memory_bytes
from jijian.train.goodput import GoodputLedger
from jijian.train.metrics import MetricsLogger
from jijian.train.norms import clip_grad_norm_
from jijian.train.optim import build_lr_scheduler, build_optimizer
from jijian.train.parallel.mesh import ParallelDims
from jijian.train.parallel.parallelize import ModelParts
from jijian.train.parallel.tensor_parallel import reduce_partial_gradients

Batch = tuple[torch.Tensor, ...]
"""(inputs, targets), or (inputs, targets, document_ids) for packed sequences that must not see each other."""


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; target -100 is ignored (padding)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1), ignore_index=-100)


def _trained_tokens(batch: Batch) -> int | None:
    """Targets the loss covers in a whole (global) packed chat batch; None for plain text batches."""
    if len(batch) < 3:
        return None
    return max(1, int((batch[1] != -100).sum()))


def set_gradient_sync(parts: Sequence[nn.Module], last: bool) -> None:
    """Gradient reduction settings for one micro-step of gradient accumulation (`last`: the step's final one).

    Every micro-step reduce-scatters over the shard dimension (ZeRO-3 keeps only shards of gradients), but
    replicas (HSDP's dp_replicate) all-reduce only once, after the last: FSDP2 adds the earlier micro-steps'
    reduce-scattered shards in before that all-reduce, so the result is the same for 1/accum of the traffic.
    """
    for part in parts:
        if isinstance(part, FSDPModule):
            part.set_requires_all_reduce(last)


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision compute dtype: bf16 on an accelerator by default; fp32 on CPU (CPU bf16 is far slower)."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type != "cpu"):
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
    data_wait_s: float = 0.0
    peak_memory_bytes: int = 0

    def loss_at(self, step: int) -> float:
        """Training loss of optimiser step `step` (1-based)."""
        return self.losses[step]

    @property
    def final_loss(self) -> float:
        """Training loss of the last step."""
        return self.losses[max(self.losses)]


class InstabilityDetected(Exception):  # a signal to the loop, not an error to the user
    """A step whose loss or gradient went bad; raised before the optimizer applied it."""

    def __init__(self, step: int, reason: str, batches: list[int]) -> None:
        super().__init__(f"{reason} at step {step}")
        self.step = step
        self.reason = reason
        self.batches = batches


class TrainingUnstable(UserInputError, FloatingPointError):
    """Instability that rollbacks could not cure: lower train.lr, or raise train.max_rollbacks."""


def record_instability(path: Path, skip_batches: list[int], rollbacks: int) -> None:
    """Write the run's skipped batches and rollback count atomically (a JSON file beside the metrics)."""
    write_json_atomic(path, {"skip_batches": skip_batches, "rollbacks": rollbacks})


def read_instability(path: Path) -> tuple[set[int], int]:
    """What `record_instability` wrote, or nothing."""
    if not path.is_file():
        return set(), 0
    data = json.loads(path.read_text(encoding="utf-8"))
    return set(data["skip_batches"]), int(data["rollbacks"])


class InstabilityGuard:
    """Flags a step whose loss or gradient norm is not finite, or whose loss spikes above a z-score."""

    def __init__(self, nonfinite: bool, zscore: float, window: int) -> None:
        self.nonfinite = nonfinite
        self.zscore = zscore
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def active(self) -> bool:
        """Whether any check is on (each costs a device synchronisation per step)."""
        return self.nonfinite or self.zscore > 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """The reason this step is bad, or None (and then the loss joins the moving window)."""
        if self.nonfinite and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss {loss} or gradient norm {grad_norm}"
        if self.zscore > 0 and len(self.recent) == self.recent.maxlen:
            mean = sum(self.recent) / len(self.recent)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.recent) / len(self.recent))
            if std > 0 and (loss - mean) / std > self.zscore:
                return f"loss spike {loss:.4f} ({(loss - mean) / std:.1f} sigma above the last {len(self.recent)})"
        self.recent.append(loss)
        return None


@dataclass
class Throughput:
    """Turns tokens per second into MFU: model FLOPs per token and the device's peak FLOP/s."""

    flops_per_token: float
    peak_flops_per_device: float
    devices: int


class Trainer:
    """One optimiser step = `grad_accum_steps` micro-batches of the global batch, split over data-parallel ranks.

    Works on a plain model (one process) and on `ModelParts` (FSDP / TP / pipeline stages) alike;
    the loss it reports is the global-batch mean, identical across layouts.
    """

    def __init__(
        self,
        model: CausalLM | ModelParts,
        cfg: TrainConfig,
        batches: Iterator[Batch],
        *,
        device: torch.device,
        dims: ParallelDims | None = None,
        eval_batches: Sequence[Batch] | None = None,
        logger: MetricsLogger | None = None,
        throughput: Throughput | None = None,
        autocast: torch.dtype | None = None,
        checkpoints: CheckpointManager | None = None,
        ledger: GoodputLedger | None = None,
    ) -> None:
        self.parts = model if isinstance(model, ModelParts) else ModelParts(parts=[model], stage_ids=[0], n_stages=1)
        self.model = self.parts.parts[0]
        self.cfg = cfg
        self.batches = batches
        self.device = device
        self.dims = dims
        self.eval_batches = list(eval_batches or [])
        self.logger = logger
        self.throughput = throughput
        # Collected once: the deduplicating walk over every part is not free on each step's clipping.
        self.parameters = self.parts.parameters()
        self.optimizer = build_optimizer(self.parameters, cfg)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg)
        self.autocast = autocast if autocast is not None else autocast_dtype(cfg.dtype, device)
        self.step = 0
        self.tokens_seen = 0
        self.data_wait_s = 0.0
        self.checkpoints = checkpoints
        self.ledger = ledger
        self.guard = InstabilityGuard(cfg.skip_nonfinite, cfg.spike_zscore, cfg.spike_window)
        # Batches are numbered in stream order; those that caused a rollback are drawn and dropped on replay.
        self.batches_drawn = 0
        self._trained_tokens: int | None = None  # trained targets of the last global batch drawn (chat SFT)
        self.skip_batches: set[int] = set()
        self.rollbacks = 0
        self.instability_path: Path | None = None

    # -- data-parallel bookkeeping ------------------------------------------------------------

    def _local_rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (data-parallel ranks read disjoint rows)."""
        if self.dims is None or self.dims.layout.dp == 1:
            return batch
        rows = batch.shape[0] // self.dims.layout.dp
        start = self.dims.dp_rank * rows
        return batch[start : start + rows]

    def _global_mean(self, local_mean: torch.Tensor) -> torch.Tensor:
        """Average a loss held by the last pipeline stage over data-parallel ranks, and give it to every rank."""
        if self.dims is None or not self.dims.distributed:
            return local_mean
        holds = self.parts.has_last_stage and self.dims.tp_rank == 0
        value = (local_mean.detach().float() / self.dims.layout.dp) if holds else torch.zeros((), device=self.device)
        value = value.reshape(()).clone()
        dist.all_reduce(value)
        return value

    def _compute_context(self) -> AbstractContextManager[None]:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _next_batch(self) -> Batch:
        start = time.perf_counter()
        while self.batches_drawn in self.skip_batches:
            next(self.batches)
            self.batches_drawn += 1
        batch = next(self.batches)
        self.batches_drawn += 1
        self.data_wait_s += time.perf_counter() - start
        self.tokens_seen += batch[0].numel()
        self._trained_tokens = _trained_tokens(batch)
        return tuple(self._local_rows(t).to(self.device, non_blocking=True) for t in batch)

    def _loss(self, batch: Batch, trained_tokens: int | None = None) -> torch.Tensor:
        """Loss of one micro-batch through the (unpipelined) model; document ids mask attention.

        Packed chat batches (with document ids) leave most targets out, in different numbers per
        row: each rank then divides its summed loss by the global batch's share per rank, so that
        averaging over data-parallel ranks gives the global token mean whatever the layout.
        """
        inputs, targets, *documents = batch
        with self._compute_context():
            logits = self.model(inputs, document_ids=documents[0]) if documents else self.model(inputs)
        if not documents or trained_tokens is None:
            return cross_entropy_loss(logits, targets)
        dp = self.dims.layout.dp if self.dims is not None else 1
        summed = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(0, 1), ignore_index=-100, reduction="sum"
        )
        return summed * dp / trained_tokens

    # -- one step -------------------------------------------------------------------------------

    def _pipeline_step(self, inputs: torch.Tensor, targets: torch.Tensor, *, train: bool) -> torch.Tensor:
        """Run the pipeline schedule on one micro-batch; returns the mean loss on the last stage, else 0."""
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.parts.has_first_stage else ()
        kwargs: dict[str, Any] = {"target": targets, "losses": losses} if self.parts.has_last_stage else {}
        schedule = self.parts.schedule
        assert schedule is not None, "called only when the parts run a pipeline schedule"
        with self._compute_context():
            schedule.step(*args, **kwargs) if train else schedule.eval(*args, **kwargs)
        if not losses:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach().float() for loss in losses]).mean()

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (global mean loss, global gradient norm)."""
        self.parts.train()
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.cfg.grad_accum_steps
        total = torch.zeros((), device=self.device)
        first_batch = self.batches_drawn
        for micro_step in range(accum):
            batch = self._next_batch()
            if self.parts.schedule is not None:
                # The schedule's loss_fn divides by accum (see run.py), so micro-step losses add up.
                total += self._pipeline_step(batch[0], batch[1], train=True)
                continue
            # Each micro-batch has the same token count, so the mean of means is the full-batch mean
            # (with loss masks, as in chat SFT, it is the mean of the micro-batches' means).
            set_gradient_sync(self.parts.parts, last=micro_step == accum - 1)
            loss = self._loss(batch, self._trained_tokens) / accum
            loss.backward()
            total += loss.detach()
        reduce_partial_gradients(self.parameters)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        pp_group = self.dims.pp_group if self.dims is not None else None
        grad_norm = clip_grad_norm_(self.parameters, max_norm, pp_group)
        loss = self._global_mean(total)
        if self.guard.active:
            self._check_stability(loss, grad_norm, list(range(first_batch, self.batches_drawn)))
        if self.checkpoints is not None:
            # An async save may still be copying parameters and moments: they change only from here on.
            waited = self.checkpoints.before_update()
            if waited and self.ledger is not None:
                self.ledger.record("checkpoint", step=self.step, blocking_s=round(waited, 6))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss, grad_norm

    def _check_stability(self, loss: torch.Tensor, grad_norm: torch.Tensor, batches: list[int]) -> None:
        reason = self.guard.check(float(loss), float(grad_norm))
        unstable = reason is not None
        if self.dims is not None and self.dims.distributed:
            # Loss and norm are global already; agreeing explicitly keeps every rank on the same path.
            unstable = agree_any(unstable, self.device)
        if unstable:
            self.optimizer.zero_grad(set_to_none=True)
            raise InstabilityDetected(self.step + 1, reason or "instability on another rank", batches)

    # -- checkpointed state -------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        """Everything besides tensors and RNGs that a bitwise-identical resume needs (JSON-able)."""
        data = self.batches.state_dict() if hasattr(self.batches, "state_dict") else None
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "batches_drawn": self.batches_drawn,
            "data": data,
            "scheduler": self.scheduler.state_dict(),
            "lrs": [group["lr"] for group in self.optimizer.param_groups],
            "skip_batches": sorted(self.skip_batches),
            "rollbacks": self.rollbacks,
            "loss_window": list(self.guard.recent),
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Model and optimizer tensors keyed by parameter name (DTensor shards stay sharded)."""
        state = {f"model.{k}": v for part in self.parts.parts for k, v in part.state_dict().items()}
        state.update(optimizer_tensors(self.parts.parts, self.optimizer))
        return state

    def restore(self, path: Path) -> None:
        """Continue from checkpoint `path`: tensors in place, then step, data position, schedule, RNGs."""
        assert self.checkpoints is not None
        materialize_optimizer_state(self.optimizer)
        state = self.checkpoints.load(path)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.batches_drawn = int(state["batches_drawn"])
        if state["data"] is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["data"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr
        # A rollback in this process knows more than the checkpoint: keep the union.
        self.skip_batches |= set(state["skip_batches"])
        self.rollbacks = max(self.rollbacks, int(state["rollbacks"]))
        self.guard.recent.clear()
        self.guard.recent.extend(state["loss_window"])

    def save_checkpoint(self) -> None:
        """Checkpoint now (all ranks call it); the blocking time goes to the goodput ledger."""
        assert self.checkpoints is not None
        blocked = self.checkpoints.save(self.step, self.trainer_state())
        if self.ledger is not None:
            self.ledger.record("checkpoint", step=self.step, blocking_s=round(blocked, 6))

    def _roll_back(self, bad: InstabilityDetected) -> None:
        """Return to the newest good checkpoint before the bad step and drop its batches, or stop."""
        limit = self.cfg.max_rollbacks
        if self.checkpoints is None:
            raise TrainingUnstable(f"{bad}; enable [checkpoint] so the run can roll back")
        if self.rollbacks >= limit:
            raise TrainingUnstable(f"{bad}, after {self.rollbacks} rollbacks (train.max_rollbacks = {limit})")
        self.checkpoints.wait()
        path, rejected = self.checkpoints.choose(below_step=bad.step)
        for skipped in rejected:
            self._log(step=self.step, event="checkpoint_skipped", path=str(skipped.path), reason=skipped.reason)
        if path is None:
            raise TrainingUnstable(f"{bad}, and no valid checkpoint before it to roll back to")
        self.rollbacks += 1
        self.skip_batches.update(bad.batches)
        self.restore(path)
        if self.instability_path is not None and (not dist.is_initialized() or dist.get_rank() == 0):
            # Until the next checkpoint records them, a restart learns the skipped batches from this file.
            record_instability(self.instability_path, sorted(self.skip_batches), self.rollbacks)
        record = {
            "bad_step": bad.step,
            "reason": bad.reason,
            "to_step": self.step,
            "skipped_batches": bad.batches,
            "rollbacks": self.rollbacks,
        }
        self._log(step=self.step, event="rollback", **record)
        if self.ledger is not None:
            self.ledger.record("rollback", **record)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the fixed evaluation batches (None when there are none)."""
        if not self.eval_batches:
            return None
        self.parts.train(False)
        losses = []
        for global_batch in self.eval_batches:
            batch = tuple(self._local_rows(t).to(self.device) for t in global_batch)
            if self.parts.schedule is not None:
                local = self._pipeline_step(batch[0], batch[1], train=False)
            else:
                local = self._loss(batch, _trained_tokens(global_batch))
            losses.append(self._global_mean(local))
        self.parts.train()
        return float(torch.stack(losses).mean())

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until `steps` (or `max_minutes`), logging every `log_every` steps."""
        cfg = self.cfg
        start = last_time = time.perf_counter()
        last_tokens, last_wait = self.tokens_seen, self.data_wait_s
        losses: dict[int, float] = {}
        pending: list[tuple[int, torch.Tensor]] = []
        stopped_early = False
        val_loss = None
        interval = self.checkpoints.interval if self.checkpoints is not None else 0
        while self.step < cfg.steps:
            lr = self.scheduler.get_last_lr()[0]
            step_start = time.perf_counter()
            try:
                loss, grad_norm = self.train_step()
            except InstabilityDetected as bad:
                self._roll_back(bad)
                pending = [(step, value) for step, value in pending if step <= self.step]
                continue
            if self.ledger is not None:
                self.ledger.record("step", step=self.step, duration_s=round(time.perf_counter() - step_start, 6))
            pending.append((self.step, loss))
            last_step = self.step == cfg.steps
            out_of_time = self._out_of_time(start)
            if interval and (self.step % interval == 0 or last_step or out_of_time):
                self.save_checkpoint()
            if self.step % cfg.log_every == 0 or self.step == 1 or last_step or out_of_time:
                # Synchronise with the device only when logging, so GPU steps can queue up in between.
                for step, value in pending:
                    losses[step] = float(value)
                pending.clear()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {float(loss)} at step {self.step}")
                now = time.perf_counter()
                tokens_per_s = (self.tokens_seen - last_tokens) / max(now - last_time, 1e-9)
                self._log(
                    step=self.step,
                    loss=losses[self.step],
                    lr=lr,
                    grad_norm=float(grad_norm),
                    tokens=self.tokens_seen,
                    elapsed_s=now - start,
                    data_wait_s=self.data_wait_s - last_wait,
                    peak_memory_gb=peak_memory_bytes(self.device) / 2**30,
                    **self._speed(tokens_per_s),
                )
                last_time, last_tokens, last_wait = now, self.tokens_seen, self.data_wait_s
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
            data_wait_s=self.data_wait_s,
            peak_memory_bytes=peak_memory_bytes(self.device),
        )

    def _out_of_time(self, start: float) -> bool:
        if self.cfg.max_minutes is None:
            return False
        late = time.perf_counter() - start > self.cfg.max_minutes * 60
        if self.dims is not None and self.dims.distributed:
            # Every rank must stop at the same step, or the others wait forever in a collective.
            late = agree_any(late, self.device)
        return late

    def _speed(self, tokens_per_s: float) -> dict[str, float]:
        if self.throughput is None:
            return {"tokens_per_s": tokens_per_s}
        per_device = tokens_per_s / self.throughput.devices
        return {
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device,
            "mfu": per_device * self.throughput.flops_per_token / self.throughput.peak_flops_per_device,
        }

    def _log(self, **record: object) -> None:
        if self.logger is not None:
            self.logger.log(record)
