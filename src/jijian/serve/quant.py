"""int8 weight-only quantisation with one fp32 scale per output channel (symmetric, round to nearest).

Weights rest in memory as int8 (a quarter of fp32) and are widened to the activation dtype inside
each matmul; activations, norms and the embedding stay in full precision. A tied output head shares
the embedding, so it stays unquantised too (quantising it would store the matrix twice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jijian.model.llama import CausalLM


class Int8Linear(nn.Module):
    """A bias-free linear layer holding int8 weights and per-output-channel scales."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantise a float linear layer: scale = max|w| / 127 per row."""
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        quantised = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(quantised, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)


def quantize_int8(model: CausalLM) -> CausalLM:
    """Replace every projection (and an untied output head) by Int8Linear, in place."""
    for layer in model.model.layers.values():
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear.from_linear(child))
    if model.lm_head is not None and not model.cfg.tie_embeddings:
        model.lm_head = Int8Linear.from_linear(model.lm_head)  # type: ignore[assignment]
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and persistent buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    rope = getattr(getattr(model, "model", None), "inv_freq", None)
    if rope is not None:
        seen.pop(rope.data_ptr(), None)
    return sum(seen.values())
