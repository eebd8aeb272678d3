"""Parallelism applied to a plain model from outside (torchtitan style): mesh, TP/SP, FSDP2, PP, AC, compile."""

from jijian.train.parallel.mesh import ParallelDims, build_parallel_dims
from jijian.train.parallel.parallelize import ModelParts, build_model_parts

__all__ = ["ModelParts", "ParallelDims", "build_model_parts", "build_parallel_dims"]
