"""The model runner: one forward pass over a mixed prefill/decode batch with attention over paged KV.

All scheduled tokens are packed into one row of length T (no padding between requests), each with its
own position for RoPE and its own slot in the cache. Attention then gathers every request's keys and
values through its block table into a (requests, kv_heads, context, head_dim) view and runs one
masked `scaled_dot_product_attention` for the whole batch: batched tensors, no loop over requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jijian.model.llama import CausalLM


@dataclass
class BatchLayout:
    """Index tensors describing where each packed token lives, built once per step for all layers."""

    slot_mapping: torch.Tensor  # (T,) cache slot each new token's k/v is written to
    block_tables: torch.Tensor  # (B, max_blocks) block ids, padded with 0
    query_index: torch.Tensor  # (B, Q) packed-token index of each request's i-th query, padded with 0
    token_order: torch.Tensor  # (T,) position of each packed token in the flattened (B*Q) query grid
    mask: torch.Tensor  # (B, 1, Q, L) True where a query may attend to a key


class PagedKVCache:
    """KV tensors of every layer, (num_blocks * block_size, kv_heads, head_dim), plus this step's layout.

    It implements the model's `AttentionCache.attend` hook for the packed varlen batch.
    """

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int) -> None:
        cfg = model.cfg
        param = next(model.parameters())
        dtype = param.dtype if param.is_floating_point() else torch.float32
        shape = (cfg.n_layers, num_blocks * block_size, cfg.kv_heads, cfg.head_size)
        self.keys = torch.zeros(shape, dtype=dtype, device=param.device)
        self.values = torch.zeros(shape, dtype=dtype, device=param.device)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.layout: BatchLayout | None = None

    def nbytes(self) -> int:
        """Memory held by the cache tensors."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Write the batch's k/v into their slots, then attend each request's queries over its context."""
        layout = self.layout
        assert layout is not None, "set the batch layout before the forward pass"
        # q: (1, heads, T, d); k, v: (1, kv_heads, T, d)
        self.keys[layer_idx, layout.slot_mapping] = k[0].transpose(0, 1)
        self.values[layer_idx, layout.slot_mapping] = v[0].transpose(0, 1)
        shape = (self.num_blocks, self.block_size, *self.keys.shape[2:])
        # (B, max_blocks, block, kv_heads, d) -> (B, kv_heads, context, d)
        keys = self.keys[layer_idx].view(shape)[layout.block_tables].flatten(1, 2).transpose(1, 2)
        values = self.values[layer_idx].view(shape)[layout.block_tables].flatten(1, 2).transpose(1, 2)
        queries = q[0][:, layout.query_index].transpose(0, 1)  # (B, heads, Q, d)
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=layout.mask, enable_gqa=queries.shape[1] != keys.shape[1]
        )
        heads, dim = out.shape[1], out.shape[3]
        out = out.transpose(0, 1).reshape(heads, -1, dim)[:, layout.token_order]  # (heads, T, d)
        return out.unsqueeze(0)


class ModelRunner:
    """Runs the jijian model on packed batches; returns logits only for the rows that sample."""

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = PagedKVCache(model, num_blocks, block_size)
        self.block_size = block_size

    @torch.inference_mode()
    def execute(
        self,
        token_ids: Sequence[Sequence[int]],
        start_positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        sample_rows: Sequence[int],
    ) -> torch.Tensor:
        """Logits (len(sample_rows), vocab) at the last new token of each request listed in sample_rows.

        token_ids[i] are request i's new tokens, starting at absolute position start_positions[i];
        block_tables[i] must cover all of its positions.
        """
        layout, tokens, positions, last_rows = self._layout(token_ids, start_positions, block_tables)
        self.cache.layout = layout
        try:
            hidden = self.model.hidden_states(tokens[None, :], cache=self.cache, positions=positions)
        finally:
            self.cache.layout = None
        rows = last_rows[torch.as_tensor(list(sample_rows), dtype=torch.long)]
        head = self.model.lm_head
        selected = hidden[0, rows.to(self.device)]
        return (head(selected) if head is not None else selected).float()

    def _layout(
        self,
        token_ids: Sequence[Sequence[int]],
        start_positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
    ) -> tuple[BatchLayout, torch.Tensor, torch.Tensor, torch.Tensor]:
        device, size = self.device, self.block_size
        lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
        starts = torch.tensor(list(start_positions), dtype=torch.long)
        batch, max_q = len(token_ids), int(lengths.max())
        max_blocks = max(len(t) for t in block_tables)
        tables = torch.zeros(batch, max_blocks, dtype=torch.long)
        for i, table in enumerate(block_tables):
            tables[i, : len(table)] = torch.as_tensor(table, dtype=torch.long)

        flat_tokens = torch.tensor([t for seq in token_ids for t in seq], dtype=torch.long)
        owner = torch.repeat_interleave(torch.arange(batch), lengths)  # request of each packed token
        offsets = torch.cumsum(lengths, 0) - lengths  # first packed index of each request
        within = torch.arange(len(flat_tokens)) - offsets[owner]  # index inside its request's chunk
        positions = starts[owner] + within
        slots = tables[owner, positions // size] * size + positions % size

        grid = torch.arange(max_q)[None, :]
        valid = grid < lengths[:, None]
        query_index = torch.where(valid, offsets[:, None] + grid, 0)
        # Padded query rows get position 0 so they still see one key (an all-masked row would be NaN).
        query_pos = torch.where(valid, starts[:, None] + grid, 0)
        key_pos = torch.arange(max_blocks * size)
        mask = key_pos[None, None, :] <= query_pos[:, :, None]
        layout = BatchLayout(
            slot_mapping=slots.to(device),
            block_tables=tables.to(device),
            query_index=query_index.to(device),
            token_order=(owner * max_q + within).to(device),
            mask=mask[:, None].to(device),
        )
        last_rows = offsets + lengths - 1
        return layout, flat_tokens.to(device), positions.to(device), last_rows
