"""Translation between a Hugging Face `config.json` (Llama, Mistral, Qwen2, Qwen3) and ModelConfig fields."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jijian.config.errors import UserInputError


class HFFormatError(UserInputError):
    """A Hugging Face model directory is missing a file or holds something jijian cannot load."""


ReadBytes = Callable[[Path], bytes]
"""How a loader reads a file's contents: `Path.read_bytes`, or a reader that decrypts in memory."""

WriteBytes = Callable[[Path, bytes], None]
"""How a saver writes a file: e.g. sealing the bytes in memory so no plaintext reaches the disk."""


def read_hf_config(directory: str | Path, read_bytes: ReadBytes | None = None) -> dict[str, Any]:
    """Parse `directory/config.json`, with an error naming the file when absent or malformed."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise HFFormatError(f"{path}: not found (is {directory} a Hugging Face model directory?)")
    try:  # a decryption error is not caught here: it names the file and the cause itself
        data = json.loads((read_bytes or Path.read_bytes)(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFFormatError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise HFFormatError(f"{path}: expected a JSON object")
    return data


# The `architectures` entry of each supported config.json, and the family it belongs to.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


def architecture_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> str:
    """The jijian architecture of an HF config: from `architectures`, else `model_type`; unknown ones are errors."""
    names = hf.get("architectures")
    if names:
        if not isinstance(names, list) or len(names) != 1 or names[0] not in SUPPORTED_ARCHITECTURES:
            raise HFFormatError(
                f"{source}: architectures {names!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        return SUPPORTED_ARCHITECTURES[names[0]]
    model_type = hf.get("model_type", "llama")
    if model_type not in SUPPORTED_ARCHITECTURES.values():
        raise HFFormatError(
            f"{source}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES.values())}"
        )
    return str(model_type)


def model_fields_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """ModelConfig fields for an HF Llama, Mistral, Qwen2 or Qwen3 config (transformers v4 or v5 layout)."""

    def fail(message: str) -> HFFormatError:
        return HFFormatError(f"{source}: {message}")

    architecture = architecture_from_hf(hf, source)
    if architecture in ("llama", "mistral"):
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise fail(f"{key} = true is not supported (jijian's {architecture} has no biases)")
    if architecture == "qwen3" and hf.get("attention_bias"):
        raise fail("attention_bias = true is not supported for qwen3 (published Qwen3 models have none)")
    if architecture in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        raise fail("use_sliding_window = true is not supported (Qwen's per-layer windows); set it to false")
    if hf.get("hidden_act", "silu") != "silu":
        raise fail(f"hidden_act {hf.get('hidden_act')!r} is not supported (only 'silu')")
    # transformers v5 moved rope_theta/rope_scaling into one rope_parameters mapping.
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = rope or dict(hf.get("rope_scaling") or {})
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    if kind == "default":
        rope_scaling = None
    elif kind in ("llama3", "linear"):
        keep = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
        rope_scaling = {"rope_type": kind, **{k: v for k, v in scaling.items() if k in keep}}
    else:
        raise fail(f"rope type {kind!r} is not supported (default, llama3, linear)")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key not in hf:
            raise fail(f"missing key {key!r}")
    fields = {
        "dim": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"],
        "n_kv_heads": hf.get("num_key_value_heads"),
        "head_dim": hf.get("head_dim"),
        "ffn_dim": hf["intermediate_size"],
        "vocab_size": hf["vocab_size"],
        "max_seq_len": hf.get("max_position_embeddings", 2048),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": float(theta),
        "rope_scaling": rope_scaling,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "init_std": hf.get("initializer_range", 0.02),
        "architecture": architecture,
        "attention_bias": architecture == "qwen2",
        "qk_norm": architecture == "qwen3",
        "sliding_window": hf.get("sliding_window") if architecture == "mistral" else None,
    }
    return {k: v for k, v in fields.items() if v is not None}
