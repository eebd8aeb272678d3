"""Optimisers and learning-rate schedules: AdamW, and LAMB / LARS for large batches; warmup then decay.

LAMB and LARS scale each parameter's step by a trust ratio ||w|| / ||update||. Under FSDP or TP a
rank holds only a shard, so the norms come from `global_norms` (norm of the whole parameter). The
element-wise math runs on the local shards; optimizer state keeps the parameter's sharding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from jijian.config import TrainConfig
from jijian.train.norms import global_norms, local_part


def parameter_groups(params: Iterable[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """Matrices decay and adapt; vectors (norm weights, biases) do neither — decay would pull them to zero."""
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for param in params:
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments (You et al. 2019): Adam's update, scaled per parameter by ||w|| / ||u||."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "adapt": True})

    # Ignored override: no closure is taken, while torch's overloads promise a closure's loss back.
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One LAMB update of every parameter with a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            updates = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                w, g = local_part(p), local_part(p.grad)
                m, v = local_part(state["exp_avg"]), local_part(state["exp_avg_sq"])
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(w, alpha=group["weight_decay"])
                updates.append(update)
            ratios = _trust_ratios(params, updates) if group["adapt"] else None
            for i, (p, update) in enumerate(zip(params, updates, strict=True)):
                scale = group["lr"] if ratios is None else group["lr"] * ratios[i]
                local_part(p).sub_(update * scale)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017): SGD with momentum, local LR eta*||w||/(||g||+wd*||w||)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "adapt": True,
        }
        super().__init__(params, defaults)

    # Ignored override: no closure is taken, while torch's overloads promise a closure's loss back.
    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One LARS update of every parameter with a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            wd = group["weight_decay"]
            local_lr = None
            if group["adapt"]:
                norms = global_norms([*params, *(p.grad for p in params)])
                w_norm, g_norm = norms[: len(params)], norms[len(params) :]
                trust = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                local_lr = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
            for i, p in enumerate(params):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                w, g, buf = local_part(p), local_part(p.grad), local_part(state["momentum_buffer"])
                step = g.add(w, alpha=wd) if wd else g.clone()
                scale = group["lr"] if local_lr is None else group["lr"] * local_lr[i]
                buf.mul_(group["momentum"]).add_(step * scale)
                w.sub_(buf)


def _trust_ratios(params: list[torch.Tensor], updates: list[torch.Tensor]) -> torch.Tensor:
    # Each update is a local shard laid out like its parameter, so it shares the parameter's sharding.
    norms = global_norms([*params, *updates], like=[*params, *params])
    w_norm, u_norm = norms[: len(params)], norms[len(params) :]
    return torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))


def build_optimizer(params: nn.Module | Iterable[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, with decay and layer adaptation on matrices only."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    groups = parameter_groups(params, cfg.weight_decay)
    if cfg.optimizer == "lamb":
        return LAMB(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    for group in groups:
        group.pop("adapt")
    # foreach (multi-tensor) kernels work for plain and DTensor parameters on CPU and CUDA alike.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True)


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Factor on the peak LR at optimiser step `step` (0-based): linear warmup, then the configured decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_multiplier` (its state is a step count, so it checkpoints trivially)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
