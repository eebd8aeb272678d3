"""Autoregressive generation for one prompt with a contiguous KV cache (samples, tests, quick start).

The serving engine (`jijian.serve`) has the batched, paged version; this one stays small enough to
read in one sitting and is the reference it is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from jijian.model.llama import CausalLM, sliding_window_mask


class ContiguousKVCache:
    """Keys and values of every layer in preallocated (batch, kv_heads, max_len, head_dim) buffers."""

    def __init__(self, model: CausalLM, batch: int, max_len: int) -> None:
        cfg = model.cfg
        param = next(model.parameters())
        shape = (cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.head_size)
        self.keys = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.values = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.max_len = max_len
        self.sliding_window = cfg.sliding_window

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Write k/v at start_pos.., then attend q over positions 0..start_pos+len-1."""
        seq = q.shape[2]
        end = start_pos + seq
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.keys[layer_idx, :, :, start_pos:end] = k
        self.values[layer_idx, :, :, start_pos:end] = v
        keys, values = self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]
        gqa = q.shape[1] != keys.shape[1]
        window = self.sliding_window
        if seq == 1 and (window is None or end <= window):  # a single new token may attend to every cached position
            return F.scaled_dot_product_attention(q, keys, values, enable_gqa=gqa)
        # Query i sits at absolute position start_pos + i and sees keys up to that position (and within the window).
        positions = torch.arange(end, device=q.device)
        mask = sliding_window_mask(positions[start_pos:], positions, window)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> int:
    """Greedy when temperature is 0, else sample from the (top-k truncated) softmax."""
    if temperature <= 0:
        return int(torch.argmax(logits, dim=-1))
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(
    model: CausalLM,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """New token ids continuing `prompt` (stops at `eos_id`, which is included, or max_new_tokens)."""
    if not prompt:
        raise ValueError("prompt must contain at least one token")
    total = len(prompt) + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len ({model.cfg.max_seq_len})"
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = ContiguousKVCache(model, batch=1, max_len=total)
    tokens = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    logits = model(tokens, cache=cache, start_pos=0)[0, -1]
    out: list[int] = []
    position = len(prompt)
    for _ in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, generator)
        out.append(token)
        if token == eos_id:
            break
        step = torch.tensor([[token]], dtype=torch.long, device=device)
        logits = model(step, cache=cache, start_pos=position)[0, -1]
        position += 1
    return out
