"""`[serve] weights`: turn a float model's projections into the weight format the server multiplies by.

"int8" and "int4" replace every attention and MLP projection, and the output head, by the packed-kernel
layers of `jijian.model.quantized` (under "int4" the head is int8: it is the one matrix 4 bits hurt);
"bf16" rounds them to bf16 under a float32 model; "fp32" and "auto" leave them as loaded. The embedding
table and the norms stay in the model's dtype. When the output head is tied to the embedding (SmolLM2),
the head gets its own quantised copy: the head is the largest matrix a decode step reads, and the
embedding is only looked up a row at a time.

Every shape is checked before anything is replaced, so a model the kernel cannot hold fails with the
tensor's name and leaves the model as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn

from jijian.config.errors import UserInputError
from jijian.model.llama import CausalLM
from jijian.model.quantized import INT8_DEVICES, Bf16Linear, Int4Linear, Int8Linear, int4_shape_problem

WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8", "int4")

__all__ = ["WEIGHT_FORMATS", "Int4Linear", "Int8Linear", "QuantizationError", "quantize_int8", "quantize_model"]


class QuantizationError(UserInputError):
    """A model that cannot be served in the requested weight format (names the model and the tensor)."""


def projections(model: CausalLM) -> Iterator[tuple[str, nn.Module, str, nn.Linear]]:
    """(qualified name, parent, attribute, layer) of every float projection that a weight format replaces."""
    for index, layer in model.model.layers.items():
        for part in ("self_attn", "mlp"):
            parent = layer.get_submodule(part)
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    yield f"model.layers.{index}.{part}.{name}", parent, name, child
    if type(model.lm_head) is nn.Linear:
        yield "lm_head", model, "lm_head", model.lm_head


def quantize_model(model: CausalLM, weights: str, *, group_size: int = 32, source: str = "the model") -> CausalLM:
    """Serve `model`'s projections in `weights` format (in place); `source` names the model in errors."""
    if weights not in WEIGHT_FORMATS:
        raise QuantizationError(f"serve.weights = {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    # Imported quantised projections (the head is quantised here only, and int8 under int4 too).
    held = sorted({type(m).__name__ for m in model.model.modules() if isinstance(m, (Int4Linear, Int8Linear))})
    wanted = {"int4": Int4Linear.__name__, "int8": Int8Linear.__name__}.get(weights)
    if weights == "auto" and len(held) == 1:
        # "auto" serves the format the model holds: imported int4 or int8 projections keep it, and the head
        # (float until now) is quantised as that format would have it.
        weights = {Int4Linear.__name__: "int4", Int8Linear.__name__: "int8"}[held[0]]
        wanted = held[0]
    if held and weights != "auto" and held != [wanted]:
        raise QuantizationError(
            f"{source} holds {' and '.join(held)} projections (imported quantised), which serve.weights = "
            f'{weights!r} cannot change: serve it with weights = "auto", or import the GGUF again with '
            f"`jijian model import-gguf --weights {weights if weights in ('int8', 'int4') else 'fp32'}`"
        )
    if weights in ("auto", "fp32"):
        return model
    layers = list(projections(model))
    make: Callable[[nn.Linear], nn.Module]
    if weights == "bf16":
        make = Bf16Linear.from_linear
        layers = [entry for entry in layers if entry[3].weight.dtype != torch.bfloat16]
    elif weights == "int8":
        device = next(model.parameters()).device.type
        if device not in INT8_DEVICES:
            raise QuantizationError(
                f'serve.weights = "int8" runs on {", ".join(INT8_DEVICES)}; {source} is on {device}'
            )
        make = Int8Linear.from_linear
    else:
        for name, _, _, linear in layers:
            if name == "lm_head":
                continue
            problem = int4_shape_problem(linear.out_features, linear.in_features, group_size, linear.weight.device.type)
            if problem:
                raise QuantizationError(
                    f'{source}: serve.weights = "int4" cannot pack tensor {name}.weight, shape '
                    f'{tuple(linear.weight.shape)}: {problem}; use serve.weights = "int8" or another '
                    "serve.int4_group_size"
                )
        make = functools.partial(Int4Linear.from_linear, group_size=group_size)

    with torch.no_grad():
        for name, parent, attribute, linear in layers:
            # The output head stays int8 under int4 (as llama.cpp keeps it at 6-8 bits): in 4 bits it cost
            # SmolLM2 +6.8% perplexity, against +0.1% for every other projection together.
            layer = Int8Linear.from_linear(linear) if weights == "int4" and name == "lm_head" else make(linear)
            setattr(parent, attribute, layer)
    return model


def quantize_int8(model: CausalLM) -> CausalLM:
    """Serve the projections and the output head as int8 (in place); kept for callers of the first int8 path."""
    return quantize_model(model, "int8")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights held: parameters and buffers, kernel-packed copies included (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    rope = getattr(getattr(model, "model", None), "inv_freq", None)
    if rope is not None:
        seen.pop(rope.data_ptr(), None)
    return sum(seen.values())
