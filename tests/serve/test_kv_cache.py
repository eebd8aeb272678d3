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


def test_blocks_behind_a_sliding_window_are_given_back_once():
    cache = KVCacheManager(num_blocks=12, block_size=4, sliding_window=8)
    assert cache.allocate("a", 40)  # 10 blocks
    assert cache.num_free_blocks == 2
    # The next query (position 40) sees keys 33..40: blocks 0-7 (positions 0-31) are out of reach; block 8 is not.
    assert cache.release_out_of_window("a", 40) == 8
    assert cache.release_out_of_window("a", 41) == 0  # nothing is given back twice
    assert cache.num_free_blocks == 10
    assert len(cache.block_ids("a")) == 10  # positions still map to slots
    assert cache.allocate("b", 32)  # another request takes the released blocks
    cache.free("a")  # only the two blocks still held are released
    assert cache.num_free_blocks == 4 and all(block.ref_count >= 0 for block in cache.blocks)
    cache.free("b")
    assert cache.num_free_blocks == 12


def test_without_a_window_nothing_is_released_early():
    cache = KVCacheManager(num_blocks=12, block_size=4)
    assert cache.allocate("a", 40)
    assert cache.release_out_of_window("a", 40) == 0 and cache.num_free_blocks == 2
