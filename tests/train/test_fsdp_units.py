"""FSDP units: small consecutive blocks share one unit; large ones get their own."""

from __future__ import annotations

from torch import nn

from jijian.train.parallel.fsdp import group_blocks


def _blocks(*sizes: int) -> list[nn.Module]:
    return [nn.Linear(size, 1, bias=False) for size in sizes]  # `size` parameters each


def test_small_blocks_are_grouped_until_the_unit_is_large_enough() -> None:
    blocks = _blocks(40, 40, 40, 40, 40)
    assert [len(unit) for unit in group_blocks(blocks, 100)] == [3, 2]
    assert [block for unit in group_blocks(blocks, 100) for block in unit] == blocks  # order kept


def test_large_blocks_and_zero_threshold_give_one_unit_per_block() -> None:
    assert [len(unit) for unit in group_blocks(_blocks(500, 500, 500), 100)] == [1, 1, 1]
    assert [len(unit) for unit in group_blocks(_blocks(1, 1, 1), 0)] == [1, 1, 1]
