"""Decode steps with static shapes, so that `torch.compile` (CPU) or CUDA graphs (GPU) can run them.

A pure decode step (every request adds one token, no drafts, no adapters) is the everyday step of a
server, and the one whose cost is mostly fixed overhead: the Python of building the batch's index
tensors and, on an accelerator, hundreds of small kernel launches for a few rows of work. Here the
step is padded to a bucket, (batch size, context width) with batch sizes 1, 2, 4, 8, ... up to
`max_num_seqs` and context widths of 1, 2, 4, ... cache blocks up to the longest sequence, and it reads
its inputs from one preallocated buffer:

* tokens, positions and the cache slot each new key/value goes to, one per row;
* a fixed-width block table per row, padded with a sink block.

Padding rows decode token 0 at position 0 into the sink block (one extra cache block the KV-cache
manager never hands out), so they write nothing any real request reads; padded table entries point at
the sink too, and the attention mask hides every key past a row's own position. The function is then
the same computation for every step of a bucket: `torch.compile` specialises it once per bucket, and
a CUDA graph records it once per bucket and replays it with new buffer contents.

`StaticDecoder.run` is the tested path (tests compare it with the dynamic runner on the CPU); the
CUDA-graph mode is a thin wrapper that captures that same function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from jijian.model.llama import CausalLM
from jijian.serve.lean_forward import lean_forward

MIN_WIDTH_BLOCKS = 4  # narrower contexts are padded to this: fewer buckets, almost no extra work


# Steps a CPU bucket runs eagerly before its step is recorded with torch.jit.trace (see StaticDecoder).
TRACE_AFTER_STEPS = 64


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch-size buckets: 1, 2, 4, 8, ... below `max_num_seqs`, then `max_num_seqs` itself."""
    sizes, size = [], 1
    while size < max_num_seqs:
        sizes.append(size)
        size *= 2
    return [*sizes, max_num_seqs]


def context_widths(max_blocks: int) -> list[int]:
    """Context-width buckets in cache blocks: MIN_WIDTH_BLOCKS, doubling, then `max_blocks` itself."""
    widths, width = [], min(MIN_WIDTH_BLOCKS, max_blocks)
    while width < max_blocks:
        widths.append(width)
        width *= 2
    return [*widths, max_blocks]


def bucket(value: int, buckets: list[int]) -> int | None:
    """The smallest bucket holding `value`, or None when it exceeds the largest."""
    return next((b for b in buckets if b >= value), None)


class StaticDecodeAttention:
    """The model's `AttentionCache` hook for a padded decode batch: one query per row, fixed-width context."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, block_size: int, window: int | None) -> None:
        self.keys, self.values = keys, values  # (layers, kv_heads, blocks * block_size, head_dim)
        self.block_size = block_size
        self.window = window
        self.slots: torch.Tensor | None = None  # (S,) cache slot of each row's new key/value
        self.tables: torch.Tensor | None = None  # (S * W,) each row's W context blocks, flattened
        self.mask: torch.Tensor | None = None  # (1, S, 1, W * block_size) keys each row may attend to

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Write each row's key/value to its slot, then attend its one query over its context blocks."""
        assert self.slots is not None and self.tables is not None and self.mask is not None
        key_cache, value_cache = self.keys[layer_idx], self.values[layer_idx]
        key_cache.index_copy_(1, self.slots, k[0])
        value_cache.index_copy_(1, self.slots, v[0])
        kv_heads, dim = key_cache.shape[0], key_cache.shape[2]
        heads, rows = q.shape[1], q.shape[2]
        group = heads // kv_heads
        keys = key_cache.view(kv_heads, -1, self.block_size * dim).index_select(1, self.tables)
        values = value_cache.view(kv_heads, -1, self.block_size * dim).index_select(1, self.tables)
        keys = keys.view(kv_heads, rows, -1, dim)  # (kv_heads, S, L, d)
        values = values.view(kv_heads, rows, -1, dim)
        # The query heads sharing a KV head form the rows of one matmul per (KV head, request).
        queries = q[0].view(kv_heads, group, rows, dim).transpose(1, 2)  # (kv_heads, S, group, d)
        scores = torch.matmul(queries, keys.transpose(2, 3)) * dim**-0.5  # (kv_heads, S, group, L)
        scores = scores.masked_fill(~self.mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values)  # (kv_heads, S, group, d)
        return out.transpose(1, 2).reshape(1, heads, rows, dim)


class StaticDecoder:
    """Runs pure decode batches padded to (batch size, context width) buckets, eagerly, compiled or as CUDA graphs.

    `mode` is "static" (eager, the reference), "compile" (`torch.compile` once per bucket, on first use)
    or "graphs" (CUDA graphs, every bucket captured by `capture()`, which the runner calls at start).
    `keys` and `values` are the paged cache, whose last block is the sink that padding writes to.
    """

    def __init__(
        self,
        model: CausalLM,
        keys: torch.Tensor,
        values: torch.Tensor,
        block_size: int,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        mode: str = "static",
    ) -> None:
        if mode not in ("static", "compile", "graphs"):
            raise ValueError(f"unknown static decode mode {mode!r}")
        self.model = model
        self.device = keys.device
        self.block_size = block_size
        self.sink_block = keys.shape[2] // block_size - 1
        self.sizes = capture_sizes(max_num_seqs)
        self.widths = context_widths(max_blocks_per_seq)
        self.mode = mode
        self.attention = StaticDecodeAttention(keys, values, block_size, model.cfg.sliding_window)
        rows, width = self.sizes[-1], self.widths[-1]
        # tokens | positions | slots | block tables, all int64 in one tensor: one host-to-device copy a step.
        self.inputs = torch.zeros(rows * (3 + width), dtype=torch.long, device=self.device)
        on_host = self.device.type == "cpu"
        self.host_inputs = self.inputs if on_host else torch.zeros(self.inputs.shape, dtype=torch.long, pin_memory=True)
        self.key_positions = torch.arange(width * block_size, device=self.device)
        # Freezing folds the weights into the compiled code as constants, which lets inductor pack them
        # for oneDNN once (the eager CPU path uses `matmul.PackedLinear` for the same reason).
        self.forward = self._forward
        # Eager steps skip nn.Module dispatch (the same operations); compiled and captured ones trace the modules.
        self.lean = lean_forward(model) if mode == "static" else None
        # On the CPU a bucket's eager step is recorded with torch.jit.trace once the bucket has run `trace_after`
        # steps, and then replayed by TorchScript's interpreter (its graph optimiser off): the same kernels on the
        # same tensors (bitwise-equal logits, tested), without Python between them, the CPU's counterpart of a CUDA
        # graph (SmolLM2 int4, one thread: 20.1 -> 17.1 ms a step). Recording costs about 0.4 s, so only buckets
        # in steady use are recorded: recording every bucket on first use cost a 16-request burst 7 s. Weights
        # that need gradients, and oneDNN's packed float weights, cannot be recorded as constants: then, and off
        # the CPU, steps run eagerly.
        self.trace = (
            mode == "static"
            and self.device.type == "cpu"
            and not any(t.requires_grad for t in [*model.parameters(), *model.buffers()])
        )
        self.traced: dict[tuple[int, int], Callable[..., torch.Tensor]] = {}
        self.trace_after = TRACE_AFTER_STEPS
        self.bucket_steps: dict[tuple[int, int], int] = {}
        if mode == "compile":
            self.forward = torch.compile(self._forward, dynamic=False, options={"freezing": True})
        if mode == "compile":
            from torch import _dynamo

            # One specialisation per bucket; the default limit (8) would fall back to eager silently.
            limit = len(self.sizes) * len(self.widths) + 8
            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, limit)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.steps = 0  # decode steps run here so far
        self.replays = 0  # ... of which CUDA graph replays (tests check the graphs were really used)

    def accepts(self, batch: int, context_blocks: int) -> bool:
        """True when a decode batch this big, over contexts this long, fits a bucket."""
        return batch <= self.sizes[-1] and context_blocks <= self.widths[-1]

    @torch.inference_mode()
    def run(self, token_ids: list[int], positions: list[int], block_tables: list[list[int]]) -> torch.Tensor:
        """Logits (batch, vocab) of one decode step: request i adds token_ids[i] at positions[i].

        The block tables must cover each request's position; the caller checked `accepts`.
        """
        batch = len(token_ids)
        size = bucket(batch, self.sizes)
        width = bucket(max(p // self.block_size + 1 for p in positions), self.widths)
        assert size is not None and width is not None, "the caller checks accepts() first"
        self._fill(token_ids, positions, block_tables, size, width)
        self.steps += 1
        graph = self.graphs.get((size, width))
        if graph is not None:
            graph[0].replay()
            self.replays += 1
            return graph[1][:batch].clone()
        views = self._views(size, width)
        traced = self.traced.get((size, width)) if self.trace else None
        if self.trace and traced is None:
            used = self.bucket_steps[size, width] = self.bucket_steps.get((size, width), 0) + 1
            if used >= self.trace_after:
                try:
                    traced = self.traced[(size, width)] = self._record(views)
                except RuntimeError:  # an operand TorchScript cannot hold (oneDNN's packed fp32/bf16 weights)
                    self.trace = False
        if traced is not None:
            with torch.jit.optimized_execution(False):  # the optimiser's passes cost more than they save here
                return traced(*views)[:batch]
        return self.forward(*views)[:batch]

    def _record(self, views: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
        """The eager step over `views`' shapes, recorded by torch.jit.trace (it also runs it once)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced: Callable[..., torch.Tensor] = torch.jit.trace(self._forward, views, check_trace=False)
        return traced

    @torch.inference_mode()
    def capture(self) -> None:
        """Record every bucket as a CUDA graph (largest first, so all share one memory pool)."""
        if self.mode != "graphs":
            return
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for width in reversed(self.widths):
            for size in reversed(self.sizes):
                self._fill([], [], [], size, width)  # all padding rows: a valid batch
                views = self._views(size, width)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):  # warm-up off the capture stream (lazy inits, autotuning)
                    self._forward(*views)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    logits = self._forward(*views)
                self.graphs[(size, width)] = (graph, logits)
        torch.cuda.synchronize(self.device)

    def _fill(
        self, token_ids: list[int], positions: list[int], block_tables: list[list[int]], size: int, width: int
    ) -> None:
        """Write the padded batch into the input buffer (through pinned host memory on CUDA)."""
        rows, sink, block = self.sizes[-1], self.sink_block, self.block_size
        batch = len(token_ids)
        host = self.host_inputs
        tables = host[3 * rows :].view(rows, -1)[:size, :width]
        padded_tables, slots = [], []
        for table, position in zip(block_tables, positions, strict=True):
            used = position // block + 1
            padded_tables.append([*table[:used], *[sink] * (width - used)])
            slots.append(table[used - 1] * block + position % block)
        padding = size - batch
        host[:size] = torch.as_tensor([*token_ids, *[0] * padding])
        host[rows : rows + size] = torch.as_tensor([*positions, *[0] * padding])
        host[2 * rows : 2 * rows + size] = torch.as_tensor([*slots, *[sink * block] * padding])
        tables.copy_(torch.as_tensor([*padded_tables, *[[sink] * width] * padding]))
        if host is not self.inputs:
            self.inputs.copy_(host, non_blocking=True)

    def _views(self, size: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, inputs = self.sizes[-1], self.inputs
        tables = inputs[3 * rows :].view(rows, -1)[:size, :width]
        return inputs[:size], inputs[rows : rows + size], inputs[2 * rows : 2 * rows + size], tables

    def _forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor
    ) -> torch.Tensor:
        """The static-shape step: the whole model over the padded rows; logits of every row (fp32)."""
        attention = self.attention
        key_positions = self.key_positions[: tables.shape[1] * self.block_size]
        allowed = key_positions[None, :] <= positions[:, None]
        if attention.window is not None:
            allowed &= key_positions[None, :] > positions[:, None] - attention.window
        attention.slots, attention.tables, attention.mask = slots, tables.reshape(-1), allowed[None, :, None, :]
        run = self.lean.hidden_states if self.lean is not None else self.model.hidden_states
        hidden = run(tokens[None, :], cache=attention, positions=positions)[0]
        head = self.model.lm_head
        return (head(hidden) if head is not None else hidden).float()
