"""`make reproduce` end to end on notebook 01 in a copy of the repository: a changed input reruns, an
unchanged run does not, a failing run leaves the published results alone, two runs side by side do the
work once, and the terminal gets one line per notebook.

The copy shares this environment (VENV) and the embedded model; its own stamp files keep make from
reinstalling anything.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_sample_positions"
SMOKE = "arch: tiny\nn_positions: 20\ntop_k: 32\nmax_context: 96\nmin_prefix: 8\npool_factor: 2\nbatch_size: 8\n"

pytestmark = [pytest.mark.notebooks, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = Path(sys.prefix)
    if shutil.which("make") is None or not (venv / ".installed").is_file():
        pytest.skip("needs make and the environment `make venv` builds (its .installed stamp)")
    root = tmp_path_factory.mktemp("repo")
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("fisherlib", "tools"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    shutil.copy2(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb", root / "notebooks")
    (root / "params").mkdir()
    (root / "params" / "smoke.yaml").write_text(SMOKE)
    (root / "models").symlink_to(ROOT / "models")
    # Stamps of the shared environment, so make never reinstalls it from the copy.
    (root / ".torch-spec").write_text(f"{_make_variable('TORCH')} --index-url {_make_variable('TORCH_INDEX')}\n")
    (root / ".installed").touch()
    return root


def _make_variable(name: str) -> str:
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(f"{name} ?="))
    return line.split("?=", 1)[1].strip()


def make(root: Path, *args: str, background: bool = False):
    command = [
        "make", "--no-print-directory", "reproduce", "RUN=t", "PARAMS=params/smoke.yaml", f"VENV={sys.prefix}",
        f"STAMP={root / '.installed'}", f"TORCH_SPEC={root / '.torch-spec'}", *args,
    ]  # fmt: skip
    if background:
        return subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def executed(output: str) -> int:
    """How many times the output says notebook 01 ran to the end."""
    return sum(1 for line in output.splitlines() if line.split()[:1] == [NOTEBOOK] and " table" in line)


def published(root: Path) -> dict[str, bytes]:
    folder = root / "results" / "t"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_run_reruns_exactly_when_an_input_changes(sandbox: Path) -> None:
    code, output = make(sandbox)
    assert code == 0, output
    # Quiet: the notebook's line, its progress lines (off a terminal: one per step) and the publish line.
    assert executed(output) == 1 and len(output.splitlines()) <= 6, output
    assert (sandbox / "results" / "t" / "model_card.csv").is_file() and (sandbox / "results" / "t" / "run.json").is_file()
    assert (sandbox / "runs" / "t" / "logs" / f"{NOTEBOOK}.log").stat().st_size > 1000

    code, output = make(sandbox)
    assert code == 0 and executed(output) == 0, output  # nothing changed: nothing reruns

    code, output = make(sandbox, "SEEDS=1", "-n")  # a dry run says what would rerun, and changes nothing
    assert code == 0 and "would rerun" in output and "runs.py notebook" in output, output
    code, output = make(sandbox)
    assert code == 0 and executed(output) == 0, output

    code, output = make(sandbox, "SEEDS=1")
    assert code == 0 and executed(output) == 1, output
    assert "inputs changed (seeds)" in output

    (sandbox / "fisherlib" / "run" / "params.py").touch()  # a library change reruns the notebooks
    code, output = make(sandbox, "SEEDS=1")
    assert code == 0 and executed(output) == 1, output


def test_a_failing_run_leaves_the_published_results_alone(sandbox: Path) -> None:
    code, _ = make(sandbox)
    assert code == 0
    before = published(sandbox)
    small = sandbox / "small.txt"
    small.write_text("def f(x):\n    return x + 1\n")  # far fewer positions than n_positions asks
    code, output = make(sandbox, f"CORPORA=code={small}")
    assert code != 0
    failure = next(line for line in output.splitlines() if "FAILED" in line)
    assert "ParameterError: the corpora gave" in failure and "n_positions=20" in failure
    assert f"runs/t/logs/{NOTEBOOK}.log" in output
    assert "Traceback" not in output and len(output.splitlines()) <= 6, output
    assert published(sandbox) == before  # the failed run's staged model card never reached results/

    (sandbox / "params" / "bad.yaml").write_text(SMOKE.replace("top_k: 32", "top_k: 100000"))
    code, output = make(sandbox, "PARAMS=params/bad.yaml")
    assert code != 0 and "top_k=100000 must be below the vocabulary V=512" in output, output
    assert published(sandbox) == before


def test_two_makes_of_one_run_do_the_work_once(sandbox: Path) -> None:
    assert make(sandbox)[0] == 0
    (sandbox / "notebooks" / f"{NOTEBOOK}.ipynb").touch()
    first, second = make(sandbox, background=True), make(sandbox, background=True)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert sum(executed(output) for output in outputs) == 1, outputs
    waited = [output for output in outputs if "waiting" in output]
    assert all("up to date" in output for output in waited), outputs
