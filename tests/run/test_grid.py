"""Run grids through submitit's local executor: two runs complete, complete runs are skipped, a failed one is resubmitted."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from fisherlib.run.grid import GridRun, grid_runs, submit_grid

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "arch: tiny\nn_positions: 20\ntop_k: 32\nmax_context: 96\nmin_prefix: 8\npool_factor: 2\nbatch_size: 8\n"


def test_grid_names_runs_as_make_reproduce_does():
    runs = grid_runs(["tiny", "EleutherAI/pythia-70m"], ["step1000"], [0, 1], ["PARAMS=p.yaml"])
    assert [r.name for r in runs] == ["tiny-step1000-seed0", "tiny-step1000-seed1", "EleutherAI--pythia-70m-step1000-seed0",
                                      "EleutherAI--pythia-70m-step1000-seed1"]  # fmt: skip
    assert runs[0].command() == ["make", "--no-print-directory", "reproduce", "ARCH=tiny", "RUN=tiny-step1000-seed0",
                                 "REVISION=step1000", "SEEDS=0", "PARAMS=p.yaml"]  # fmt: skip
    assert GridRun("tiny").name == "tiny" and len(grid_runs(["tiny"])) == 1


def test_what_a_job_would_fail_on_is_refused_before_anything_is_submitted(tmp_path, capsys):
    from fisherlib.core.errors import FisherlibError, UnknownArchitectureError
    from fisherlib.run.cli import main
    from fisherlib.run.grid import check_grid

    with pytest.raises(UnknownArchitectureError, match="Unknown architecture 'nosuchmodel'"):
        check_grid(grid_runs(["tiny", "nosuchmodel"]), root=tmp_path)
    with pytest.raises(FisherlibError, match="PARAMS=params/none.yaml: no such parameters file"):
        check_grid(grid_runs(["tiny"], make_args=["PARAMS=params/none.yaml"]), root=tmp_path)
    with pytest.raises(FisherlibError, match="SEEDS must be whole numbers"):
        grid_runs(["tiny"], seeds=["0", "x"])
    check_grid(grid_runs(["tiny", "EleutherAI/pythia-70m"]), root=tmp_path)  # a hub id is checked by its job
    # The command stops with that one line and submits nothing (no runs/grid folder).
    assert main(["grid", "--archs", "nosuchmodel", "--executor", "local"]) == 2
    assert "Unknown architecture 'nosuchmodel'" in capsys.readouterr().err.splitlines()[-1]


def test_a_failed_job_says_its_own_reason(tmp_path):
    from fisherlib.run.grid import job_reason

    log = tmp_path / "job.out"
    log.write_text("  01_sample_positions       3 s  capturing h\n"
                   "  01_sample_positions FAILED after 3 s: UnknownArchitectureError: Unknown architecture 'x'.\n"
                   "                      log: runs/x/logs/01_sample_positions.log\n")  # fmt: skip
    assert job_reason(log) == "01_sample_positions FAILED after 3 s: UnknownArchitectureError: Unknown architecture 'x'."
    assert job_reason(tmp_path / "missing.out") == ""


@pytest.fixture()
def sandbox(tmp_path: Path) -> Path:
    """A copy of the repository with notebook 01 only, sharing this environment (as tests/test_make_runs.py)."""
    venv = Path(sys.prefix)
    if shutil.which("make") is None or not (venv / ".installed").is_file():
        pytest.skip("needs make and the environment `make venv` builds (its .installed stamp)")
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for name in ("fisherlib", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "notebooks").mkdir()
    shutil.copy2(ROOT / "notebooks" / "01_sample_positions.ipynb", tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "smoke.yaml").write_text(SMOKE)
    (tmp_path / "models").symlink_to(ROOT / "models")
    # The environment's stamps, the torch line first: a stamp older than it would make make reinstall.
    line = dict(row.split(" ?= ", 1) for row in (ROOT / "Makefile").read_text().splitlines() if row.startswith(("TORCH ?=", "TORCH_INDEX ?=")))
    (tmp_path / ".torch-spec").write_text(f"{line['TORCH']} --index-url {line['TORCH_INDEX']}\n")
    (tmp_path / ".installed").touch()
    return tmp_path


@pytest.mark.integration
@pytest.mark.notebooks
@pytest.mark.slow
def test_a_local_grid_runs_skips_and_resubmits(sandbox: Path):
    from fisherlib.report.paper import find_runs

    make_args = ["PARAMS=params/smoke.yaml", f"VENV={sys.prefix}", f"STAMP={sandbox / '.installed'}", f"TORCH_SPEC={sandbox / '.torch-spec'}"]
    runs = grid_runs(["tiny"], seeds=[0, 1], make_args=make_args) + [GridRun("no-such-model-anywhere", make_args=tuple(make_args))]
    said = []
    status = submit_grid(runs, "local", root=sandbox, time_min=10, say=said.append)
    assert status["tiny-seed0"] == status["tiny-seed1"] == "done", "\n".join(said)
    assert status["no-such-model-anywhere"].startswith("failed: ") and Path(status["no-such-model-anywhere"][8:]).is_file()
    [failed] = [line for line in said if line.startswith("  no-such-model-anywhere: FAILED")]
    assert "Unknown architecture 'no-such-model-anywhere'" in failed  # the job's own reason, not only its log's path
    assert set(find_runs(sandbox / "results")) == {"tiny-seed0", "tiny-seed1"}  # make paper lists both
    again = submit_grid(runs, "local", root=sandbox, time_min=10, say=said.append)
    assert again["tiny-seed0"] == again["tiny-seed1"] == "skipped" and again["no-such-model-anywhere"].startswith("failed")
