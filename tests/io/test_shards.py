"""Shards of a measurement: whole blocks of rows, round-robin over the ranks, every row once."""

from __future__ import annotations

import numpy as np
import pytest

from fisherlib.core.errors import FisherlibError
from fisherlib.io.shards import WHOLE, Shard, shard_rows


@pytest.mark.parametrize("n, world, block", [(11, 3, 1), (11, 3, 4), (40, 2, 64), (0, 2, 3), (17, 4, 5)])
def test_the_ranks_take_every_row_once_in_whole_blocks(n, world, block):
    shards = [shard_rows(n, rank, world, block) for rank in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    for rank, rows in enumerate(shards):
        # Every row sits in the block (of the single-process run's cuts every `block` rows) its rank owns.
        assert ((rows // block) % world == rank).all()


def test_a_block_larger_than_the_work_leaves_the_other_ranks_empty():
    assert shard_rows(40, 0, 2, 64).tolist() == list(range(40)) and len(shard_rows(40, 1, 2, 64)) == 0


def test_a_shard_knows_its_rows_and_the_whole_is_one_process():
    assert Shard(1, 3).rows(7, 2).tolist() == [2, 3]
    assert WHOLE.rows(5).tolist() == list(range(5)) and WHOLE.gather("part") == ["part"]


@pytest.mark.parametrize("rank, world, block", [(2, 2, 1), (-1, 2, 1), (0, 0, 1), (0, 2, 0)])
def test_an_impossible_shard_is_refused(rank, world, block):
    with pytest.raises(FisherlibError):
        shard_rows(10, rank, world, block)
