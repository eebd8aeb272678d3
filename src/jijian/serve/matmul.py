"""The CPU serving path's projections: oneDNN with weights packed once, and q/k/v and gate/up fused.

A decode step multiplies a handful of rows (one per running request, a few more with speculative
drafts) by every weight matrix. PyTorch's default CPU path calls MKL's sgemm on the weight as
stored, which re-packs it into cache-friendly panels on every call; oneDNN's inner product takes
the weight already in its blocked layout (packed here once, at engine start) and skips that work.
The gain is largest for the output head (a 49152 x 576 matrix for SmolLM2, twice as fast at 16
rows on 2 AVX2 cores); `benchmarks/serve_throughput.py` measures the end-to-end effect.

The projections that read the same input (q, k and v; gate and up) are fused into one product each,
as vLLM's QKVParallelLinear does: a single-stream decode step on the CPU is dominated by per-call cost
(dispatch, dtype conversions, one pass over the input per kernel), and fusing cuts SmolLM2's 7 kernel
calls per layer to 4 (measured: 24 -> 20 ms per int4 decode step, one thread). Float weights are fused
into one packed copy; int4 weights into one kernel-layout tensor whose row slices become the separate
layers' kernel copies, so fusing adds no weight memory beyond the group scales. The CPU int4 layout
packs rows in blocks of 64, so parts whose rows end inside a block (no published model's) stay unfused,
as do int8 layers, layers with LoRA hooks, and accelerators (whose CUDA graphs remove the per-call cost).

The packed copy is extra memory (one more copy of each packed weight). The runner packs a view of
the model (new modules over the same parameters), so the caller's model, its state dict, tied
embeddings and weight accounting are unchanged.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from jijian.model.llama import Attention, FeedForward
from jijian.model.quantized import Bf16Linear, Int4Linear, Int8Linear, PackedInt4Product, stacked_int4_kernel_weight

M = TypeVar("M", bound=nn.Module)


def packing_available() -> bool:
    """True when this PyTorch build has oneDNN (mkldnn) linear kernels."""
    available = torch.backends.mkldnn.is_available()
    return bool(available) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """An inference linear layer that multiplies by a oneDNN-packed copy of a float weight.

    The packed copy is a plain attribute, not a buffer; it is not refreshed if the weight changes later.
    """

    bias: torch.Tensor | None
    packed: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = bias
        self.weight_dtype = weight.dtype
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    @classmethod
    def from_linear(cls, linear: nn.Linear | Bf16Linear) -> PackedLinear:
        weight, bias = linear.weight, linear.bias
        # Bf16Linear holds its weight and bias as buffers, which nn.Module's typing sees as Tensor | Module.
        assert isinstance(weight, torch.Tensor) and (bias is None or isinstance(bias, torch.Tensor))
        return cls(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inference only (the runner runs under inference_mode): the packed kernel has no backward.
        out: torch.Tensor
        if self.weight_dtype == x.dtype:
            out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return out
        # bf16 weights under an fp32 model: the product in bf16 (plain F.linear takes a slow path for a few rows).
        out = torch.ops.mkldnn._linear_pointwise(x.to(self.weight_dtype), self.packed, None, "none", [], "").to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


class FusedProjection(nn.Module):
    """Projections of one input as one product (q/k/v, gate/up): returns the parts' outputs, split."""

    def __init__(self, product: nn.Module, sizes: Sequence[int]) -> None:
        super().__init__()
        self.product = product
        self.sizes = list(sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: torch.Tensor = self.product(x)
        parts: tuple[torch.Tensor, ...] = out.split(self.sizes, dim=-1)
        return parts


def _features(part: nn.Module, which: str) -> int:
    """A linear layer's `in_features` or `out_features` (plain ints on every layer type here)."""
    return int(getattr(part, which))


def _concatenated_bias(parts: Sequence[nn.Module]) -> torch.Tensor | None:
    biases = [getattr(part, "bias", None) for part in parts]
    present = [b for b in biases if b is not None]
    if not present:
        return None
    zeros = [present[0].new_zeros(_features(part, "out_features")) for part in parts]
    return torch.cat([b if b is not None else z for b, z in zip(biases, zeros, strict=True)]).detach()


def _fused_product(parts: Sequence[nn.Module]) -> nn.Module | None:
    """One module multiplying by the parts' weights stacked along the output features; None if they cannot fuse."""
    kinds = {type(part) for part in parts}
    if len(kinds) != 1 or len({_features(part, "in_features") for part in parts}) != 1:
        return None
    kind = kinds.pop()
    if kind in (nn.Linear, Bf16Linear):
        weights = [part.get_buffer("weight") if kind is Bf16Linear else part.get_parameter("weight") for part in parts]
        if weights[0].device.type != "cpu" or len({w.dtype for w in weights}) != 1:
            return None
        if weights[0].dtype not in (torch.float32, torch.bfloat16):
            return None
        with torch.no_grad():
            return PackedLinear(torch.cat([w.detach() for w in weights]), _concatenated_bias(parts))
    if kind is Int4Linear:
        int4 = [part for part in parts if isinstance(part, Int4Linear)]
        packs = [part.packed for part in int4]
        layouts = {(p.device.type, p.dim(), p.shape[0] == q.out_features) for p, q in zip(packs, int4, strict=True)}
        if layouts != {("cpu", 2, True)} or len({part.group_size for part in int4}) != 1:
            return None
        with torch.no_grad():
            packed = stacked_int4_kernel_weight(int4)
            if packed is None:
                return None
            # Each part's kernel copy becomes its rows of the fused one (the same values), in place, so the
            # model and this view both drop their separate copies.
            start, width = 0, packed.shape[1]
            for part in int4:
                part.packed.set_(packed.untyped_storage(), start * width, (part.out_features, width), (width, 1))
                start += part.out_features
            scales = torch.cat([part.scales_and_zeros for part in int4], dim=1)
        return PackedInt4Product(packed, scales, int4[0].group_size, _concatenated_bias(int4))
    return None


# Module type -> (the fused attribute the model's forward uses, the parts it replaces).
FUSED_GROUPS = {
    Attention: ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
    FeedForward: ("gate_up_proj", ("gate_proj", "up_proj")),
}


def fuse_projections(model: nn.Module) -> list[nn.Module]:
    """Fuse every attention's q/k/v and every MLP's gate/up of `model` (in place); the layers now unused."""
    unused: list[nn.Module] = []
    for module in list(model.modules()):
        group = FUSED_GROUPS.get(type(module))
        if group is None:
            continue
        fused_name, names = group
        parts = [module.get_submodule(name) for name in names]
        if any(part._forward_hooks or part._forward_pre_hooks for part in parts):
            continue  # LoRA adapters hook the separate layers
        product = _fused_product(parts)
        if product is not None:
            setattr(module, fused_name, FusedProjection(product, [_features(part, "out_features") for part in parts]))
            unused.extend(parts)
    return unused


@functools.cache
def native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16 matmul is fast.

    Read once per process: every quantised projection's float copy asks."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class QuantizedOrDense(nn.Module):
    """A quantised projection that hands steps of many rows to a float copy of the same weights.

    The packed int4/int8 kernels dequantise the weight again for every few rows, so their cost grows with
    the rows of a step: on SmolLM2 (2 AVX-512 cores, one thread) the int4 projections take 6 ms for one row
    and 650 ms for 256, where oneDNN's bf16 matmul takes 24 and 46 ms. A decode step of up to `max_rows` rows
    uses the quantised kernel; prompt chunks and larger batches use the copy (bf16 where the CPU multiplies
    bf16 natively, else fp32), dequantised from the same codes.
    """

    def __init__(self, quantized: nn.Module, dense: PackedLinear, max_rows: int) -> None:
        super().__init__()
        self.quantized = quantized
        self.dense = dense
        self.max_rows = max_rows
        self.in_features, self.out_features = dense.in_features, dense.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        few_rows = x.numel() <= self.max_rows * x.shape[-1]
        out: torch.Tensor = self.quantized.forward(x) if few_rows else self.dense.forward(x)
        return out


def _dense_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> PackedLinear:
    dtype = torch.bfloat16 if native_bf16() else torch.float32
    return PackedLinear(weight.to(dtype), None if bias is None else bias.detach().clone())


def _with_dense_copies(model: nn.Module, max_rows: int, unused: set[int]) -> None:
    """Give every int4/int8 projection of `model` (fused ones included) a float copy for steps above max_rows."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in unused:  # a part of a fused projection, which gets the copy
                continue
            if isinstance(child, FusedProjection) and isinstance(child.product, PackedInt4Product):
                parts = [parent.get_submodule(part) for part in FUSED_GROUPS[type(parent)][1]]
                weight = torch.cat([part.dequantized() for part in parts if isinstance(part, Int4Linear)])
                dense = _dense_copy(weight, child.product.bias)
                child.product = QuantizedOrDense(child.product, dense, max_rows)
            elif isinstance(child, (Int4Linear, Int8Linear)):
                dense = _dense_copy(child.dequantized(), child.bias)
                setattr(parent, name, QuantizedOrDense(child, dense, max_rows))


def with_packed_linears(model: M, *, fuse: bool = True, dense_above_rows: int = 0) -> M:
    """A copy of `model` whose fp32 and bf16 linear layers are `PackedLinear`s, q/k/v and gate/up fused.

    `fuse=False` keeps every projection a layer of its own (LoRA adapters hook them one by one).
    `dense_above_rows > 0` gives quantised projections a float copy for steps of more rows (`QuantizedOrDense`).
    The copy's modules are new but its parameters and buffers share the original tensors' storage (no
    weight is duplicated except for the packed copies; the parameters are detached, needing no gradient),
    so the caller can go on using, copying or quantising `model`. Without oneDNN the model itself is returned.
    """
    if not packing_available():
        return model
    # The view's parameters share the model's storage, detached: it only serves, and weights that need no
    # gradient are what the CPU decode step's trace can record (static_decode).
    shared: dict[int, object] = {id(b): b for b in model.buffers()}
    shared.update({id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()})
    view = copy.deepcopy(model, memo=shared)
    unused = {id(layer) for layer in fuse_projections(view)} if fuse else set()
    for parent in list(view.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in unused or child.__class__ not in (nn.Linear, Bf16Linear):
                continue
            if child.weight.device.type != "cpu":
                continue
            if child.weight.dtype in (torch.float32, torch.bfloat16):
                setattr(parent, name, PackedLinear.from_linear(child))
    if dense_above_rows > 0:
        with torch.no_grad():
            _with_dense_copies(view, dense_above_rows, unused)
    return view
