"""The committed executed notebooks are byte-stable: rerunning one leaves `git status` clean.

`make reproduce` of notebook 01 on the embedded default, in a copy of the repository (as test_make_runs),
once from an empty cache and once from a warm one, publishes `results/tiny/notebooks/01_sample_positions.ipynb`
byte for byte as committed, beside the same tables and figure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def _same_as_committed(root: Path) -> None:
    published = root / "results" / "tiny" / "notebooks" / f"{NOTEBOOK}.ipynb"
    assert published.read_bytes() == COMMITTED.read_bytes(), "the rerun published a different notebook: diff it against the committed one"
    for name in ("model_card", "sample_strata", "sample_summary"):
        for suffix in (".csv", ".md"):
            assert (root / "results" / "tiny" / f"{name}{suffix}").read_bytes() == (ROOT / "results" / "tiny" / f"{name}{suffix}").read_bytes()
    figure = "figures/tiny/sample_entropy_by_stratum.png"
    assert (root / figure).read_bytes() == (ROOT / figure).read_bytes()


def test_a_rerun_publishes_the_committed_notebook_byte_for_byte(sandbox: Path):
    output = _reproduce(sandbox)  # an empty cache: the positions are captured
    assert "notebooks in results/tiny/notebooks/" in output, output
    _same_as_committed(sandbox)
    text = COMMITTED.read_text()
    assert "/runs/" not in text and str(ROOT) not in text and '"duration"' not in text and "widget-view" not in text

    (sandbox / "notebooks" / f"{NOTEBOOK}.ipynb").touch()  # a warm cache: the positions are loaded
    assert NOTEBOOK in _reproduce(sandbox)
    _same_as_committed(sandbox)
    assert json.loads((sandbox / "results" / "tiny" / "run.json").read_text())["complete"] is True
