"""Model arithmetic: parameter counts and FLOPs per token of a decoder-only transformer."""

from __future__ import annotations

from dataclasses import dataclass

from jijian.config import ModelConfig

# Units the planner reports compute in: one PetaFLOP/s sustained for one day (Inspur's unit).
PF_DAY = 1e15 * 86400


@dataclass(frozen=True)
class ModelShape:
    """The shape facts the planner needs; Llama by default, GPT-style (2-matrix MLP, dropout) when `gated=False`."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    gated: bool = True  # SwiGLU (3 MLP matrices) vs GeLU (2)
    tied_embeddings: bool = False
    dropout: bool = False  # GPT-era models store dropout masks (Korthikanti et al. count them)
    flash_attention: bool = True  # False: the s x s score matrix is materialised and stored

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ModelShape:
        """The shape of a `[model]` section (a Llama: SwiGLU, GQA, no dropout, flash attention)."""
        return cls(
            layers=cfg.n_layers,
            hidden=cfg.dim,
            heads=cfg.n_heads,
            kv_heads=cfg.kv_heads,
            head_dim=cfg.head_size,
            ffn=cfg.ffn_dim,
            vocab=cfg.vocab_size,
            tied_embeddings=cfg.tie_embeddings,
        )

    @property
    def attention_params(self) -> int:
        """Q, K, V and output projections of one layer."""
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    @property
    def mlp_params(self) -> int:
        """MLP matrices of one layer."""
        return (3 if self.gated else 2) * self.hidden * self.ffn

    @property
    def layer_params(self) -> int:
        """All parameters of one transformer layer (two norms included)."""
        return self.attention_params + self.mlp_params + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        """Input embedding plus output head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        """Total parameter count."""
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token: every layer matrix plus the output head."""
        return self.layers * (self.attention_params + self.mlp_params) + self.vocab * self.hidden


def forward_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per matmul weight plus the attention scores (QK^T and AV, no causal discount)."""
    return 2.0 * shape.matmul_params + attention_flops_per_token(shape, seq_len)


def attention_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Forward FLOPs per token of QK^T and AV over all layers: 4 * layers * heads * head_dim * seq."""
    return 4.0 * shape.layers * shape.heads * shape.head_dim * seq_len


def training_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Model FLOPs of forward + backward per token (6N plus the attention term, as in the PaLM MFU)."""
    return 3.0 * forward_flops_per_token(shape, seq_len)


def recompute_flops_per_token(shape: ModelShape, seq_len: int, policy: str) -> float:
    """Extra forward FLOPs per token that activation recomputation adds on top of the model FLOPs."""
    if policy == "full":
        return forward_flops_per_token(shape, seq_len) - 2.0 * shape.vocab * shape.hidden
    if policy == "selective":  # Korthikanti et al.: recompute only the attention scores and softmax
        return attention_flops_per_token(shape, seq_len)
    return 0.0


def training_flops(shape: ModelShape, seq_len: int, tokens: float) -> float:
    """Model FLOPs of training on `tokens` tokens."""
    return training_flops_per_token(shape, seq_len) * tokens


def pf_days(flops: float) -> float:
    """FLOPs expressed in PetaFLOP/s-days."""
    return flops / PF_DAY
