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
from fisherlib.run.measurements import STEERING_TABLES

ROOT = Path(__file__).resolve().parents[2]
# 80 positions: the sweep's batches of 64 give both ranks work; 12 layer-study positions in batches of 8.
SMALL = ["-p", "n_positions", "80", "-p", "eps_grid", "[0.01, 0.1, 1.0]", "-p", "n_random", "4", "-p", "n_control", "2",
         "-p", "max_context", "96", "-p", "pool_factor", "2", "-p", "layer_positions", "12", "-p", "batch_size", "8",
         "-p", "steer_texts", "2", "-p", "steer_tokens", "8", "-y", "revisions: [step16, step4000]"]  # fmt: skip
STEPS = ["sample", "sweep", "layers", "dynamics", "steering"]
# Files that name the run (its cache folder) or a torch archive's record name: not tables.
NOT_TABLES = ("params.json", ".checksums.json")


def _measure(cache: Path, nproc: int, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    command = [*launcher, "-m", "fisherlib.run.cli", "measure", *STEPS, *SMALL, "-p", "cache_dir", str(cache),
               "-p", "results_root", str(cache.parent / "results"), "-p", "run_name", cache.name]  # fmt: skip
    # One thread per process in both runs: a thread count can change the last bit of a reduction.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def _tables(cache: Path) -> dict[str, bytes]:
    """Every cached table and tensor file of a run, by its path in the cache."""
    files = [p for p in cache.rglob("*") if p.is_file() and p.suffix in (".parquet", ".pt", ".json") and not p.name.startswith(".")]
    return {str(p.relative_to(cache)): p.read_bytes() for p in files if p.name not in NOT_TABLES and not p.name.startswith("head-")}


def test_shards_cover_every_position_once():
    rows = np.concatenate([shard_rows(11, rank, 3) for rank in range(3)])
    assert sorted(rows.tolist()) == list(range(11))
    assert shard_path(Path("a/sweep-x.parquet"), 1, 2).name == "sweep-x.shard1of2.parquet"


def test_a_model_spread_over_every_gpu_runs_in_one_process_only(monkeypatch):
    from fisherlib.core.errors import FisherlibError
    from fisherlib.run.distributed import measure
    from fisherlib.run.params import StudyParams

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FisherlibError, match="NPROC=1"):
        measure(StudyParams.create(device="auto"), ["sweep"])


def test_device_auto_loads_the_model_through_accelerate():
    from fisherlib.run.inputs import load_model_for
    from fisherlib.run.params import StudyParams

    loaded = load_model_for(StudyParams.create(arch="tiny", device="auto"))
    assert loaded.device_map is not None  # placed by accelerate (here all on the CPU)


@pytest.mark.integration
@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_tables_byte_for_byte_and_a_dead_rank_resumes(tmp_path):
    single = _measure(tmp_path / "one", 1)
    assert single.returncode == 0, single.stderr[-2000:]
    # Rank 1 dies in the sweep after measuring, before writing its shard: the job fails, the sample is cached,
    # no sweep is written, rank 0's shard is kept.
    failed = _measure(tmp_path / "two", 2, {"FISHERLIB_FAIL_RANK": "1"})
    assert failed.returncode != 0 and "stopped on purpose" in failed.stderr
    assert list((tmp_path / "two").glob("positions-seed0-*/positions.parquet"))
    assert not [p for p in (tmp_path / "two").glob("sweep-seed0-*.parquet") if ".shard" not in p.name]
    assert [p.name.split(".")[1] for p in (tmp_path / "two").glob("sweep-seed0-*.shard*.parquet")] == ["shard0of2"]
    rerun = _measure(tmp_path / "two", 2)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # Only the missing shard of the sweep is measured (rank 0's 64 positions are read back), then the rest.
    assert "rank 0/2: 64 of 80 positions" in failed.stderr and "rank 0/2: 64 of 80 positions" not in rerun.stderr
    assert "rank 1/2: 16 of 80 positions" in rerun.stderr and "rank 1/2: 4 of 12 layer-study positions" in rerun.stderr
    assert not list((tmp_path / "two").glob("*.shard*"))  # gathered, then the shards removed
    one, two = _tables(tmp_path / "one"), _tables(tmp_path / "two")
    assert sorted(one) == sorted(two)
    assert any(name.startswith("layers-") for name in one) and sum(name.startswith("dynamics-") for name in one) >= 4
    assert sum(name.startswith("steering-") for name in one) == len(STEERING_TABLES)  # notebook 11's tables
    assert [name for name in one if one[name] != two[name]] == []
    # The bytes are the tables': the gathered sweep reads back as the single-process one, row for row.
    [sweep] = [name for name in one if name.startswith("sweep-seed0-")]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / sweep), pd.read_parquet(tmp_path / "two" / sweep), check_exact=True)


def test_make_reproduce_with_nproc_measures_the_sharded_steps_first(tmp_path):
    """`make -n reproduce NPROC=2`: torchrun samples before notebook 01 and measures before 03 and 08; `make dynamics` too."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("needs make")
    run = f"nproc-dry-{os.getpid()}"

    def dry_run(goal: str) -> list[str]:
        command = ["make", "-n", "--no-print-directory", goal, "NPROC=2", f"RUN={run}", f"VENV={sys.prefix}",
                   f"STAMP={Path(sys.prefix) / '.installed'}"]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.splitlines()

    try:
        output, dynamics = dry_run("reproduce"), dry_run("dynamics")
    finally:
        shutil.rmtree(ROOT / "runs" / run, ignore_errors=True)

    def line_of(text: str, lines: list[str]) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    sample, sweep = line_of(" measure sample ", output), line_of(" measure sweep layers steering ", output)
    readers = ("03_direction_sweep", "08_layer_pullback", "11_steering_budget")
    notebooks = {name: line_of(f"notebooks/{name}", output) for name in ("01_sample_positions", *readers)}
    assert sample < notebooks["01_sample_positions"] < sweep < min(notebooks[name] for name in readers)
    for step in (output[sample], output[sweep]):
        assert "torch.distributed.run --nproc_per_node 2" in step
        assert f'-p run_name "{run}"' in step and f"-p cache_dir results/{run}/cache" in step
    assert not [line for line in dynamics if " measure sweep" in line]  # notebook 10 needs the sample only
    [measure_dynamics] = [line for line in dynamics if "torch.distributed.run" in line and " measure dynamics " in line]
    assert dynamics.index(measure_dynamics) < line_of("notebooks/10_training_dynamics", dynamics)


@pytest.mark.parametrize(
    ("variables", "reason"),
    [(["NPROC=0"], "NPROC must be a positive integer, got '0'"), (["NPROC=abc"], "NPROC must be a positive integer, got 'abc'"),
     (["NPROC=2", "DEVICE=auto"], "DEVICE=auto spreads one model over every GPU in one process, so it cannot run with NPROC=2")],
)  # fmt: skip
def test_settings_torchrun_cannot_run_are_refused_before_it_starts(variables, reason):
    import shutil

    if shutil.which("make") is None:
        pytest.skip("needs make")
    command = ["make", "-n", "--no-print-directory", "reproduce", *variables, f"VENV={sys.prefix}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and reason in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_failed_torchrun_step_ends_with_fisherlib_s_reason(tmp_path):
    """The recipe's tail: below torchrun's report, each rank's `error: …` line and where the whole output went."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("needs make")
    makefile = (ROOT / "Makefile").read_text()
    measured = makefile.split("\nMEASURED = ", 1)[1].split("\n\n", 1)[0].split("\n# ", 1)[0]
    (tmp_path / "Makefile").write_text(
        "SHELL := /bin/bash\nRUN_DIR := run\nNPROC := 2\nMEASURED = " + measured + "\n"
        "all:\n\t@mkdir -p run/logs; set -o pipefail; { echo 'error: the reason'; echo 'torchrun: ChildFailedError'; echo 'To enable traceback see: x'; exit 1; } $(MEASURED)\n"
    )  # fmt: skip
    done = subprocess.run(["make", "--no-print-directory"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0
    assert any(line == "error: the reason" for line in lines[-4:]) and "run/logs/measure.log" in "\n".join(lines[-4:])
