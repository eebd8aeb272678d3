"""Scaling report: device counts, efficiency against the best per-device rate, the PNG."""

from __future__ import annotations

import pytest

from jijian.config import ModelConfig
from jijian.plan import PlanError, Workload, make_cluster, plot_scaling, scaling_report
from jijian.plan.scaling import device_counts
from jijian.spec.shape import ModelShape


def test_device_counts_double_up_to_the_limit():
    assert device_counts(8, 64) == [8, 16, 32, 64]
    assert device_counts(8, 100) == [8, 16, 32, 64, 100]


def test_efficiency_is_per_device_rate_over_the_best(tmp_path):
    work = Workload(ModelShape.from_config(ModelConfig(preset="llama3-70b")), 4096, 1024, 1e12)
    points = scaling_report(work, make_cluster("H800"), 256)
    assert [p.gpus for p in points] == [16, 32, 64, 128, 256]  # 70B fits no layout of 8 x 80 GB
    rates = [p.best.tokens_per_s / p.gpus for p in points]
    assert [p.efficiency for p in points] == pytest.approx([r / max(rates) for r in rates])
    assert max(p.efficiency for p in points) == 1.0
    png = plot_scaling(points, tmp_path / "s.png", "70B")
    assert png.stat().st_size > 1000
    with pytest.raises(PlanError, match="at least 8"):
        scaling_report(work, make_cluster("H800"), 4)
