"""The KV-cache manager: fixed-size blocks, per-request block tables, hash-based prefix caching.

Only bookkeeping lives here (which block holds which tokens); the tensors are in `runner.PagedKVCache`.
A block that fills up gets a hash chained from its predecessor's, so two prompts sharing a prefix map
it to the same hashes and the second one reuses the first one's blocks (reference counted). The hash
is BLAKE2b (128-bit) of the parent's digest and the token ids: blocks are shared across tenants, so a
crafted prompt whose hash collided with another tenant's prefix would read that tenant's KV cache;
Python's 64-bit `hash` of a tuple is not built to resist that. Blocks
nobody uses go to a free queue in least-recently-used order; a cached block stays findable there
until a new allocation evicts it, which is when its hash is forgotten.

Under sliding-window attention (Mistral) a request's leading blocks fall out of every future query's
window; they are given back as the request advances, so a long request holds about a window's worth of
blocks instead of its whole context. Its table keeps their ids, so positions still map to slots: the
runner masks those keys out, so what a reused block holds there is never seen.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Block:
    """One block of `block_size` token slots in the paged KV cache."""

    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None


@dataclass
class BlockTable:
    """The blocks one request owns, in position order, plus how many of them are hashed."""

    block_ids: list[int] = field(default_factory=list)
    num_hashed: int = 0
    last_hash: bytes | None = None
    num_released: int = 0  # leading blocks given back because they left the sliding window


def chain_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """Collision-resistant digest of a full block given its parent's: equal digests mean equal prefixes."""
    digest = hashlib.blake2b(parent or b"", digest_size=16)
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


class KVCacheManager:
    """Allocates, shares and frees KV-cache blocks; the scheduler's only view of cache memory."""

    def __init__(
        self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True, sliding_window: int | None = None
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError("sliding_window must be positive")
        self.block_size = block_size
        self.sliding_window = sliding_window
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Unreferenced blocks, oldest first: allocation takes from the front (evicting the LRU one).
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        self.tables: dict[str, BlockTable] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (cached-but-unused ones included)."""
        return len(self.free_queue)

    def usage(self) -> float:
        """Fraction of blocks referenced by live requests."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        """The block table of a request."""
        return self.tables[request_id].block_ids

    def find_cached_prefix(self, request_id: str, token_ids: Sequence[int], salt: int | None = None) -> int:
        """Take the longest cached prefix of `token_ids` for a new request; returns the tokens it covers.

        At least one token is always left to compute, because the model must produce the logits of
        the last prompt position. `salt` starts the hash chain: requests through different LoRA
        adapters compute different keys and values for the same tokens, so they never share blocks.
        """
        table = self.tables.setdefault(request_id, BlockTable())
        assert not table.block_ids, "prefix lookup happens only before the first allocation"
        if not self.enable_prefix_caching:
            return 0
        size = self.block_size
        # An adapter's salt starts the chain, so requests through different adapters never share blocks.
        parent: bytes | None = None if salt is None else salt.to_bytes(16, "little", signed=True)
        table.last_hash = parent
        hits: list[int] = []
        for start in range(0, (len(token_ids) - 1) // size * size, size):
            block_hash = chain_hash(parent, token_ids[start : start + size])
            block_id = self.cached.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
            parent = block_hash
        for block_id in hits:
            self._reference(block_id)
        table.block_ids.extend(hits)
        table.num_hashed = len(hits)
        table.last_hash = parent
        return len(hits) * size

    def allocate(self, request_id: str, num_tokens: int) -> bool:
        """Make the request's table hold `num_tokens` slots in all; False (nothing changed) if out of blocks."""
        table = self.tables.setdefault(request_id, BlockTable())
        needed = -(-num_tokens // self.block_size) - len(table.block_ids)
        if needed <= 0:
            return True
        if needed > len(self.free_queue):
            return False
        for _ in range(needed):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:  # evict: its contents are about to be overwritten
                if self.cached.get(block.block_hash) == block_id:
                    del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            table.block_ids.append(block_id)
        return True

    def cache_full_blocks(self, request_id: str, token_ids: Sequence[int], num_computed: int) -> None:
        """Publish the hashes of blocks whose KV entries are now all computed, for later requests to reuse."""
        if not self.enable_prefix_caching:
            return
        table = self.tables[request_id]
        size = self.block_size
        for index in range(table.num_hashed, num_computed // size):
            block_hash = chain_hash(table.last_hash, token_ids[index * size : (index + 1) * size])
            block = self.blocks[table.block_ids[index]]
            block.block_hash = block_hash
            self.cached.setdefault(block_hash, block.block_id)
            table.last_hash = block_hash
            table.num_hashed = index + 1

    def release_out_of_window(self, request_id: str, num_computed: int) -> int:
        """Give back the blocks no query from position `num_computed` on can see; returns how many now.

        A query at position p sees keys after p - window, so every block that ends before
        num_computed - window + 1 is out of reach for good (positions only grow until a preemption,
        which frees the whole table anyway). Without a sliding window this does nothing.
        """
        table = self.tables.get(request_id)
        if self.sliding_window is None or table is None:
            return 0
        first_visible = num_computed - self.sliding_window + 1
        releasable = min(max(0, first_visible) // self.block_size, len(table.block_ids))
        released = 0
        for index in range(table.num_released, releasable):
            self._release(table.block_ids[index])
            released += 1
        table.num_released = max(table.num_released, releasable)
        return released

    def free(self, request_id: str) -> None:
        """Release a request's blocks; blocks nobody else holds become free (still cached)."""
        table = self.tables.pop(request_id, None)
        if table is None:
            return
        # Tail blocks first, so a shared prefix is the last thing evicted; released ones were given back already.
        for block_id in reversed(table.block_ids[table.num_released :]):
            self._release(block_id)

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_queue[block_id] = None

    def _reference(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1
