"""The KV-cache manager's bookkeeping: allocation, sharing by hash, reference counts, LRU eviction."""

from __future__ import annotations

from jijian.serve.kv_cache import KVCacheManager


def test_allocation_fails_cleanly_when_blocks_run_out():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    assert kv.allocate("a", 9)  # three blocks
    assert kv.block_ids("a") == [0, 1, 2]
    assert not kv.allocate("b", 5)  # needs two, one is left
    assert "b" not in kv.tables or kv.block_ids("b") == []
    assert kv.num_free_blocks == 1


def test_a_shared_prefix_reuses_blocks_and_keeps_one_token_to_compute():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    tokens = list(range(12))
    assert kv.allocate("a", 12)
    kv.cache_full_blocks("a", tokens, 12)
    # Same 12 tokens: only two blocks are reused, since the last token must be computed again.
    assert kv.find_cached_prefix("b", tokens) == 8
    assert kv.block_ids("b") == kv.block_ids("a")[:2]
    assert kv.blocks[kv.block_ids("a")[0]].ref_count == 2
    # A different second block stops the match after the first.
    assert kv.find_cached_prefix("c", [0, 1, 2, 3, 9, 9, 9, 9, 1]) == 4


def test_freed_blocks_stay_cached_until_evicted_oldest_first():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    assert kv.allocate("a", 4)
    kv.cache_full_blocks("a", [1, 2, 3, 4], 4)
    kv.free("a")
    assert kv.usage() == 0.0
    assert kv.find_cached_prefix("b", [1, 2, 3, 4, 5]) == 4
    kv.free("b")
    # Filling the cache evicts the two free uncached blocks first, then the cached tail, then the head.
    assert kv.allocate("c", 6)
    assert kv.find_cached_prefix("d", [1, 2, 3, 4, 5]) == 2
    kv.free("d")
    kv.free("c")
    assert kv.allocate("e", 8)
    assert kv.find_cached_prefix("f", [1, 2, 3, 4, 5]) == 0
