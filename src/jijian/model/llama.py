"""The decoder-only transformer of the Llama family, with Hugging Face `LlamaForCausalLM` names.

RMSNorm, rotary position embeddings (with Llama 3.1 frequency scaling), SwiGLU MLP, grouped-query
attention through `F.scaled_dot_product_attention`. Every parameter name and tensor layout equals
the one in `transformers.LlamaForCausalLM`, so a state dict moves between the two unchanged.

Qwen2, Qwen3 and Mistral are the same model with switches from `ModelConfig`: `attention_bias`
(Qwen2's q/k/v biases), `qk_norm` (Qwen3's RMSNorm over each query and key head, before RoPE) and
`sliding_window` (Mistral: a query sees only the last `sliding_window` positions, itself included);
their parameter names are those of `Qwen2ForCausalLM`, `Qwen3ForCausalLM` and `MistralForCausalLM`.

The model knows nothing about parallelism: `jijian.train.parallel` shards it from outside (which is
why head counts are never baked into `view` calls, and why layers live in a ModuleDict keyed by
index: a pipeline stage deletes the layers it does not own and keeps the names of the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from jijian.config import ModelConfig


class AttentionCache(Protocol):
    """Holds keys/values of earlier positions and computes attention against them (generation)."""

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Store k/v for positions start_pos.., then return attention of q over all cached positions."""
        ...


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in fp32 like the reference implementation."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 == self.weight.dtype and x.device.type == "cpu":
            # On the CPU the same products in the same order (a * b == b * a exactly), in one call instead of
            # four: a single-stream decode step runs 61 of these on a small model, where each call's dispatch counts.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_inverse_frequencies(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Per-pair rotation frequencies, with Llama 3.1 ('llama3') or linear long-context scaling."""
    dim = cfg.head_size
    # Same expression as transformers, so that fp32 frequencies agree bit for bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (the 'rotate_half' layout of HF Llama weights).

    `cos` is (cos, cos) and `signed_sin` is (-sin, sin) over the head width, so the rotation is one
    swap of halves and two full-width multiplies; bit-identical to HF's `q*cos + rotate_half(q)*sin`
    since (-a)*b == a*(-b) exactly, with one elementwise pass fewer.
    """
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin


def sliding_window_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """(queries, keys) True where a query may attend: causal, and within `window` positions when set."""
    allowed = key_positions[None, :] <= query_positions[:, None]
    if window is not None:
        allowed &= key_positions[None, :] > query_positions[:, None] - window
    return allowed


class DocumentAttention:
    """Attention of packed sequences, each token only over earlier tokens of its own document.

    Plugs into the layers' `AttentionCache` hook (nothing is cached), so packing several dialogues
    into one row never lets one attend to another. `document_ids` is (batch, seq), equal within a
    document; the (batch, 1, seq, seq) mask is built once and reused by every layer.
    """

    def __init__(self, document_ids: torch.Tensor, window: int | None = None) -> None:
        positions = torch.arange(document_ids.shape[1], device=document_ids.device)
        same_document = document_ids[:, :, None] == document_ids[:, None, :]
        self.mask = (same_document & sliding_window_mask(positions, positions, window))[:, None]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Masked SDPA over this batch's own keys."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=q.shape[1] != k.shape[1])


def positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq) position of each token counted from the start of its document (documents are contiguous)."""
    seq = document_ids.shape[1]
    index = torch.arange(seq, device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def heads_with_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    head_dim: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    k_norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected (batch, seq, features) q/k/v as (batch, heads, seq, head_dim), q and k normed (Qwen3) and rotated.

    -1 heads: under tensor parallelism each rank holds only its share of the heads.
    """
    batch, seq = q.shape[0], q.shape[1]
    q = q.view(batch, seq, -1, head_dim)
    k = k.view(batch, seq, -1, head_dim)
    v = v.view(batch, seq, -1, head_dim).transpose(1, 2)
    if q_norm is not None and k_norm is not None:
        q, k = q_norm(q), k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embeddings."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = cfg.head_size
        self.sliding_window = cfg.sliding_window
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)
        self.q_norm: RMSNorm | None = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm: RMSNorm | None = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        # Set only on the serving runner's CPU view (`jijian.serve.matmul`): q, k and v as one product.
        self.qkv_proj: nn.Module | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: AttentionCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = heads_with_rotary(q, k, v, self.head_dim, cos, sin, self.q_norm, self.k_norm)
        if cache is None:
            gqa = q.shape[1] != k.shape[1]
            if self.sliding_window is not None and seq > self.sliding_window:
                positions = torch.arange(seq, device=x.device)
                mask = sliding_window_mask(positions, positions, self.sliding_window)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
            else:  # within one window, plain causal attention is exact and lets SDPA skip the upper triangle
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = cache.attend(self.layer_idx, q, k, v, start_pos)
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
        return projected


class FeedForward(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        # Set only on the serving runner's CPU view (`jijian.serve.matmul`): gate and up as one product.
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        out: torch.Tensor = self.down_proj(F.silu(gate) * up)
        return out


class DecoderLayer(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = FeedForward(cfg.dim, cfg.ffn_dim)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: AttentionCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        attended: torch.Tensor = self.self_attn(self.input_layernorm(x), cos, sin, cache, start_pos)
        h = x + attended
        mixed: torch.Tensor = self.mlp(self.post_attention_layernorm(h))
        return h + mixed


class Decoder(nn.Module):
    """Embedding, the stack of layers and the final norm (HF's `model.model`)."""

    inv_freq: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(cfg, i) for i in range(cfg.n_layers)})
        self.norm: RMSNorm | None = RMSNorm(cfg.dim, cfg.norm_eps)
        # Not a parameter and not saved: HF recomputes it from the config too.
        self.register_buffer("inv_freq", rope_inverse_frequencies(cfg), persistent=False)

    def rotary(
        self, seq_len: int, start_pos: int, device: torch.device, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width (cos, signed sin) tables for positions start_pos .. start_pos+seq_len-1 (fp32).

        `positions` overrides that range with explicit per-token positions: a serving batch packs
        tokens of many sequences, each at its own position, into one row.
        """
        if positions is None:
            positions = torch.arange(start_pos, start_pos + seq_len, device=device)
        angles = positions.to(torch.float32)[..., None] * self.inv_freq.float()
        cos, sin = angles.cos(), angles.sin()
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        if positions.ndim == 2:  # (batch, seq) positions: broadcast over the heads of (batch, heads, seq, dim)
            return cos[:, None], sin[:, None]
        return cos, sin

    def forward(
        self,
        tokens_or_hidden: torch.Tensor,
        cache: AttentionCache | None = None,
        start_pos: int = 0,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # A pipeline stage without the embedding receives hidden states from the previous stage.
        h = self.embed_tokens(tokens_or_hidden) if self.embed_tokens is not None else tokens_or_hidden
        cos, sin = self.rotary(h.shape[1], start_pos, h.device, positions)
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)
        for layer in self.layers.values():
            h = layer(h, cos, sin, cache, start_pos)
        return self.norm(h) if self.norm is not None else h


class CausalLM(nn.Module):
    """Decoder plus language-model head; state-dict compatible with HF `LlamaForCausalLM`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head: nn.Linear | None = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output head when the config asks for it."""
        if self.cfg.tie_embeddings and self.lm_head is not None and self.model.embed_tokens is not None:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: AttentionCache | None = None,
        start_pos: int = 0,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids (batch, seq) at positions start_pos..

        `document_ids` (batch, seq) marks packed documents: each attends only within itself and
        counts positions from its own start, exactly as if run alone.
        """
        positions = None
        if document_ids is not None:
            cache = DocumentAttention(document_ids, self.cfg.sliding_window)
            positions = positions_within_documents(document_ids)
        # positions as a keyword: tensor parallelism prepares only the positional inputs (tokens, cache, start_pos).
        h: torch.Tensor = self.model(tokens, cache, start_pos, positions=positions)
        return self.lm_head(h) if self.lm_head is not None else h

    def init_std(self, name: str) -> float | None:
        """How parameter `name` starts: normal(0, std) for this std (0 for biases), or None for ones (norms).

        One rule per name, so an initialiser that fills a parameter shard by shard (`jijian.train`)
        and `init_weights` below produce the same model.
        """
        if name.endswith(("layernorm.weight", "_norm.weight")) or name == "model.norm.weight":
            return None
        if name.endswith((".bias", "lora_B.weight")):
            return 0.0  # normal(0, 0): biases start at zero, and LoRA's B so an adapted model starts as its base
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            # Residual-branch outputs shrink with depth so the residual stream's variance stays put.
            return self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        return self.cfg.init_std

    @torch.no_grad()
    def init_weights(self, buffer_device: torch.device | str | None = None) -> None:
        """Fresh initialisation: normal(0, init_std), residual outputs scaled by depth, norms at one."""
        self.model.inv_freq = rope_inverse_frequencies(self.cfg, device=buffer_device or self.model.inv_freq.device)
        for name, param in self.named_parameters():
            std = self.init_std(name)
            if std is None:
                nn.init.ones_(param)
            elif std == 0:
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=std)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights counted once)."""
        params = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in params.values())
        if exclude_embeddings and self.model.embed_tokens is not None:
            total -= self.model.embed_tokens.weight.numel()
        return total

    def hidden_states(
        self, tokens: torch.Tensor, *, cache: AttentionCache | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm hidden states, without the head (a server projects only the rows it samples from)."""
        h: torch.Tensor = self.model(tokens, cache, 0, positions)
        return h


def build_model(
    cfg: ModelConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    init: bool = True,
) -> CausalLM:
    """Build on the meta device (no memory), then materialise on `device` and initialise.

    `device="meta"` returns the unmaterialised model, for sharding before any memory is used.
    `init=False` leaves the storage uninitialised, for weights that are about to be loaded.
    """
    with torch.device("meta"):
        model = CausalLM(cfg)
    if dtype is not None:
        model.to(dtype=dtype)
    if str(device) == "meta":
        return model
    model.to_empty(device=device)
    model.tie_weights()
    if init:
        model.init_weights(buffer_device=device)
    else:
        model.model.inv_freq = rope_inverse_frequencies(cfg, device=device)
    return model
