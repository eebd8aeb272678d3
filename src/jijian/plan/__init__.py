"""Capacity and cost planning: memory, FLOPs, communication, step time, MFU, energy, money, best layout.

Pure Python over `jijian.config` (no torch), so a whole layout search answers in well under a second.
"""

from jijian.plan.errors import PlanError
from jijian.plan.estimate import Estimate, Layout, Workload, estimate, pf_days
from jijian.plan.hardware import Accelerator, Cluster, accelerator_names, get_accelerator, make_cluster
from jijian.plan.scaling import ScalingPoint, plot_scaling, scaling_report
from jijian.plan.search import SearchResult, evaluate_layout, parse_count, parse_layout, search
from jijian.plan.serving import ServePlan, Traffic, plan_serving
from jijian.plan.train_config import parallel_section
from jijian.spec.shape import ModelShape, training_flops_per_token

__all__ = [
    "Accelerator",
    "Cluster",
    "Estimate",
    "Layout",
    "ModelShape",
    "PlanError",
    "ScalingPoint",
    "SearchResult",
    "ServePlan",
    "Traffic",
    "Workload",
    "accelerator_names",
    "estimate",
    "evaluate_layout",
    "get_accelerator",
    "make_cluster",
    "parallel_section",
    "parse_count",
    "parse_layout",
    "pf_days",
    "plan_serving",
    "plot_scaling",
    "scaling_report",
    "search",
    "training_flops_per_token",
]
