"""Data-parallel measurement: torchrun with 2 gloo processes on tiny against one process; a rank that dies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fisherlib.run.distributed import shard_path, shard_rows

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["-p", "n_positions", "30", "-p", "eps_grid", "[0.01, 0.1, 1.0]", "-p", "n_random", "4", "-p", "n_control", "2",
         "-p", "max_context", "96", "-p", "pool_factor", "2"]  # fmt: skip


def _measure(cache: Path, nproc: int, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    command = [*launcher, "-m", "fisherlib.run.cli", "measure", "sweep", *SMALL, "-p", "cache_dir", str(cache),
               "-p", "results_root", str(cache.parent / "results"), "-p", "run_name", cache.name]  # fmt: skip
    # One thread per process in both runs: a thread count can change the last bit of a reduction.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def _sweep(cache: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    [path] = [p for p in cache.glob("sweep-seed0-*.parquet") if ".shard" not in p.name]
    return pd.read_parquet(path), pd.read_parquet(path.with_name(path.name.replace("sweep-", "sweep-positions-")))


def test_shards_cover_every_position_once():
    rows = np.concatenate([shard_rows(11, rank, 3) for rank in range(3)])
    assert sorted(rows.tolist()) == list(range(11))
    assert shard_path(Path("a/sweep-x.parquet"), 1, 2).name == "sweep-x.shard1of2.parquet"


@pytest.mark.integration
@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_sweep_and_a_dead_rank_resumes(tmp_path):
    single = _measure(tmp_path / "one", 1)
    assert single.returncode == 0, single.stderr[-2000:]
    # Rank 1 dies after measuring, before writing its shard: the job fails, no sweep is written, rank 0's shard is kept.
    failed = _measure(tmp_path / "two", 2, {"FISHERLIB_FAIL_RANK": "1"})
    assert failed.returncode != 0
    assert not [p for p in (tmp_path / "two").glob("sweep-seed0-*.parquet") if ".shard" not in p.name]
    assert [p.name.split(".")[1] for p in (tmp_path / "two").glob("sweep-seed0-*.shard*.parquet")] == ["shard0of2"]
    rerun = _measure(tmp_path / "two", 2)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "rank 0/2" not in rerun.stderr and "rank 1/2" in rerun.stderr  # only the missing shard is measured
    assert not list((tmp_path / "two").glob("*.shard*"))  # gathered, then the shards removed
    (one, one_positions), (two, two_positions) = _sweep(tmp_path / "one"), _sweep(tmp_path / "two")
    pd.testing.assert_frame_equal(one_positions, two_positions, check_exact=True)
    floats = one.select_dtypes("float").columns
    pd.testing.assert_frame_equal(one.drop(columns=floats), two.drop(columns=floats), check_exact=True)
    # Every draw and every censoring decision is the same; values agree to the last bits (a batch of other
    # positions can change the rounding of a batched product).
    pd.testing.assert_frame_equal(one[floats], two[floats], check_exact=False, rtol=1e-10, atol=0)
    assert (np.isinf(one[floats].to_numpy()) == np.isinf(two[floats].to_numpy())).all()


def test_make_reproduce_with_nproc_measures_the_sweep_first(tmp_path):
    """`make -n reproduce NPROC=2`: the torchrun step after notebook 01 and before 03, with the run's parameters."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("needs make")
    run = f"nproc-dry-{os.getpid()}"
    command = ["make", "-n", "--no-print-directory", "reproduce", "NPROC=2", f"RUN={run}", f"VENV={sys.prefix}",
               f"STAMP={Path(sys.prefix) / '.installed'}"]  # fmt: skip
    try:
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.splitlines()
    finally:
        shutil.rmtree(ROOT / "runs" / run, ignore_errors=True)
    where = {name: next(i for i, line in enumerate(output) if name in line) for name in ("01_sample_positions.ipynb", "torch.distributed.run", "03_direction_sweep.ipynb")}
    assert where["01_sample_positions.ipynb"] < where["torch.distributed.run"] < where["03_direction_sweep.ipynb"]
    torchrun = output[where["torch.distributed.run"]]
    assert "--nproc_per_node 2" in torchrun and f'-p run_name "{run}"' in torchrun and f"-p cache_dir results/{run}/cache" in torchrun
