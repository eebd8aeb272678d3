"""Model arithmetic, written once: parameters, FLOPs per token, activation and KV-cache bytes of a decoder.

The trainer's MFU, the server's KV-cache budget and the planner's estimates all count from here, so a
planned number and a measured one divide by the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ModelFields(Protocol):
    """The `[model]` fields a shape is read from (jijian.config.ModelConfig has them; spec imports no config)."""

    n_layers: int
    dim: int
    n_heads: int
    ffn_dim: int
    vocab_size: int
    tie_embeddings: bool
    attention_bias: bool
    qk_norm: bool

    @property
    def kv_heads(self) -> int: ...

    @property
    def head_size(self) -> int: ...


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
    attention_bias: bool = False  # Qwen2: biases on the q, k and v projections
    qk_norm: bool = False  # Qwen3: an RMSNorm weight over each query and key head
    dropout: bool = False  # GPT-era models store dropout masks (Korthikanti et al. count them)
    flash_attention: bool = True  # False: the s x s score matrix is materialised and stored

    @classmethod
    def from_config(cls, cfg: ModelFields) -> ModelShape:
        """The shape of a `[model]` section (the Llama decoder: SwiGLU, GQA, no dropout, flash attention)."""
        return cls(
            layers=cfg.n_layers,
            hidden=cfg.dim,
            heads=cfg.n_heads,
            kv_heads=cfg.kv_heads,
            head_dim=cfg.head_size,
            ffn=cfg.ffn_dim,
            vocab=cfg.vocab_size,
            tied_embeddings=cfg.tie_embeddings,
            attention_bias=cfg.attention_bias,
            qk_norm=cfg.qk_norm,
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
        """All parameters of one transformer layer (two norms, q/k/v biases and q/k norms included)."""
        biases = (self.heads + 2 * self.kv_heads) * self.head_dim if self.attention_bias else 0
        qk_norms = 2 * self.head_dim if self.qk_norm else 0
        return self.attention_params + self.mlp_params + 2 * self.hidden + biases + qk_norms

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
    """Model FLOPs of forward + backward per token: what MFU divides by (trainer and planner alike).

    The PaLM-paper count (Chowdhery et al. 2022, appendix B): 6N + 12·L·H·Q·T, with N the weights of
    every matmul (the input embedding is a lookup, not a matmul). Recompute is not counted — that is
    what makes it *model* FLOPs utilisation.
    """
    return 3.0 * forward_flops_per_token(shape, seq_len)


def recompute_flops_per_token(shape: ModelShape, seq_len: int, policy: str) -> float:
    """Extra forward FLOPs per token that activation recomputation adds on top of the model FLOPs."""
    if policy == "full":
        return forward_flops_per_token(shape, seq_len) - 2.0 * shape.vocab * shape.hidden
    if policy == "selective":  # Korthikanti et al.: recompute only the attention scores and softmax
        return attention_flops_per_token(shape, seq_len)
    return 0.0


def activation_bytes_per_layer(
    shape: ModelShape, seq: int, micro_batch: int, tp: int = 1, sequence_parallel: bool = False, recompute: str = "none"
) -> float:
    """Activation bytes one layer keeps for backward, per micro-batch (Korthikanti et al. 2022, section 4).

    For a GPT layer (GeLU MLP of 4h, dropout, materialised scores) this is exactly the paper's
    s*b*h*(34 + 5*a*s/h) without parallelism, s*b*h*(10 + 24/t + 5*a*s/(h*t)) with tensor parallelism,
    s*b*h/t*(34 + 5*a*s/h) with sequence parallelism too, 34*s*b*h/t with selective recomputation, and
    2*s*b*h (the layer input) with full recomputation. Llama layers (SwiGLU, GQA, flash attention, no
    dropout) follow from the same per-tensor accounting; with flash attention, selective recomputation
    recomputes the norm outputs and the MLP activation instead of the (absent) score matrix.
    """
    tokens = seq * micro_batch
    h, a = shape.hidden, shape.heads
    if recompute == "full":
        return 2.0 * tokens * h / (tp if sequence_parallel else 1)
    dropout = 1.0 if shape.dropout else 0.0
    # Replicated across tensor-parallel ranks unless sequence parallelism splits them: the two norm inputs,
    # the attention and MLP inputs (norm outputs) and the two dropout masks.
    replicated = 2 * h + 2 * h + 2 * h + 2 * h + 2 * dropout * h
    q = 2 * a * shape.head_dim
    kv = 2 * 2 * shape.kv_heads * shape.head_dim
    attention_out = 2 * a * shape.head_dim  # input of the output projection
    mlp = (6 if shape.gated else 4) * shape.ffn  # GeLU: input and output; SwiGLU: gate, up and their product
    if shape.flash_attention and recompute == "selective":
        # With no score matrix to drop, selective recomputation (torchtitan's op-level policy) keeps the
        # matmul outputs and recomputes the elementwise ones: the two norm outputs and the MLP activation.
        replicated -= 4 * h
        mlp -= 2 * shape.ffn
    split = q + kv + attention_out + mlp
    if shape.flash_attention:
        scores = 4.0 * a  # flash attention keeps only the fp32 log-sum-exp per head per token
    elif recompute == "selective":
        scores = 0.0  # recomputed in backward (the point of selective recomputation)
    else:
        scores = (2 + 2 * dropout + dropout) * a * seq  # softmax output, dropout output and mask
    per_token = replicated / (tp if sequence_parallel else 1) + (split + scores) / tp
    return tokens * per_token


def kv_cache_bytes_per_token(shape: ModelShape, bytes_per_value: int = 2, tensor_parallel: int = 1) -> int:
    """KV-cache bytes per token of context on one device: keys and values of every layer.

    Under tensor parallelism a device holds its share of the key/value heads, rounded up: the rank
    with the most heads is the one whose memory runs out first.
    """
    kv_heads = -(-shape.kv_heads // tensor_parallel)
    return 2 * shape.layers * kv_heads * shape.head_dim * bytes_per_value
