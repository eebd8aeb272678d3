"""Low-rank adapters (LoRA): y = W x + (alpha / r) * B A dropout(x) on chosen linear layers, W frozen.

Adapters live inside the linear layer they adapt, as `lora_A` / `lora_B` children, and a forward
hook adds their product. The base parameters keep their Hugging Face names, so loading a base model
and sharding it works exactly as without adapters; the adapter tensors are named like PEFT's, so
`save_peft_adapter` writes a directory that `peft.PeftModel.from_pretrained` loads onto the
transformers model.

`quantize_frozen_base` (QLoRA-style, `train.lora.base_weights = "int8"`) then stores every frozen
projection of the decoder layers as int8 codes (`weight`) with fp32 per-output-channel scales (`scale`),
keeping the adapters, their hook and their dtype; checkpoints hold those two tensors, and
`dequantize_int8_base` turns them back into the float weight the run trained against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor

from jijian.config.errors import UserInputError
from jijian.config.schema import LORA_TARGETS
from jijian.files import replaced_directory
from jijian.model.llama import CausalLM
from jijian.model.quantized import FrozenInt8Linear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FINGERPRINT = "jijian_base.json"  # beside PEFT's files: the base model's shape, which PEFT does not record
PEFT_PREFIX = "base_model.model."
LINEAR_NAMES = LORA_TARGETS


class LoRAError(UserInputError):
    """A LoRA setting or adapter directory that cannot be used."""


def _add_lora_output(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    # add_lora set these attributes; nn.Module's __getattr__ types every attribute as Tensor | Module.
    dropout = cast(nn.Module, module.lora_dropout)
    lora_a, lora_b = cast(nn.Module, module.lora_A), cast(nn.Module, module.lora_B)
    scaling = cast(float, module.lora_scaling)
    adapted: torch.Tensor = output + lora_b(lora_a(dropout(args[0]))) * scaling
    return adapted


def add_lora(model: CausalLM, rank: int, alpha: float, dropout: float, targets: Iterable[str]) -> list[str]:
    """Put adapters on every linear layer whose name is in `targets` and freeze all other parameters.

    Works on a model on the meta device (before sharding) as well as a materialised one, where
    A starts random and B at zero so the adapted model starts equal to the base. Returns the names
    of the adapted layers; a target that names no layer is an error.
    """
    targets = list(targets)
    unknown = sorted(set(targets) - set(LINEAR_NAMES))
    if unknown or not targets:
        raise LoRAError(
            f"train.lora.targets: {unknown or targets} names no module; choose from {', '.join(LINEAR_NAMES)}"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in targets:
            continue
        device, dtype = module.weight.device, module.weight.dtype
        module.lora_A = nn.Linear(module.in_features, rank, bias=False, device=device, dtype=dtype)
        module.lora_B = nn.Linear(rank, module.out_features, bias=False, device=device, dtype=dtype)
        module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # nn.Module.__setattr__ is typed for Tensor | Module only; a plain float attribute is valid at runtime.
        module.lora_scaling = alpha / rank  # type: ignore[assignment]
        if device.type != "meta":
            with torch.no_grad():
                nn.init.normal_(module.lora_A.weight, std=model.cfg.init_std)
                nn.init.zeros_(module.lora_B.weight)
        module.register_forward_hook(_add_lora_output)
        adapted.append(name)
    if not adapted:  # e.g. every target layer was pruned away by a pipeline stage
        raise LoRAError(f"train.lora.targets: {targets} matched no linear layer of the model")
    return adapted


ADAPTER_CHILDREN = ("lora_A", "lora_B", "lora_dropout")
INT8_SCALE_SUFFIX = ".scale"


def quantize_frozen_base(model: CausalLM) -> list[str]:
    """Replace every frozen attention and MLP projection of the decoder layers by a FrozenInt8Linear (in place).

    Call it after add_lora and after the base weights are loaded: the codes are taken from those weights
    (symmetric absmax per output channel). Adapters move over unchanged, in their own dtype. Returns the
    names of the quantised layers.
    """
    quantized = []
    for index, layer in model.model.layers.items():
        for part in ("self_attn", "mlp"):
            parent = layer.get_submodule(part)
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or child.weight.requires_grad:
                    continue
                if child.weight.device.type == "meta" or isinstance(child.weight, DTensor):
                    raise LoRAError(
                        "train.lora.base_weights = 'int8' quantises whole, loaded weights (not meta or sharded ones)"
                    )
                frozen = FrozenInt8Linear.from_linear(child)
                frozen.requires_grad_(False)
                for adapter in ADAPTER_CHILDREN:
                    if hasattr(child, adapter):
                        setattr(frozen, adapter, getattr(child, adapter))
                if hasattr(child, "lora_scaling"):
                    frozen.lora_scaling = child.lora_scaling
                    frozen.register_forward_hook(_add_lora_output)
                setattr(parent, name, frozen)
                quantized.append(f"model.layers.{index}.{part}.{name}")
    return quantized


def int8_base_layers(names: Iterable[str], dtypes: Mapping[str, torch.dtype]) -> set[str]:
    """The layers of a state dict whose weight is int8 codes with a `scale` beside it (a QLoRA run's frozen base)."""
    layers = set()
    for name in names:
        if name.endswith(INT8_SCALE_SUFFIX):
            layer = name.removesuffix(INT8_SCALE_SUFFIX)
            if dtypes.get(f"{layer}.weight") == torch.int8:
                layers.add(layer)
    return layers


def dequantize_int8_base(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state with each int8 `weight` + `scale` pair replaced by the fp32 weight codes * scale (scales dropped)."""
    layers = int8_base_layers(state, {k: v.dtype for k, v in state.items()})
    out = {k: v for k, v in state.items() if k.removesuffix(INT8_SCALE_SUFFIX) not in layers or k.endswith(".weight")}
    for layer in layers:
        codes, scale = state[f"{layer}.weight"], state[f"{layer}{INT8_SCALE_SUFFIX}"]
        out[f"{layer}.weight"] = codes.float() * scale.float()[:, None]
    return out


def frozen_base_bytes(model: nn.Module) -> int:
    """Parameter and buffer bytes of the decoder layers' projections, their adapters left out (fp32 or int8 base)."""
    total = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LINEAR_NAMES:
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter name belongs to an adapter."""
    return ".lora_A." in name or ".lora_B." in name


def lora_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a full state dict."""
    return {k: v for k, v in state.items() if is_lora_parameter(k)}


def merge_lora_state(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A plain base-model state dict with W + scaling * B A folded into each adapted weight."""
    merged = {k: v for k, v in state.items() if not is_lora_parameter(k)}
    for name in state:
        if name.endswith(".lora_A.weight"):
            layer = name.removesuffix(".lora_A.weight")
            a, b = state[name].float(), state[f"{layer}.lora_B.weight"].float()
            weight = merged[f"{layer}.weight"]
            merged[f"{layer}.weight"] = (weight.float() + scaling * (b @ a)).to(weight.dtype)
    return merged


def save_peft_adapter(
    adapters: Mapping[str, torch.Tensor],
    directory: str | Path,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: Iterable[str],
    base_model: str = "",
    base_fingerprint: Mapping[str, Any] | None = None,
) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` as PEFT does, replacing `directory` atomically.

    `base_fingerprint` (the base model's shape) is stored alongside, in `jijian_base.json`, so a
    server can refuse an adapter trained on another base.
    """
    directory = Path(directory)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(set(targets)),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": base_model,
    }
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in adapters.items()}
    with replaced_directory(directory) as staging:  # the old adapter stays whole until the new one is
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if base_fingerprint is not None:
            (staging / BASE_FINGERPRINT).write_text(json.dumps(dict(base_fingerprint)) + "\n", encoding="utf-8")
    return directory


def load_peft_adapter(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, adapter tensors with jijian's names) of a PEFT LoRA directory."""
    directory = Path(directory)
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise LoRAError(f"{config_path}: not found (is {directory} a PEFT adapter directory?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAError(f"{config_path}: cannot read: {exc}") from None
    if config.get("peft_type") != "LORA":
        raise LoRAError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise LoRAError(f"{weights}: not found")
    tensors = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in load_file(str(weights)).items()}
    return config, tensors


def base_fingerprint(cfg: Any) -> dict[str, Any]:
    """The base-model facts an adapter depends on: architecture and shape."""
    return {
        "architecture": cfg.architecture,
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
    }
