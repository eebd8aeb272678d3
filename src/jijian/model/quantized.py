"""Weight-only quantised linear layers over PyTorch's packed matmul kernels (the ones gpt-fast and torchao use).

- `Int8Linear`: int8 weights, one fp32 scale per output channel (symmetric), multiplied by
  `aten._weight_int8pack_mm`.
- `Int4Linear`: 4-bit weights in groups of `group_size` input features, each group with its own
  scale and zero (asymmetric, the layout of llama.cpp's Q4_1 and of tinygemm): w = (q - 8) * scale + zero.
  On the CPU it multiplies with `aten._weight_int4pack_mm_for_cpu`, on CUDA with tinygemm's
  `aten._weight_int4pack_mm`; each wants the weight repacked into its own layout, done once per device.
- `Bf16Linear`: bf16 weights under a float32 model.

Activations, norms, attention and the KV cache keep the model's dtype; only the product runs in bf16,
the dtype these kernels are vectorised for (on the CPU their fp32 and fp16 paths are scalar loops,
measured 50-200x slower), and its output is widened back. Biases are added in the model's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INT4_GROUP_SIZES = (32, 64, 128, 256)
# Output features a packed int4 weight must divide into: the CPU kernel packs 16 rows at a time, tinygemm 8.
_INT4_ROW_MULTIPLE = {"cpu": 16, "cuda": 8}
INT8_DEVICES = ("cpu", "cuda", "mps")
COMPUTE_DTYPE = torch.bfloat16


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """bf16 everywhere except fp16 activations on an accelerator (a pre-Ampere GPU has no bf16)."""
    if x.dtype == torch.float16 and x.device.type != "cpu":
        return torch.float16
    return COMPUTE_DTYPE


class Int8Linear(nn.Module):
    """A linear layer holding int8 weights (out, in) and per-output-channel fp32 scales."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2 or scale.shape != weight.shape[:1]:
            raise ValueError(f"Int8Linear wants an int8 (out, in) weight and (out,) scales, got {weight.shape}")
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_features, self.in_features = weight.shape
        self._unit_scales: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantise a float linear layer: scale = max|w| / 127 per row, round to nearest."""
        weight, scale = quantize_int8_weight(linear.weight.detach())
        return cls(weight, scale, linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float (out, in) weight these codes stand for (a reference for tests and slicing)."""
        return self.weight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        # The kernel multiplies by unit scales; the fp32 scales are applied after, so they are not rounded to bf16.
        ones = self._unit_scales
        if ones is None or ones.dtype != dtype or ones.device != x.device:
            ones = self._unit_scales = torch.ones(self.out_features, dtype=dtype, device=x.device)
        out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(_flat(x).to(dtype), self.weight, ones)
        out = out.to(x.dtype) * self.scale.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


class _FrozenInt8Matmul(torch.autograd.Function):
    """x @ (codes * scale)^T with a gradient for x only: saves the int8 codes and scales, never a float weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # ctx is typed Any: FunctionCtx carries whatever forward stores on it (saved tensors, the input dtype).
        ctx.save_for_backward(codes, scale)
        ctx.input_dtype = x.dtype
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        flat = _flat(x).to(dtype)
        if x.device.type == "cpu" and dtype == COMPUTE_DTYPE:
            # The packed kernel (bf16 activations on the CPU), with unit scales: the fp32 scales are applied below.
            ones = torch.ones(codes.shape[0], dtype=dtype, device=x.device)
            product: torch.Tensor = torch.ops.aten._weight_int8pack_mm(flat, codes, ones)
        else:
            # One layer's codes widened for this product only; freed before the next layer runs.
            product = flat @ codes.to(dtype).t()
        # Per-output-channel scales commute with the product; applied in fp32 so they are not rounded to bf16.
        out = (product.float() * scale).to(dtype)
        return out.reshape(*x.shape[:-1], codes.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        codes, scale = ctx.saved_tensors
        dtype = grad.dtype
        # d/dx of x @ (s * W)^T is (grad * s) @ W: the same dequantised weight as the forward, built on the fly.
        scaled = (_flat(grad).float() * scale).to(dtype)
        grad_x = (scaled @ codes.to(dtype)).reshape(*grad.shape[:-1], codes.shape[1])
        return grad_x.to(ctx.input_dtype), None, None


class FrozenInt8Linear(Int8Linear):
    """A frozen base layer under LoRA training: int8 codes and fp32 per-output-channel scales, input gradients exact.

    Forward and backward both multiply by dequant(W) = codes * scale, computed from the int8 codes on the
    fly, in the activations' dtype (bf16 under autocast; on the CPU bf16 goes through the packed int8 kernel),
    so no float copy of the base outlives one layer's product.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Function.apply is unannotated in torch: its result is forward's.
        out: torch.Tensor = _FrozenInt8Matmul.apply(x, self.weight, self.scale)  # type: ignore[no-untyped-call]
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out


class Int4Linear(nn.Module):
    """A linear layer holding 4-bit weights in groups along the input features, with a scale and zero per group.

    Buffers (the portable form, saved in state dicts and sliced for tensor parallelism): `qweight`,
    uint8 (out, in / 2) with input feature 2j in the high nibble of byte j and 2j + 1 in the low one,
    and `scales_and_zeros`, bf16 (in / group_size, out, 2). The kernel's layout for the current device
    is a second, derived copy kept beside them and rebuilt if the module moves to another device.
    """

    qweight: torch.Tensor
    scales_and_zeros: torch.Tensor
    bias: torch.Tensor | None
    packed: torch.Tensor

    def __init__(
        self,
        qweight: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        out_features, half = qweight.shape
        in_features = 2 * half
        problem = int4_shape_problem(out_features, in_features, group_size, qweight.device.type)
        if problem:
            raise ValueError(problem)
        if scales_and_zeros.shape != (in_features // group_size, out_features, 2):
            raise ValueError(
                f"scales_and_zeros has shape {tuple(scales_and_zeros.shape)}, expected "
                f"{(in_features // group_size, out_features, 2)}"
            )
        self.register_buffer("qweight", qweight.to(torch.uint8).contiguous())
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(COMPUTE_DTYPE).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_features, self.in_features, self.group_size = out_features, in_features, group_size
        # A buffer, so that views of the model (the runner's) share it; not saved, since its layout is per device.
        self.register_buffer("packed", _pack_int4(self.qweight), persistent=False)
        self.packed_for = str(self.qweight.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> Int4Linear:
        """Quantise a float linear layer group-wise: each group's min..max range mapped onto 0..15."""
        codes, scales, zeros = quantize_int4_weight(linear.weight.detach(), group_size)
        return cls.from_codes(codes, scales, zeros, group_size, linear.bias)

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> Int4Linear:
        """From codes 0..15 (out, in) and (out, in / group_size) scales and zeros: w = (q - 8) * scale + zero."""
        return cls(*int4_tensors(codes, scales, zeros), group_size, bias)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes, (out, in) uint8 in 0..15."""
        return torch.stack([self.qweight >> 4, self.qweight & 15], dim=-1).reshape(self.out_features, -1)

    def dequantized(self) -> torch.Tensor:
        """The float (out, in) weight these codes stand for (a reference for tests)."""
        scales = self.scales_and_zeros[..., 0].float().t().repeat_interleave(self.group_size, dim=1)
        zeros = self.scales_and_zeros[..., 1].float().t().repeat_interleave(self.group_size, dim=1)
        return (self.codes().float() - 8) * scales + zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_for != str(self.qweight.device):  # moved with .to(): repack in this device's layout
            self.packed = _pack_int4(self.qweight)
            self.packed_for = str(self.qweight.device)
        return int4_matmul(x, self.packed, self.group_size, self.scales_and_zeros, self.bias)


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ W^T + bias for an int4 weight W in its device's kernel layout; the product runs in bf16."""
    flat = _flat(x).to(COMPUTE_DTYPE)
    out: torch.Tensor
    if x.device.type == "cpu":
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, group_size, scales_and_zeros)
    else:
        out = torch.ops.aten._weight_int4pack_mm(flat, packed, group_size, scales_and_zeros)
    out = out.to(x.dtype)
    if bias is not None:
        out = out + bias.to(x.dtype)
    return out.view(*x.shape[:-1], out.shape[-1])


class PackedInt4Product(nn.Module):
    """x @ W^T for an int4 weight held only in the CPU kernel's layout: the serving runner's fused projections.

    It has no portable form (nothing to save or slice); `jijian.serve.matmul` builds it from Int4Linear parts.
    """

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.group_size = group_size
        self.out_features, self.in_features = scales_and_zeros.shape[1], scales_and_zeros.shape[0] * group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int4_matmul(x, self.packed, self.group_size, self.scales_and_zeros, self.bias)


class Bf16Linear(nn.Module):
    """A linear layer holding bf16 weights under a wider model (the server's runner multiplies a oneDNN-packed copy)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Bf16Linear:
        """Round a float linear layer's weight to bf16."""
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(_flat(x).to(torch.bfloat16), self.weight).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 codes, fp32 scales) with w ~ codes * scale."""
    weight = weight.float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    codes = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scale


def quantize_int4_weight(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit: (codes 0..15, scales, zeros) with w ~ (codes - 8) * scale + zero.

    Scales and zeros are rounded to bf16 (the kernels' dtype) before the codes are chosen, so the
    codes are the best ones for the scales actually used.
    """
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low).clamp(min=1e-6) / 15).to(COMPUTE_DTYPE).float()
    zeros = (low + 8 * scales).to(COMPUTE_DTYPE).float()
    codes = torch.round((groups - zeros[..., None]) / scales[..., None] + 8).clamp(0, 15).to(torch.uint8)
    return codes.reshape(out_features, in_features), scales, zeros


def int4_tensors(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int4Linear's portable buffers (`qweight`, `scales_and_zeros`) from codes, scales and zeros."""
    qweight = (codes[:, ::2].to(torch.uint8) << 4) | codes[:, 1::2].to(torch.uint8)
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).to(COMPUTE_DTYPE).contiguous()
    return qweight, scales_and_zeros


def int4_shape_problem(out_features: int, in_features: int, group_size: int, device_type: str) -> str | None:
    """Why the int4 kernel on `device_type` cannot hold an (out, in) weight in `group_size` groups; None if it can."""
    if device_type not in _INT4_ROW_MULTIPLE:
        return f"int4 weights run on {' and '.join(_INT4_ROW_MULTIPLE)}, not on {device_type}"
    if group_size not in INT4_GROUP_SIZES:
        return f"group size {group_size} is not one of {', '.join(map(str, INT4_GROUP_SIZES))}"
    if in_features % group_size:
        return f"in_features {in_features} is not a multiple of the group size {group_size}"
    rows = _INT4_ROW_MULTIPLE[device_type]
    if out_features % rows:
        return f"out_features {out_features} is not a multiple of {rows} (the {device_type} int4 kernel's row tile)"
    if device_type == "cuda" and in_features % 32:
        return f"in_features {in_features} is not a multiple of 32 (tinygemm's inner tile)"
    return None


def _pack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """The kernel layout of nibble-packed (out, in / 2) codes on their device."""
    if qweight.device.type == "cpu":
        codes = torch.stack([qweight >> 4, qweight & 15], dim=-1).reshape(qweight.shape[0], -1)
        packed: torch.Tensor = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        return packed
    in_features = 2 * qweight.shape[1]
    inner_k_tiles = next(t for t in (8, 4, 2) if in_features % (t * 16) == 0)
    packed = torch.ops.aten._convert_weight_to_int4pack(qweight, inner_k_tiles)
    return packed


def stacked_int4_kernel_weight(parts: list[Int4Linear]) -> torch.Tensor | None:
    """The parts' kernel-layout weights stacked along the output features, or None where that stack is not
    the kernel layout of their stacked weights (the CPU layout packs rows in blocks, so a part whose rows end
    inside a block does not stack; checked against packing the stacked codes, not assumed)."""
    stacked = torch.cat([part.packed for part in parts])
    if not torch.equal(stacked, _pack_int4(torch.cat([part.qweight for part in parts]))):
        return None
    return stacked


# Suffixes of a quantised projection's tensors in a saved state dict (`jijian model import-gguf --weights`).
INT4_TENSORS = ("qweight", "scales_and_zeros")
INT8_TENSORS = ("weight", "scale")


def split_quantized(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Take the quantised projections' tensors out of `state`: {module name: {tensor name: tensor}}."""
    prefixes = {name[: -len(".qweight")] for name in state if name.endswith(".qweight")}
    prefixes |= {name[: -len(".scale")] for name in state if name.endswith(".scale")}
    layers = {}
    for prefix in sorted(prefixes):
        names = [f"{prefix}.{leaf}" for leaf in (*INT4_TENSORS, *INT8_TENSORS, "bias")]
        layers[prefix] = {name.rsplit(".", 1)[1]: state.pop(name) for name in names if name in state}
    return layers


def quantized_layer(tensors: dict[str, torch.Tensor]) -> nn.Module:
    """An Int4Linear or Int8Linear from the tensors `split_quantized` took for one module (ValueError if malformed)."""
    bias = tensors.get("bias")
    if set(INT4_TENSORS) <= set(tensors):
        qweight, scales_and_zeros = tensors["qweight"], tensors["scales_and_zeros"]
        if scales_and_zeros.dim() != 3 or scales_and_zeros.shape[0] == 0:
            raise ValueError(f"scales_and_zeros has shape {tuple(scales_and_zeros.shape)}, expected (groups, out, 2)")
        group_size = 2 * qweight.shape[1] // scales_and_zeros.shape[0]
        return Int4Linear(qweight, scales_and_zeros, group_size, bias)
    if set(INT8_TENSORS) <= set(tensors):
        return Int8Linear(tensors["weight"], tensors["scale"], bias)
    raise ValueError(f"incomplete quantised tensors: has {sorted(tensors)}")
