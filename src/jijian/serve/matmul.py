"""Projections through oneDNN with weights packed once, for the CPU serving path.

A decode step multiplies a handful of rows (one per running request, a few more with speculative
drafts) by every weight matrix. PyTorch's default CPU path calls MKL's sgemm on the weight as
stored, which re-packs it into cache-friendly panels on every call; oneDNN's inner product takes
the weight already in its blocked layout (packed here once, at engine start) and skips that work.
The gain is largest for the output head (a 49152 x 576 matrix for SmolLM2, twice as fast at 16
rows on 2 AVX2 cores); `benchmarks/serve_throughput.py` measures the end-to-end effect.

The packed copy is extra memory (one more copy of each packed weight). The runner packs a view of
the model (new modules over the same parameters), so the caller's model, its state dict, tied
embeddings and weight accounting are unchanged.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from jijian.model.quantized import Bf16Linear

M = TypeVar("M", bound=nn.Module)


def packing_available() -> bool:
    """True when this PyTorch build has oneDNN (mkldnn) linear kernels."""
    available = torch.backends.mkldnn.is_available()
    return bool(available) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """An `nn.Linear` for inference that multiplies by a oneDNN-packed copy of its weight.

    It shares the original's parameters (so a tied output head stays tied to the embedding); the
    packed copy is a plain attribute, not a buffer, and is not refreshed if the weight changes later.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    packed: torch.Tensor

    def __init__(self, linear: nn.Linear | Bf16Linear) -> None:
        super().__init__()
        weight, bias = linear.weight, linear.bias
        # Bf16Linear holds its weight and bias as buffers, which nn.Module's typing sees as Tensor | Module.
        assert isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor))
        self.weight = weight
        self.bias = bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inference only (the runner runs under inference_mode): the packed kernel has no backward.
        out: torch.Tensor
        if self.weight.dtype == x.dtype:
            out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return out
        # bf16 weights under an fp32 model: the product in bf16 (plain F.linear takes a slow path for a few rows).
        out = torch.ops.mkldnn._linear_pointwise(x.to(self.weight.dtype), self.packed, None, "none", [], "").to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


def with_packed_linears(model: M) -> M:
    """A copy of `model` whose fp32 and bf16 linear layers are `PackedLinear`s; `model` itself is untouched.

    The copy's modules are new but its parameters and buffers are the original tensors (no weight
    is duplicated except for the packed copies), so the caller can go on using, copying or
    quantising `model`. Without oneDNN the model itself is returned.
    """
    if not packing_available():
        return model
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    view = copy.deepcopy(model, memo=shared)
    for parent in list(view.modules()):
        for name, child in list(parent.named_children()):
            if child.__class__ not in (nn.Linear, Bf16Linear) or child.weight.device.type != "cpu":
                continue
            if child.weight.dtype in (torch.float32, torch.bfloat16):
                setattr(parent, name, PackedLinear(child))
    return view
