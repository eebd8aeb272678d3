"""The model runner: one forward pass over a mixed prefill/decode batch with attention over paged KV.

All scheduled tokens are packed into one row of length T (no padding between requests), each with its
own position for RoPE and its own slot in the cache. Attention then gathers every request's keys and
values through its block table into a (requests, kv_heads, context, head_dim) view and runs one
masked `scaled_dot_product_attention` for the whole batch: batched tensors, no loop over requests.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F

from jijian.model.llama import CausalLM
from jijian.serve.adapters import AdapterSet
from jijian.serve.lean_forward import lean_forward
from jijian.serve.matmul import with_packed_linears
from jijian.serve.static_decode import StaticDecoder

SHORT_QUERY = 16  # queries per request up to which attention uses batched matmuls instead of SDPA


@dataclass
class AttentionGroup:
    """Requests whose queries attend together: a (B, Q) grid of packed queries over (B, L) keys."""

    context_blocks: torch.Tensor  # (B * L / block_size,) cache block of each request's context, padded with block 0
    query_index: torch.Tensor  # (B, Q) packed-token index of each request's i-th query, padded with 0
    mask: torch.Tensor | None  # (B, 1, Q, L) True where a query may attend to a key; None: plain causal
    grid_index: torch.Tensor  # (N,) flat (b * Q + i) grid cell of each real query ...
    packed_index: torch.Tensor  # (N,) ... and its packed-token index


@dataclass
class BatchLayout:
    """Index tensors describing where each packed token lives, built once per step for all layers.

    Decoding requests (one new token each) and prefilling ones attend in separate groups: one padded
    grid for both would give every decode row the query length of the longest prompt chunk.
    """

    slot_mapping: torch.Tensor  # (T,) cache slot each new token's k/v is written to
    groups: list[AttentionGroup]


class PagedKVCache:
    """KV tensors of every layer, (kv_heads, num_blocks * block_size, head_dim), plus this step's layout.

    Heads lead so that gathering a batch's context slots yields (kv_heads, B, L, d) contiguous, which
    batched matmuls read without another copy. It implements the model's `AttentionCache.attend` hook
    for the packed varlen batch.
    """

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, *, sink_block: bool = False) -> None:
        """`sink_block` adds one block past `num_blocks` that the padding rows of static decode steps write to."""
        cfg = model.cfg
        num_blocks += int(sink_block)
        param = next(model.parameters())
        dtype = param.dtype if param.is_floating_point() else torch.float32
        # The model's own k_proj says how many KV heads it computes: all of them, or a tensor-parallel share.
        # (Every projection class, float or quantised, has an int out_features; nn.Module's typing cannot say so.)
        k_proj = model.get_submodule("model.layers.0.self_attn.k_proj")
        kv_heads = cast(int, k_proj.out_features) // cfg.head_size
        shape = (cfg.n_layers, kv_heads, num_blocks * block_size, cfg.head_size)
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
        key_cache, value_cache = self.keys[layer_idx], self.values[layer_idx]
        key_cache[:, layout.slot_mapping] = k[0]
        value_cache[:, layout.slot_mapping] = v[0]
        kv_heads, heads, dim = key_cache.shape[0], q.shape[1], q.shape[3]
        out = q.new_empty(heads, q.shape[2], dim)
        # Gathering whole blocks (block_size * head_dim contiguous floats each) copies the same bytes
        # as gathering slots but in 16x fewer, larger pieces.
        key_blocks = key_cache.view(kv_heads, self.num_blocks, -1)
        value_blocks = value_cache.view(kv_heads, self.num_blocks, -1)
        for group in layout.groups:
            batch, width = group.query_index.shape
            keys = key_blocks.index_select(1, group.context_blocks).view(kv_heads, batch, -1, dim)
            values = value_blocks.index_select(1, group.context_blocks).view(kv_heads, batch, -1, dim)
            queries = q[0][:, group.query_index]  # (heads, B, Q, d)
            if width <= SHORT_QUERY and group.mask is not None:  # a causal group (no mask) is wider than SHORT_QUERY
                attended = _short_query_attention(queries, keys, values, group.mask)  # (heads, B, Q, d)
            else:
                # Without a mask (prompts from position 0) the kernel skips the blocks above the diagonal.
                attended = F.scaled_dot_product_attention(
                    queries.transpose(0, 1),
                    keys.transpose(0, 1),
                    values.transpose(0, 1),
                    attn_mask=group.mask,
                    is_causal=group.mask is None,
                    enable_gqa=heads != kv_heads,
                ).transpose(0, 1)
            out[:, group.packed_index] = attended.reshape(heads, -1, dim)[:, group.grid_index]
        return out.unsqueeze(0)


DECODE_PATHS = ("dynamic", "static", "compile", "graphs")
# With "auto" on the CPU, decode batches up to this size take the static path. It saves per-step index
# building, which counts at a few rows; larger batches pad every row to the longest context, where the
# dynamic path's grouping by context length does less attention work.
CPU_STATIC_MAX_BATCH = 4


def resolve_decode_path(setting: str, device: torch.device) -> str:
    """The decode path `[serve] compile_decode` asks for on this device.

    "auto" captures CUDA graphs on a CUDA device and takes the static-shape path elsewhere (for small
    batches on the CPU: `CPU_STATIC_MAX_BATCH`); "on" compiles the static step on the CPU (minutes of
    start-up there) and captures graphs on CUDA; "off" runs every step through the dynamic path.
    """
    if setting in DECODE_PATHS:
        return setting
    if setting == "off":
        return "dynamic"
    if setting == "on":
        return "graphs" if device.type == "cuda" else "compile"
    if setting == "auto":
        return "graphs" if device.type == "cuda" else "static"
    raise ValueError(f"compile_decode must be auto, on, off or one of {DECODE_PATHS}, got {setting!r}")


class ModelRunner:
    """Runs the jijian model on packed batches; returns logits only for the rows that sample.

    Pure decode batches (one new token per request, no adapter) go through a `StaticDecoder` unless
    `decode` is "dynamic": padded to fixed shapes, compiled or replayed as CUDA graphs.
    """

    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        adapters: Mapping[str, str | Path] | None = None,
        *,
        decode: str = "dynamic",
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        dense_above_rows: int = 0,
    ) -> None:
        self.device = next(model.parameters()).device
        # LoRA adapters hook the separate projections, so their view keeps q/k/v and gate/up unfused.
        self.model = (
            with_packed_linears(model, fuse=not adapters, dense_above_rows=dense_above_rows)
            if self.device.type == "cpu"
            else model
        )
        if adapters and self.model is model:  # hooks go on a view, never on the caller's model
            self.model = copy.deepcopy(model, memo={id(t): t for t in [*model.parameters(), *model.buffers()]})
        self.adapters = AdapterSet(self.model, model.cfg, adapters) if adapters else None
        # The decoder without nn.Module dispatch (same operations); None where hooks (adapters) need the modules.
        self.lean = lean_forward(self.model) if self.adapters is None else None
        # LoRA hooks pick rows per step, which a fixed-shape step does not model: adapters decode dynamically.
        setting, decode = decode, "dynamic" if self.adapters is not None else resolve_decode_path(decode, self.device)
        if decode == "graphs" and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        self.cache = PagedKVCache(model, num_blocks, block_size, sink_block=decode != "dynamic")
        self.block_size = block_size
        self.sliding_window = model.cfg.sliding_window
        self.static_decoder: StaticDecoder | None = None
        if decode != "dynamic":
            max_len = min(max_model_len or model.cfg.max_seq_len, num_blocks * block_size)
            # Inductor packs the weights itself (freezing) and cannot lower the runner's pre-packed copies.
            self.static_decoder = StaticDecoder(
                model if decode == "compile" else self.model, self.cache.keys, self.cache.values, block_size,
                min(max_num_seqs, CPU_STATIC_MAX_BATCH) if setting == "auto" and decode == "static" else max_num_seqs,
                max_blocks_per_seq=-(-max_len // block_size), mode=decode,
            )  # fmt: skip
            self.static_decoder.capture()

    @torch.inference_mode()
    def execute(
        self,
        token_ids: Sequence[Sequence[int]],
        start_positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        logits_counts: Sequence[int],
        adapter_ids: Sequence[int | None] | None = None,
    ) -> torch.Tensor:
        """Logits (sum(logits_counts), vocab): request i's last logits_counts[i] new tokens, in batch order.

        token_ids[i] are request i's new tokens, starting at absolute position start_positions[i];
        block_tables[i] must cover all of its positions. A request finishing its prompt wants one row,
        a decode step with d draft tokens 1 + d, a prompt chunk none. adapter_ids[i] is request i's
        LoRA adapter (an index into the runner's adapters; None for the base model).
        """
        static = self.static_decoder
        if (
            static is not None
            and all(len(t) == 1 for t in token_ids)
            and all(c == 1 for c in logits_counts)
            and static.accepts(len(token_ids), max(start_positions) // self.block_size + 1)
        ):
            return static.run([t[0] for t in token_ids], list(start_positions), [list(b) for b in block_tables])
        layout, tokens, positions, last_rows = self._layout(token_ids, start_positions, block_tables)
        self.cache.layout = layout
        if self.adapters is not None and adapter_ids is not None:
            per_token = [index for seq, index in zip(token_ids, adapter_ids, strict=True) for _ in seq]
            self.adapters.select(per_token, self.device)
        try:
            run = self.lean.hidden_states if self.lean is not None else self.model.hidden_states
            hidden = run(tokens[None, :], cache=self.cache, positions=positions)
        finally:
            self.cache.layout = None
            if self.adapters is not None:
                self.adapters.clear()
        rows = [
            last - back
            for last, count in zip(last_rows.tolist(), logits_counts, strict=True)
            for back in range(count - 1, -1, -1)
        ]
        head = self.model.lm_head
        selected = hidden[0, torch.as_tensor(rows or [0], dtype=torch.long, device=self.device)]
        return (head(selected) if head is not None else selected).float()

    def close(self) -> None:
        """Release what the runner started (nothing here; a tensor-parallel runner stops its workers)."""

    def _layout(
        self,
        token_ids: Sequence[Sequence[int]],
        start_positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
    ) -> tuple[BatchLayout, torch.Tensor, torch.Tensor, torch.Tensor]:
        device, size = self.device, self.block_size
        lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
        starts = torch.tensor(list(start_positions), dtype=torch.long)
        batch = len(token_ids)
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

        # One query (decode), a few (decode with drafts, short prompt tails) and long prompt chunks
        # attend in separate padded grids, each as wide as its own longest query.
        # Long chunks that start a prompt see only their own keys, so plain causal attention (no
        # mask, which lets SDPA skip the upper triangle) is exact for them.
        short = lengths <= SHORT_QUERY
        window = self.sliding_window
        # Under a sliding window a fresh chunk longer than the window needs the banded mask too.
        fresh = (starts == 0) & (lengths <= window) if window is not None else starts == 0
        context_blocks = (starts + lengths + size - 1) // size
        parts = [
            *_split_by_context(torch.nonzero(lengths == 1).flatten(), context_blocks),
            *_split_by_context(torch.nonzero(short & (lengths > 1)).flatten(), context_blocks),
        ]
        groups = [
            _attention_group(
                members, lengths, starts, offsets, context_blocks, tables, size, device, causal=causal, window=window
            )
            for members, causal in (
                *((members, False) for members in parts),
                (torch.nonzero(~short & ~fresh).flatten(), False),
                (torch.nonzero(~short & fresh).flatten(), True),
            )
            if len(members)
        ]
        layout = BatchLayout(slot_mapping=slots.to(device), groups=groups)
        last_rows = offsets + lengths - 1
        return layout, flat_tokens.to(device), positions.to(device), last_rows


def _split_by_context(members: torch.Tensor, context_blocks: torch.Tensor) -> list[torch.Tensor]:
    """`members` as one group, or two by context length when that pads far fewer cache blocks.

    A group gathers and attends over B x (its longest context) blocks, so short contexts batched
    with a long one copy and multiply padding; a second group costs a few more small kernel calls
    per layer, which pays off only when it saves at least a quarter of the blocks.
    """
    if len(members) < 4:
        return [members]
    lengths, order = torch.sort(context_blocks[members])
    count = len(members)
    whole = count * int(lengths[-1])
    # Splitting before sorted index i: i requests padded to lengths[i - 1], the rest to the longest.
    cost = torch.arange(1, count) * lengths[:-1] + (count - torch.arange(1, count)) * lengths[-1]
    best = int(torch.argmin(cost))
    if int(cost[best]) > 0.75 * whole:
        return [members]
    return [members[order[: best + 1]], members[order[best + 1 :]]]


def _short_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A few queries per request, as two batched matmuls per KV head group; no copy of the keys or values.

    q: (heads, B, Q, d); k, v: (kv_heads, B, L, d); mask: (B, 1, Q, L) -> (heads, B, Q, d). Query head
    h uses KV head h // (heads / kv_heads), as in grouped-query attention, so the queries of one KV
    head's group stack into one (group * Q)-row matmul. The fused SDPA kernel is built for long query
    blocks and is slower than this for a handful of query rows.
    """
    heads, batch, width, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    grouped = q.view(kv_heads, group, batch, width, dim).transpose(1, 2).reshape(kv_heads, batch, group * width, dim)
    scores = torch.matmul(grouped, k.transpose(2, 3)) * dim**-0.5  # (kv_heads, B, group * Q, L)
    allowed = mask.view(1, batch, 1, width, -1).expand(1, batch, group, width, mask.shape[-1])
    scores = scores.masked_fill(~allowed.reshape(1, batch, group * width, -1), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (kv_heads, B, group * Q, d)
    return out.view(kv_heads, batch, group, width, dim).transpose(1, 2).reshape(heads, batch, width, dim)


def _attention_group(
    members: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor,
    offsets: torch.Tensor,
    context_blocks: torch.Tensor,
    tables: torch.Tensor,
    block_size: int,
    device: torch.device,
    *,
    causal: bool = False,
    window: int | None = None,
) -> AttentionGroup:
    """The padded query grid and key mask of the requests `members`, sized to their own longest query/context.

    context_blocks[i] is how many cache blocks request i's context (through its last new token) spans.
    """
    lengths, starts, offsets = lengths[members], starts[members], offsets[members]
    max_q = int(lengths.max())
    num_blocks = int(context_blocks[members].max())
    grid = torch.arange(max_q)[None, :]
    valid = grid < lengths[:, None]
    query_index = torch.where(valid, offsets[:, None] + grid, 0)
    # Padded query rows get position 0 so they still see one key (an all-masked row would be NaN).
    query_pos = torch.where(valid, starts[:, None] + grid, 0)
    key_pos = torch.arange(num_blocks * block_size)
    mask = None
    if not causal:
        allowed = key_pos[None, None, :] <= query_pos[:, :, None]
        if window is not None:  # keys older than the window are masked out (their blocks are still gathered)
            allowed &= key_pos[None, None, :] > query_pos[:, :, None] - window
        mask = allowed[:, None].to(device)
    flat_valid = valid.flatten()
    return AttentionGroup(
        context_blocks=tables[members, :num_blocks].flatten().to(device),
        query_index=query_index.to(device),
        mask=mask,
        grid_index=torch.nonzero(flat_valid).flatten().to(device),
        packed_index=query_index.flatten()[flat_valid].to(device),
    )
