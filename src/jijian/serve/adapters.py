"""LoRA adapters served next to their base model: each request picks one, and one batch mixes them.

Every adapted linear layer of the served model gets a forward hook that adds, for each adapter
present in the step's packed row, (alpha / r) * B A x over exactly the tokens of the requests
using it (gather the rows, two small matmuls, scatter-add): the base model runs once for the whole
batch and the LoRA products per row, as multi-LoRA servers (S-LoRA, punica) do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from jijian.config import ModelConfig
from jijian.model.lora import BASE_FINGERPRINT, LoRAError, base_fingerprint, load_peft_adapter


class AdapterSet:
    """Named adapters installed on one model; `select` says which tokens of the next pass use which."""

    def __init__(self, model: nn.Module, model_cfg: ModelConfig, adapters: Mapping[str, str | Path]) -> None:
        """Load each PEFT directory of `adapters` (name -> path) and hook the layers of `model` they adapt."""
        self.names = list(adapters)
        self.salts = {name: hash(("jijian-adapter", name)) for name in self.names}
        self._groups: list[tuple[int, torch.Tensor]] = []
        expected = base_fingerprint(model_cfg)
        modules = dict(model.named_modules())
        # layer name -> list of (adapter index, A, B, scale)
        per_layer: dict[str, list[tuple[int, torch.Tensor, torch.Tensor, float]]] = {}
        param = next(model.parameters())
        for index, (name, path) in enumerate(adapters.items()):
            directory = Path(path)
            config, tensors = load_peft_adapter(directory)
            fingerprint_path = directory / BASE_FINGERPRINT
            if fingerprint_path.is_file():
                recorded = json.loads(fingerprint_path.read_text(encoding="utf-8"))
                different = {k: (v, expected.get(k)) for k, v in recorded.items() if expected.get(k) != v}
                if different:
                    details = ", ".join(f"{k} {a} vs served {b}" for k, (a, b) in different.items())
                    raise LoRAError(f"adapter {name!r} ({directory}) was trained on another base model: {details}")
            scale = float(config["lora_alpha"]) / float(config["r"])
            for key, a in tensors.items():
                if not key.endswith(".lora_A.weight"):
                    continue
                layer = key.removesuffix(".lora_A.weight")
                b = tensors.get(f"{layer}.lora_B.weight")
                module = modules.get(layer)
                if b is None or module is None or not hasattr(module, "in_features"):
                    raise LoRAError(f"adapter {name!r} ({directory}): {layer} is no linear layer of the served model")
                if a.shape[1] != module.in_features or b.shape[0] != module.out_features:
                    raise LoRAError(
                        f"adapter {name!r} ({directory}) was trained on another base model: {layer} is "
                        f"{module.in_features} -> {module.out_features} here, the adapter expects "
                        f"{a.shape[1]} -> {b.shape[0]}"
                    )
                a = a.to(device=param.device, dtype=param.dtype)
                b = b.to(device=param.device, dtype=param.dtype)
                per_layer.setdefault(layer, []).append((index, a, b, scale))
        for layer, entries in per_layer.items():
            modules[layer].register_forward_hook(self._hook(entries))

    def _hook(self, entries: Sequence[tuple[int, torch.Tensor, torch.Tensor, float]]) -> Callable[..., torch.Tensor]:
        by_adapter = {index: (a, b, scale) for index, a, b, scale in entries}

        def add_lora(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            if not self._groups:
                return output
            x = args[0].reshape(-1, args[0].shape[-1])
            flat = output.reshape(-1, output.shape[-1])
            for index, rows in self._groups:
                weights = by_adapter.get(index)
                if weights is None:
                    continue
                a, b, scale = weights
                flat = flat.index_add(0, rows, (x.index_select(0, rows) @ a.T) @ b.T, alpha=scale)
            return flat.view_as(output)

        return add_lora

    def index(self, name: str | None) -> int | None:
        """The adapter's index, None for the base model; an unknown name is a KeyError."""
        return None if name is None else self.names.index(name)

    def select(self, token_adapters: Sequence[int | None], device: torch.device) -> None:
        """For the next forward pass: the adapter of each packed token (None: base model only)."""
        groups: dict[int, list[int]] = {}
        for position, index in enumerate(token_adapters):
            if index is not None:
                groups.setdefault(index, []).append(position)
        self._groups = [(i, torch.tensor(rows, dtype=torch.long, device=device)) for i, rows in groups.items()]

    def clear(self) -> None:
        """After the pass: no adapter applies until the next `select`."""
        self._groups = []
