"""The published notebooks are byte-stable on one machine, and a rerun reproduces the committed one.

`make reproduce` of notebook 01 on the embedded default, in a copy of the repository (as test_make_runs),
once from an empty cache and once from a warm one, publishes `results/tiny/notebooks/01_sample_positions.ipynb`
and its tables and figure byte for byte the same both times. Against the committed copy, which another
machine made, the comparison is `make verify`'s: the same words and verdicts, numbers within tolerance
(another CPU rounds the forward pass differently in its last bits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fisherlib.report.verify import compare_notebook, compare_table

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_sample_positions"
COMMITTED = ROOT / "results" / "tiny" / "notebooks" / f"{NOTEBOOK}.ipynb"

pytestmark = [pytest.mark.notebooks, pytest.mark.integration, pytest.mark.slow]


def _make_variable(name: str) -> str:
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(f"{name} ?="))
    return line.split("?=", 1)[1].strip()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = Path(sys.prefix)
    if shutil.which("make") is None or not (venv / ".installed").is_file():
        pytest.skip("needs make and the environment `make venv` builds (its .installed stamp)")
    if not COMMITTED.is_file():
        pytest.skip(f"{COMMITTED.relative_to(ROOT)} is not committed")
    root = tmp_path_factory.mktemp("repo")
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("fisherlib", "tools", "params"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    shutil.copy2(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb", root / "notebooks")
    (root / "models").symlink_to(ROOT / "models")
    (root / ".torch-spec").write_text(f"{_make_variable('TORCH')} --index-url {_make_variable('TORCH_INDEX')}\n")
    (root / ".installed").touch()
    return root


def _reproduce(root: Path) -> str:
    command = ["make", "--no-print-directory", "reproduce", f"VENV={sys.prefix}", f"STAMP={root / '.installed'}",
               f"TORCH_SPEC={root / '.torch-spec'}"]  # fmt: skip
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


PUBLISHED = ["notebooks/01_sample_positions.ipynb", "model_card.csv", "sample_strata.csv", "sample_summary.csv",
             "sample_strata.md", "sample_summary.md", "model_card.md"]  # fmt: skip
FIGURE = "figures/tiny/sample_entropy_by_stratum.png"


def _published(root: Path) -> dict[str, bytes]:
    return {name: (root / "results" / "tiny" / name).read_bytes() for name in PUBLISHED} | {FIGURE: (root / FIGURE).read_bytes()}


def _reproduces_the_committed_run(root: Path) -> None:
    run = root / "results" / "tiny"
    for name in PUBLISHED:
        if name.endswith(".csv"):
            moved = compare_table(Path(name).stem, run / name, COMMITTED.parents[1] / name)
        elif name.endswith(".ipynb"):
            moved = compare_notebook(run / name, COMMITTED)
        else:
            continue
        assert not moved.problems, f"{name} does not reproduce the committed copy: {moved.problems}"


def test_a_rerun_publishes_the_same_bytes_and_reproduces_the_committed_notebook(sandbox: Path):
    output = _reproduce(sandbox)  # an empty cache: the positions are captured
    assert "notebooks in results/tiny/notebooks/" in output, output
    cold = _published(sandbox)
    _reproduces_the_committed_run(sandbox)
    text = COMMITTED.read_text()
    assert "/runs/" not in text and str(ROOT) not in text and '"duration"' not in text and "widget-view" not in text

    (sandbox / "notebooks" / f"{NOTEBOOK}.ipynb").touch()  # a warm cache: the positions are loaded
    assert NOTEBOOK in _reproduce(sandbox)
    warm = _published(sandbox)
    assert [name for name in cold if cold[name] != warm[name]] == [], "a warm rerun published different bytes from the cold run"
    assert json.loads((sandbox / "results" / "tiny" / "run.json").read_text())["complete"] is True
