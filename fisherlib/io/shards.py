"""Which part of a measurement this process takes when several share it (`torchrun`), and how parts rejoin.

A `Shard` is handed to a measurement that can be split (the candidate pool in `fisherlib.data.sampling`);
`fisherlib.run.distributed` builds it from the process group. The default is the whole work in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import FisherlibError


def shard_rows(n: int, rank: int, world: int, block: int = 1) -> np.ndarray:
    """Return the rows `[n_rank]` of `n` that rank `rank` of `world` takes: every `world`-th block of `block` rows.

    Whole blocks, so that a shard keeps the single-process batches (cut every `block` rows) intact.
    """
    if world < 1 or not 0 <= rank < world:
        raise FisherlibError(f"rank {rank} is not in a world of {world} processes")
    if block < 1:
        raise FisherlibError(f"a shard's block must hold at least one row, got {block}")
    starts = np.arange(rank * block, n, world * block)
    if not len(starts):
        return np.arange(0)
    return np.concatenate([np.arange(start, min(start + block, n)) for start in starts])


def _alone(part: Any) -> list[Any]:
    return [part]


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world` processes; `gather(part)` returns every rank's part, in rank order, on every rank."""

    rank: int = 0
    world: int = 1
    gather: Callable[[Any], list[Any]] = field(default=_alone, compare=False)

    def rows(self, n: int, block: int = 1) -> np.ndarray:
        """This rank's rows of `n` (`shard_rows`)."""
        return shard_rows(n, self.rank, self.world, block)


WHOLE = Shard()
