"""Hugging Face format: `config.json` + `model.safetensors` (sharded with an index) + tokenizer files.

`save_hf` writes a directory that `transformers.AutoModelForCausalLM` and `AutoTokenizer` load;
`load_hf` reads such a directory back, including one written by `transformers` itself (v4 or v5
config layout). The directory is written next to its destination and renamed into place, so a
crash mid-save never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from jijian.config import ModelConfig
from jijian.config.hf_config import (
    SUPPORTED_ARCHITECTURES,
    HFFormatError,
    ReadBytes,
    WriteBytes,
    model_fields_from_hf,
    read_hf_config,
)
from jijian.files import replaced_directory
from jijian.model.llama import CausalLM, build_model, rope_inverse_frequencies
from jijian.model.quantized import quantized_layer, split_quantized

if TYPE_CHECKING:
    from jijian.model.tokenizer import Tokenizer

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_HF_ARCHITECTURES = {family: name for name, family in SUPPORTED_ARCHITECTURES.items()}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# Buffers that old transformers versions saved with the weights; recomputed from the config here.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_config_dict(
    cfg: ModelConfig, tokenizer: Tokenizer | None = None, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """The `config.json` of this model's family and shape (readable by transformers v4 and v5)."""
    rope_scaling = None
    if cfg.rope_scaling is not None:
        rope_scaling = cfg.rope_scaling.model_dump()
        if cfg.rope_scaling.rope_type == "linear":
            rope_scaling = {"rope_type": "linear", "factor": cfg.rope_scaling.factor}
    config = {
        "architectures": [_HF_ARCHITECTURES[cfg.architecture]],
        "model_type": cfg.architecture,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": cfg.init_std,
        "bos_token_id": tokenizer.bos_id if tokenizer else None,
        "eos_token_id": tokenizer.eos_id if tokenizer else None,
        "pad_token_id": tokenizer.pad_id if tokenizer else None,
        "torch_dtype": _DTYPE_NAMES.get(dtype, "float32"),
        "use_cache": True,
    }
    # Each family's own keys: Qwen2's biases are implied by its model type, Qwen3 and Mistral name theirs.
    if cfg.architecture in ("qwen2", "qwen3"):
        del config["mlp_bias"]
        config["use_sliding_window"] = False
        config["max_window_layers"] = cfg.n_layers
        if cfg.architecture == "qwen2":
            del config["attention_bias"]
    elif cfg.architecture == "mistral":
        del config["mlp_bias"], config["attention_bias"]
        config["sliding_window"] = cfg.sliding_window
    return config


def model_config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate an HF Llama/Mistral/Qwen2/Qwen3 `config.json` into a ModelConfig; refuse what the model lacks."""
    fields = model_fields_from_hf(hf, source)
    try:
        return ModelConfig.model_validate(fields, strict=False)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HFFormatError(f"{source}: not a valid model config: {problems}") from None


def save_hf(
    model: CausalLM,
    tokenizer: Tokenizer | None,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write model (and tokenizer) as an HF model directory, replacing `directory` atomically."""
    return save_hf_state_dict(
        model.state_dict(), model.cfg, tokenizer, directory, dtype=dtype, max_shard_bytes=max_shard_bytes
    )


def save_hf_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer: Tokenizer | None,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    write_bytes: WriteBytes | None = None,
) -> Path:
    """Like `save_hf`, from a full (unsharded) state dict held in memory.

    `write_bytes` writes every file instead of the file system (`jijian train export` passes one that
    encrypts in memory); weights are then serialised to bytes first.
    """
    tensors = {name: tensor.detach() for name, tensor in state_dict.items()}
    specs = {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in tensors.items()}
    return save_hf_tensors(
        specs,
        lambda names: {name: tensors[name] for name in names},
        cfg,
        tokenizer,
        directory,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
        write_bytes=write_bytes,
    )


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor that has not been read yet."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in memory and on disk."""
        return math.prod(self.shape) * self.dtype.itemsize


def save_hf_tensors(
    specs: Mapping[str, TensorSpec],
    fetch: Callable[[list[str]], Mapping[str, torch.Tensor]],
    cfg: ModelConfig,
    tokenizer: Tokenizer | None,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    write_bytes: WriteBytes | None = None,
) -> Path:
    """Write an HF model directory one safetensors shard at a time: `fetch(names)` supplies each shard's tensors.

    Only one shard (at most `max_shard_bytes`) is in memory at once, so a model larger than the host's
    memory can be written from a sharded checkpoint. The directory is replaced atomically.
    """
    directory = Path(directory)
    # HF stores tied weights once, under the embedding's name.
    names = [n for n in specs if not (cfg.tie_embeddings and n == "lm_head.weight")]
    out_dtype = {n: dtype if dtype is not None and specs[n].dtype.is_floating_point else specs[n].dtype for n in names}
    sizes = {n: TensorSpec(specs[n].shape, out_dtype[n]).nbytes for n in names}
    saved_dtype = dtype or specs[names[0]].dtype
    shards = _plan_shards(sizes, max_shard_bytes)

    if directory.exists() and not directory.is_dir():
        raise HFFormatError(f"{directory}: exists and is not a directory")
    with replaced_directory(directory) as staging:
        metadata = {"format": "pt"}

        def save_weights(part: list[str], path: Path) -> None:
            fetched = fetch(part)
            tensors = {n: fetched[n].detach().to("cpu", out_dtype[n]).contiguous() for n in part}
            if write_bytes is None:
                save_file(tensors, str(path), metadata=metadata)
            else:
                write_bytes(path, safetensors_bytes(tensors, metadata=metadata))

        if len(shards) == 1:
            save_weights(shards[0], staging / WEIGHTS_NAME)
        else:
            weight_map = {}
            for i, part in enumerate(shards, start=1):
                filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_weights(part, staging / filename)
                weight_map.update(dict.fromkeys(part, filename))
            index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            _write_json(staging / WEIGHTS_INDEX_NAME, index, write_bytes)
        _write_json(staging / "config.json", hf_config_dict(cfg, tokenizer, saved_dtype), write_bytes)
        if tokenizer is not None:
            generation = {
                "bos_token_id": tokenizer.bos_id,
                "eos_token_id": tokenizer.eos_id,
                "pad_token_id": tokenizer.pad_id,
            }
            _write_json(staging / "generation_config.json", generation, write_bytes)
            tokenizer.save(staging, write_bytes=write_bytes)
    return directory


def load_hf(
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    read_bytes: ReadBytes | None = None,
) -> tuple[CausalLM, Tokenizer | None]:
    """Load an HF-format Llama directory; returns the model (eval mode) and its tokenizer if present.

    `dtype=None` keeps the dtype the weights were stored in. `read_bytes` reads every file instead of
    the file system (the server passes one that decrypts encrypted files in memory); weights are then
    parsed from bytes rather than memory-mapped.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    cfg = model_config_from_hf(read_hf_config(directory, read_bytes), source=str(config_path))

    state = _read_weights(directory, device, dtype, read_bytes)
    quantized = split_quantized(state)  # projections imported as int4/int8 (`jijian model import-gguf --weights`)
    model = build_model(cfg, device="meta")
    expected = set(model.state_dict()) - {f"{prefix}.{leaf}" for prefix in quantized for leaf in ("weight", "bias")}
    if cfg.tie_embeddings:
        expected.discard("lm_head.weight")
        state.pop("lm_head.weight", None)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"missing {len(missing)} tensors, e.g. {missing[:3]}")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} tensors, e.g. {unexpected[:3]}")
        raise HFFormatError(f"{directory}: weights do not match config.json: {'; '.join(details)}")
    for name, tensor in state.items():
        target = model.get_parameter(name)
        if tuple(target.shape) != tuple(tensor.shape):
            raise HFFormatError(
                f"{directory}: tensor {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(target.shape)}"
            )
    model.load_state_dict(state, strict=False, assign=True)
    for prefix, tensors in quantized.items():
        try:
            layer = quantized_layer(tensors)
        except (ValueError, RuntimeError) as exc:
            raise HFFormatError(f"{directory}: tensor {prefix}: {exc}") from None
        parent, _, attribute = prefix.rpartition(".")
        setattr(model.get_submodule(parent), attribute, layer)
    model.tie_weights()
    model.model.inv_freq = rope_inverse_frequencies(cfg, device=device)
    model.eval()
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        from jijian.model.tokenizer import Tokenizer  # deferred: weights-only users skip `tokenizers`

        tokenizer = Tokenizer.load(directory, read_bytes=read_bytes)
    return model, tokenizer


def _weight_map(directory: Path) -> dict[str, str]:
    """Tensor name -> safetensors file of an HF directory, from its index or its single file's header."""
    index_path = directory / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        return weight_map
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise HFFormatError(f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict.fromkeys(handle.keys(), WEIGHTS_NAME)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise HFFormatError(f"{path}: cannot read safetensors file: {exc}") from None


def has_quantized_projections(directory: str | Path) -> bool:
    """Whether the directory stores projections quantised (`import-gguf --weights int4|int8`), read from the headers."""
    try:
        names = _weight_map(Path(directory))
    except HFFormatError:  # unreadable: the full load reports it with its own message
        return True
    return any(name.endswith((".qweight", ".scale")) for name in names)


def read_hf_slices(
    directory: str | Path, wanted: Mapping[str, tuple[slice, ...]], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The named tensors of an HF directory, each cut to its slices (`()` for all of it), on the CPU.

    The safetensors files are memory-mapped and only the requested rows and columns are copied, so a
    tensor-parallel rank reads its share of a 70B model, not the model. Every name must exist with at
    least as many dimensions as it is sliced in.
    """
    directory = Path(directory)
    weight_map = _weight_map(directory)
    missing = sorted(name for name in wanted if name not in weight_map)
    if missing:
        raise HFFormatError(
            f"{directory}: weights do not match config.json: missing {len(missing)} tensors, e.g. {missing[:3]}"
        )
    by_file: dict[str, list[str]] = {}
    for name in wanted:
        by_file.setdefault(weight_map[name], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for filename, names in sorted(by_file.items()):
        path = directory / filename
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                present = set(handle.keys())
                for name in names:
                    if name not in present:
                        raise HFFormatError(f"{path}: has no tensor {name}")
                    cut = wanted[name]
                    tensor = handle.get_slice(name)[cut] if cut else handle.get_tensor(name)
                    out[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        except HFFormatError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise HFFormatError(f"{path}: cannot read safetensors file: {exc}") from None
    return out


def _read_weights(
    directory: Path, device: torch.device | str, dtype: torch.dtype | None, read_bytes: ReadBytes | None = None
) -> dict[str, torch.Tensor]:
    index_path = directory / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        weight_map = json.loads((read_bytes or Path.read_bytes)(index_path).decode("utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (directory / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        raise HFFormatError(f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} found")
    state: dict[str, torch.Tensor] = {}
    for filename in files:
        path = directory / filename
        if not path.is_file():
            raise HFFormatError(f"{path}: listed in {WEIGHTS_INDEX_NAME} but missing")
        if read_bytes is not None:
            state.update(_weights_from_bytes(path, read_bytes(path), device, dtype))
            continue
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if name.endswith(_IGNORED_SUFFIXES):
                        continue
                    tensor = handle.get_tensor(name)
                    state[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise HFFormatError(f"{path}: cannot read safetensors file: {exc}") from None
    return state


def _weights_from_bytes(
    path: Path, data: bytes, device: torch.device | str, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise HFFormatError(f"{path}: cannot read safetensors data: {exc}") from None
    return {
        name: (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor).to(device)
        for name, tensor in tensors.items()
        if not name.endswith(_IGNORED_SUFFIXES)
    }


def _plan_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes.items():
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_json(path: Path, data: Any, write_bytes: WriteBytes | None = None) -> None:
    (write_bytes or Path.write_bytes)(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
