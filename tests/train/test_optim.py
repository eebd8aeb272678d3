"""LAMB and LARS against the papers' update rules written out per tensor; schedules."""

from __future__ import annotations

import math

import pytest
import torch

from jijian.config import TrainConfig
from jijian.train.norms import clip_grad_norm_, global_norms
from jijian.train.optim import LAMB, LARS, build_optimizer, lr_multiplier


def reference_lamb(w, grads, lr, beta1, beta2, eps, wd, adapt):
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    w = w.clone()
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        u = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps) + wd * w
        ratio = (w.norm() / u.norm()).item() if adapt else 1.0
        w = w - lr * ratio * u
    return w


def reference_lars(w, grads, lr, momentum, wd, eta, adapt):
    buf = torch.zeros_like(w)
    w = w.clone()
    for g in grads:
        if adapt:
            local_lr = eta * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
            buf = momentum * buf + lr * local_lr * (g + wd * w)
        else:
            buf = momentum * buf + lr * g
        w = w - buf
    return w


@pytest.mark.parametrize("adapt", [True, False])
def test_lamb_matches_the_paper_update(adapt):
    torch.manual_seed(0)
    w0 = torch.randn(8, 5)
    grads = [torch.randn(8, 5) for _ in range(4)]
    param = torch.nn.Parameter(w0.clone())
    wd = 0.1 if adapt else 0.0
    opt = LAMB([{"params": [param], "weight_decay": wd, "adapt": adapt}], lr=0.05, betas=(0.9, 0.99), eps=1e-6)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected = reference_lamb(w0, grads, 0.05, 0.9, 0.99, 1e-6, wd, adapt)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adapt", [True, False])
def test_lars_matches_the_paper_update(adapt):
    torch.manual_seed(1)
    w0 = torch.randn(6, 7)
    grads = [torch.randn(6, 7) for _ in range(4)]
    param = torch.nn.Parameter(w0.clone())
    wd = 1e-4 if adapt else 0.0
    opt = LARS([{"params": [param], "weight_decay": wd, "adapt": adapt}], lr=0.5, momentum=0.9, trust_coefficient=0.01)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected = reference_lars(w0, grads, 0.5, 0.9, wd, 0.01, adapt)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)


def test_norms_and_biases_are_excluded_from_decay_and_adaptation():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, TrainConfig(optimizer="lamb", weight_decay=0.1, warmup_steps=0))
    matrices, vectors = opt.param_groups
    assert all(p.ndim == 2 for p in matrices["params"]) and matrices["adapt"] and matrices["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in vectors["params"]) and not vectors["adapt"] and vectors["weight_decay"] == 0.0


def test_global_norm_clipping_matches_torch_on_plain_tensors():
    torch.manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins, strict=True):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    ours = clip_grad_norm_(params, 1.0)
    theirs = torch.nn.utils.clip_grad_norm_(twins, 1.0)
    torch.testing.assert_close(ours, theirs)
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    torch.testing.assert_close(global_norms([p.grad for p in params]), torch.stack([p.grad.norm() for p in params]))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedules_warm_up_then_decay_to_the_floor(schedule):
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1, lr_schedule=schedule)
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    end = lr_multiplier(100, cfg)
    assert end == pytest.approx(1.0 if schedule == "constant" else 0.1)
    middle = lr_multiplier(55, cfg)
    expected = {"cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), "linear": 0.1 + 0.9 * 0.5, "constant": 1.0}
    assert middle == pytest.approx(expected[schedule])
