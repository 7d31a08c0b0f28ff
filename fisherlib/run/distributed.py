"""Data-parallel measurement on torch.distributed: `torchrun --nproc_per_node N -m fisherlib.run.cli measure sweep …`.

Each rank takes a deterministic shard of the positions (every `world`-th one from its rank), measures it on
its own device and writes it as a shard entry (atomic, checksummed: `fisherlib.io.cache`); rank 0 then
gathers the shards in the single-process order and writes the very cache entry that `run_sweep` would,
so the notebooks find it filled. A position's directions depend only on `(seed, position id)`, so the
tables are those of one process byte for byte. A rank that dies leaves its shard unwritten and nothing
half-written; a rerun with the same world size reuses the shards that finished and measures the rest.

Rank 0 samples the positions (or reads them) before the others read them back from the cache, so sampling
itself is not sharded yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.errors import FisherlibError
from ..io.cache import checksum_file, read_file, write_file
from ..steps.sweep import measure_boundaries
from .inputs import load_head, load_sample, wrote_entry
from .measurements import Sweep, _cached_sweep, _positions_path, _write_parquet, sweep_path

logger = logging.getLogger("fisherlib")
STEPS = ("sweep",)
_FAIL_AFTER_SHARD = "FISHERLIB_FAIL_RANK"  # tests: the rank named here dies after measuring, before writing its shard


def shard_rows(n: int, rank: int, world: int) -> np.ndarray:
    """Return the rows `[n_rank]` of `n` that rank `rank` of `world` measures: every `world`-th from `rank`."""
    if world < 1 or not 0 <= rank < world:
        raise FisherlibError(f"rank {rank} is not in a world of {world} processes")
    return np.arange(rank, n, world)


@contextlib.contextmanager
def process_group():
    """Yield `(rank, world, device)`: torch.distributed set up from torchrun's environment (one process without it)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, None
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def shard_path(path: Path, rank: int, world: int) -> Path:
    """Where rank `rank` of `world` keeps its shard of the cache entry `path`."""
    return path.with_name(f"{path.stem}.shard{rank}of{world}{path.suffix}")


def run_sweep_sharded(params, seed: int, rank: int, world: int, progress: bool = True) -> Sweep | None:
    """Measure this rank's shard of the sweep of `seed`; rank 0 gathers and writes the sweep. Returns it on rank 0.

    Every rank must call it (collectively, in a process group of `world`); a complete cached sweep is
    returned at once.
    """
    path = sweep_path(params, seed)
    cached = _cached_sweep(params, path)
    if cached is not None:
        return cached if rank == 0 else None
    if rank == 0:
        load_sample(params, seed, progress=progress)  # sampled (and cached) once, before the others read it
    _barrier(world)
    sample = load_sample(params, seed, progress=False)
    part = shard_path(path, rank, world)
    rows = shard_rows(len(sample), rank, world)
    if read_file(part, pd.read_parquet) is None:
        head = load_head(params)
        logger.info("rank %d/%d: %d of %d positions", rank, world, len(rows), len(sample))
        measured = measure_boundaries(
            head.weight, head.bias, sample.h[torch.as_tensor(rows)], params.eps_grid, top_k=params.top_k,
            n_random=params.n_random, n_control=params.n_control, seed=seed, divergence=params.divergence,
            position_ids=sample.table["position"].to_numpy()[rows], progress=progress and rank == 0,
        )  # fmt: skip
        if os.environ.get(_FAIL_AFTER_SHARD) == str(rank):
            raise FisherlibError(f"rank {rank} stopped on purpose before writing its shard ({_FAIL_AFTER_SHARD})")
        write_file(part, lambda file: measured.to_parquet(file, index=False))
    _barrier(world)
    if rank != 0:
        return None
    return _gather_sweep(params, sample, seed, path, world)


def _gather_sweep(params, sample, seed: int, path: Path, world: int) -> Sweep:
    """Rank 0: the shards in the single-process order (positions as sampled), written as the sweep's cache entry."""
    shards = []
    for rank in range(world):
        frame = read_file(shard_path(path, rank, world), pd.read_parquet)
        if frame is None:
            raise FisherlibError(f"the shard of rank {rank} is missing or corrupt: rerun the same command to measure it")
        shards.append(frame)
    order = {int(position): i for i, position in enumerate(sample.table["position"].to_numpy())}
    measurements = pd.concat(shards, ignore_index=True)
    rank_of_row = measurements["position"].map(order).to_numpy()
    # A stable sort on the sample's position order keeps each position's rows in the order it measured them.
    measurements = measurements.iloc[np.argsort(rank_of_row, kind="stable")].reset_index(drop=True)
    positions = sample.table.assign(seed=seed)
    _write_parquet(positions, _positions_path(path))
    _write_parquet(measurements, path)
    wrote_entry(f"direction sweep (seed {seed}, gathered from {world} ranks)", path)
    for rank in range(world):
        for leftover in (shard_path(path, rank, world), checksum_file(shard_path(path, rank, world))):
            leftover.unlink(missing_ok=True)
    return Sweep(positions=positions, measurements=measurements)


def measure(params, step: str, progress: bool = True) -> None:
    """Run `step` (one of `STEPS`) for every seed of `params`, sharded over the torchrun processes."""
    if step not in STEPS:
        raise FisherlibError(f"unknown step {step!r}: the sharded steps are {', '.join(STEPS)}")
    with process_group() as (rank, world, device):
        if device is not None and not params.device:
            import dataclasses

            params = dataclasses.replace(params, device=device)  # the device is not in any cache key
        for seed in params.seed_list:
            sweep = run_sweep_sharded(params, seed, rank, world, progress=progress)
            if rank == 0:
                print(f"sweep (seed {seed}): {len(sweep.measurements)} rows in {sweep_path(params, seed)} ({world} process{'es' if world > 1 else ''})")
