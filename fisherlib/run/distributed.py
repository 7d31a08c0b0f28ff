"""Data-parallel measurement on torch.distributed: `torchrun --nproc_per_node N -m fisherlib.run.cli measure <step> …`.

Each rank takes a deterministic shard of the work on its own device; rank 0 gathers the shards in the
single-process order and writes the very cache entry the notebook's own call would, so the notebook finds
it filled. `sweep` and `layers` pass their shards through the disk (each an atomic, checksummed shard
entry: `fisherlib.io.cache`), `sample` and `steering` through memory (`all_gather_object`).

- `sample`: the candidate pool's forward passes and Fisher statistics (`data.sampling`), by batch.
- `sweep`: the direction sweep (notebook 03), by `measure_boundaries`' batches of positions.
- `layers`: the layer study's boundaries and eigenpairs at every layer (notebook 08), by batches of rows.
- `dynamics`: notebook 10's revisions, one rank each in turn (each revision is its own cache entry).
- `steering`: notebook 11's budgets, by steering vector (each rank builds the vectors, then measures its share).

A shard is made of whole batches of the single-process run, and every random draw depends only on
`(seed, position)`, so each number is computed from the same inputs by the same kernels: the tables are
the single-process run's byte for byte, at the same number of threads per process (a reduction split over
more threads can round its last bit differently). A rank that dies leaves its shard unwritten and nothing
half-written; a rerun with the same world size reuses the shard entries that finished and measures the
rest (a step gathered in memory is measured again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.errors import FisherlibError
from ..io.cache import checksum_file, read_file, write_file
from ..io.shards import Shard, shard_rows
from ..steps.dynamics import dynamics_revisions
from ..steps.sweep import measure_boundaries, positions_per_chunk
from .inputs import cached_sample, load_head, load_model_for, load_sample, sample_folder, sample_positions_for, wrote_entry
from .measurements import (
    Sweep,
    _cached_sweep,
    _positions_path,
    _read_parquet,
    _write_parquet,
    layer_cache_file,
    layer_study_rows,
    measure_layer_rows,
    measure_revision,
    run_layer_engine,
    run_steering,
    sweep_path,
)

logger = logging.getLogger("fisherlib")
STEPS = ("sample", "sweep", "layers", "dynamics", "steering")
_FAIL_AFTER_SHARD = "FISHERLIB_FAIL_RANK"  # tests: the rank named here dies after measuring, before writing its shard


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


def measure_shards(path: Path, rank: int, world: int, measure: Callable[[], pd.DataFrame]) -> list[pd.DataFrame] | None:
    """Measure (unless its shard is on disk) and write this rank's shard of `path`; on rank 0, return every shard.

    Collective: every rank calls it. A shard already written by an earlier run is read, not measured.
    """
    part = shard_path(path, rank, world)
    if read_file(part, pd.read_parquet) is None:
        measured = measure()
        if os.environ.get(_FAIL_AFTER_SHARD) == str(rank):
            raise FisherlibError(f"rank {rank} stopped on purpose before writing its shard ({_FAIL_AFTER_SHARD})")
        write_file(part, lambda file: measured.to_parquet(file, index=False))
    _barrier(world)
    if rank != 0:
        return None
    shards = []
    for other in range(world):
        frame = read_file(shard_path(path, other, world), pd.read_parquet)
        if frame is None:
            raise FisherlibError(f"the shard of rank {other} is missing or corrupt: rerun the same command to measure it")
        shards.append(frame)
    return shards


def remove_shards(path: Path, world: int) -> None:
    """Remove the shards of `path` (and their checksums) once the gathered entry is written."""
    for rank in range(world):
        for leftover in (shard_path(path, rank, world), checksum_file(shard_path(path, rank, world))):
            leftover.unlink(missing_ok=True)


def in_order(frame: pd.DataFrame, keys: list[str], orders: list[dict]) -> pd.DataFrame:
    """Return `frame` sorted by where each of `keys` comes in its order (`{value: rank}`), ties kept in place."""
    ranks = [frame[key].map(order).to_numpy() for key, order in zip(keys, orders)]
    # lexsort sorts by the last key first and is stable: each position keeps its rows in measured order.
    return frame.iloc[np.lexsort(ranks[::-1])].reset_index(drop=True)


# --- the steps --------------------------------------------------------------------------------------


def _gather_objects(part):
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def sample_sharded(params, seed: int, rank: int, world: int, progress: bool = True) -> None:
    """Draw the run's sample for `seed` with the candidate pool's batches shared out; rank 0 caches it.

    The pool's parts travel between the processes (`all_gather_object`), not through the disk: a rank that
    dies here leaves no sample, and the rerun samples again.
    """
    if cached_sample(params, seed) is None:
        shard = Shard(rank, world, _gather_objects if world > 1 else Shard().gather)
        sample_positions_for(params, seed, shard=shard, progress=progress and rank == 0)
    _barrier(world)


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

    def measure() -> pd.DataFrame:
        head = load_head(params)
        block = positions_per_chunk(head.weight.shape[0], params.n_random, params.n_control)
        rows = shard_rows(len(sample), rank, world, block)
        logger.info("rank %d/%d: %d of %d positions", rank, world, len(rows), len(sample))
        if len(rows) == 0:
            return pd.DataFrame()  # fewer batches than ranks: this one has none
        return measure_boundaries(
            head.weight, head.bias, sample.h[torch.as_tensor(rows)], params.eps_grid, top_k=params.top_k,
            n_random=params.n_random, n_control=params.n_control, seed=seed, divergence=params.divergence,
            position_ids=sample.table["position"].to_numpy()[rows], progress=progress and rank == 0,
        )  # fmt: skip

    shards = measure_shards(path, rank, world, measure)
    if shards is None:
        return None
    position_order = {int(position): i for i, position in enumerate(sample.table["position"].to_numpy())}
    measured = pd.concat([shard for shard in shards if len(shard)], ignore_index=True)
    measurements = in_order(measured, ["position"], [position_order])
    positions = sample.table.assign(seed=seed)
    _write_parquet(positions, _positions_path(path))
    _write_parquet(measurements, path)
    wrote_entry(f"direction sweep (seed {seed}, gathered from {world} ranks)", path)
    remove_shards(path, world)
    return Sweep(positions=positions, measurements=measurements)


def run_layer_study_sharded(params, seed: int, rank: int, world: int, progress: bool = True) -> pd.DataFrame | None:
    """Measure this rank's batches of the layer study's rows at every layer; rank 0 gathers and writes the entry."""
    path = layer_cache_file(params, seed)
    cached = _read_parquet(params, path, f"layer measurements (seed {seed})")
    if cached is not None:
        return cached if rank == 0 else None
    if rank == 0:
        load_sample(params, seed, progress=progress)
    _barrier(world)
    sample, rows = layer_study_rows(params, seed, progress=False)

    def measure() -> pd.DataFrame:
        mine = rows[shard_rows(len(rows), rank, world, params.batch_size)]
        logger.info("rank %d/%d: %d of %d layer-study positions", rank, world, len(mine), len(rows))
        if len(mine) == 0:
            return pd.DataFrame()  # fewer batches than ranks: this one has none
        return measure_layer_rows(params, seed, sample, mine)

    shards = measure_shards(path, rank, world, measure)
    if shards is None:
        return None
    measured = pd.concat([shard for shard in shards if len(shard)], ignore_index=True)
    layers = list(dict.fromkeys(measured["layer"]))  # every shard measures the layers in the run's order
    position_order = {int(sample.table["position"].iloc[row]): i for i, row in enumerate(rows)}
    measurements = in_order(measured, ["layer", "position"], [{label: i for i, label in enumerate(layers)}, position_order])
    _write_parquet(measurements, path)
    wrote_entry(f"layer measurements (seed {seed}, gathered from {world} ranks)", path)
    run_layer_engine(params, seed)
    remove_shards(path, world)
    return measurements


def run_dynamics_sharded(params, seed: int, rank: int, world: int, progress: bool = True) -> list[str]:
    """Measure every `world`-th of notebook 10's revisions from `rank` (each is its own cache entry); return them."""
    revisions = dynamics_revisions(params)
    if rank == 0:
        load_sample(params, seed, progress=progress)
    _barrier(world)
    sample = load_sample(params, seed, progress=False)
    reference = load_model_for(params)
    mine = revisions[rank::world]
    for revision in mine:
        logger.info("rank %d/%d: revision %s", rank, world, revision)
        measure_revision(params, sample, revision, seed, reference_model=reference, progress=False)
    _barrier(world)
    return mine


def run_steering_sharded(params, seed: int, rank: int, world: int, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Measure notebook 11's budgets with the vectors shared out; rank 0 writes the entry. Returns the tables.

    The vectors' tables travel between the processes (`all_gather_object`): a rank that dies here leaves no
    entry, and the rerun measures the budgets again.
    """
    if rank == 0:
        load_sample(params, seed, progress=progress)
    _barrier(world)
    shard = Shard(rank, world, _gather_objects if world > 1 else Shard().gather)
    tables = run_steering(params, seed, progress=False, shard=shard)
    _barrier(world)  # the entry is written before any rank reports the step done
    return tables


def measure(params, steps, progress: bool = True) -> None:
    """Run `steps` (names of `STEPS`, in order) for `params`, sharded over the torchrun processes.

    `sample` and `sweep` run for every seed of the run, `layers` and `steering` for `params.seed` and
    `dynamics` for the first seed, as notebooks 01, 03, 08, 11 and 10 do.
    """
    steps = [steps] if isinstance(steps, str) else list(steps)
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise FisherlibError(f"unknown step {unknown[0]!r}: the sharded steps are {', '.join(STEPS)}")
    if params.device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FisherlibError("device=auto spreads one model over every GPU, which several processes cannot share: "
                             "run one process (NPROC=1), or give each process its own GPU (leave device empty)")  # fmt: skip
    with process_group() as (rank, world, device):
        if device is not None and not params.device:
            params = dataclasses.replace(params, device=device)  # the device is not in any cache key
        processes = f"{world} process{'es' if world > 1 else ''}"
        for step in steps:
            seeds = {"sample": params.seed_list, "sweep": params.seed_list, "layers": [params.seed], "steering": [params.seed],
                     "dynamics": params.seed_list[:1]}[step]  # fmt: skip
            for seed in seeds:
                if step == "sample":
                    sample_sharded(params, seed, rank, world, progress=progress)
                    said = f"{len(load_sample(params, seed, progress=False))} positions in {sample_folder(params, seed)}"
                elif step == "sweep":
                    sweep = run_sweep_sharded(params, seed, rank, world, progress=progress)
                    said = sweep is not None and f"{len(sweep.measurements)} rows in {sweep_path(params, seed)}"
                elif step == "layers":
                    measured = run_layer_study_sharded(params, seed, rank, world, progress=progress)
                    said = measured is not None and f"{len(measured)} rows in {layer_cache_file(params, seed)}"
                elif step == "steering":
                    tables = run_steering_sharded(params, seed, rank, world, progress=progress)
                    where = f"{params.cache_path}/steering-seed{seed}-*"
                    said = f"{tables['vectors'].shape[0]} vectors, {len(tables['tokens'])} token rows in {where}"
                else:
                    run_dynamics_sharded(params, seed, rank, world, progress=progress)
                    said = f"{len(dynamics_revisions(params))} revisions, each in {params.cache_path}/dynamics-*"
                if rank == 0:
                    print(f"{step} (seed {seed}): {said} ({processes})", flush=True)
