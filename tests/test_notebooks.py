"""The notebooks: one parameters cell each, committed without outputs, and a smoke run of all seven.

The smoke run executes 01→07 through papermill with small parameters on the embedded default (`tiny`)
and on the stories260K fixture (the local tier), then checks every expected table and figure.
"""

from __future__ import annotations

from fisherlib.io.tables import read_table_file

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from fisherlib.data.corpora import fixture_corpora
from fisherlib.report.paper import EXPECTED_FIGURES, EXPECTED_TABLES
from fisherlib.run.params import StudyParams

ROOT = Path(__file__).resolve().parents[1]
ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The smoke runs execute, in order, every notebook whose outputs fisherlib.paper lists.
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.stem in EXPECTED_TABLES]
SMOKE = dict(
    n_positions=40, eps_grid=[0.01, 0.1, 1.0], small_eps=0.01, large_eps=1.0, n_random=4, n_control=2,
    max_context=96, pool_factor=2, batch_size=8, layer_positions=8, layer_eig=1, layer_per_class=2, plateau_pairs=6,
    plateau_steps=21,
)  # fmt: skip


def _parameters(path: Path) -> dict:
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}"
    tree = ast.parse(cells[0].source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_every_listed_notebook_exists_in_order():
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED_TABLES)
    assert set(EXPECTED_FIGURES) <= set(EXPECTED_TABLES)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_declares_every_study_parameter(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} holds outputs: clear them"
    declared = _parameters(path)
    assert set(declared) == {f for f in StudyParams.__dataclass_fields__}
    StudyParams.create(**declared)  # the defaults themselves are valid


@pytest.mark.parametrize("params_file", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_only_set_declared_parameters(params_file):
    values = yaml.safe_load(params_file.read_text()) or {}
    declared = set.intersection(*(set(_parameters(p)) for p in ALL_NOTEBOOKS))
    assert set(values) <= declared, f"{params_file.name} sets undeclared {set(values) - declared}"
    StudyParams.create(**values)


def _run_all(tmp_path: Path, **parameters) -> Path:
    import papermill

    parameters = SMOKE | parameters | dict(results_root=str(tmp_path / "results"), figures_root=str(tmp_path / "figures"))
    (tmp_path / "runs").mkdir()
    for path in NOTEBOOKS:
        papermill.execute_notebook(
            str(path), str(tmp_path / "runs" / path.name), parameters=parameters, kernel_name="python3",
            cwd=str(ROOT / "notebooks"), progress_bar=False,
        )  # fmt: skip
    return tmp_path


def _check_outputs(root: Path, run: str) -> None:
    for notebook, names in EXPECTED_TABLES.items():
        for name in names:
            csv = root / "results" / run / f"{name}.csv"
            assert csv.is_file(), f"{notebook} did not write {csv}"
            table = read_table_file(csv)
            assert len(table) > 0, f"{csv} is empty"
            assert not table.select_dtypes("number").isna().any().any(), f"{csv} holds NaN"
            assert "parameters:" in (root / "results" / run / f"{name}.md").read_text()
    for notebook, names in EXPECTED_FIGURES.items():
        for name in names:
            for suffix in (".png", ".pdf"):
                figure = root / "figures" / run / f"{name}{suffix}"
                assert figure.is_file() and figure.stat().st_size > 1000, f"{notebook} did not write {figure}"


@pytest.mark.notebooks
@pytest.mark.slow
def test_all_notebooks_run_on_the_embedded_default(tmp_path):
    root = _run_all(tmp_path, arch="tiny", run_name="tiny-smoke")
    _check_outputs(root, "tiny-smoke")


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.integration
def test_all_notebooks_run_on_the_local_tier(tmp_path, shared_dir):
    model = shared_dir / "fixtures" / "models" / "stories260K" / "hf"
    # stories260K is 64 wide: the control directions need top_k below that.
    root = _run_all(tmp_path, arch=str(model), run_name="stories-smoke", corpora=fixture_corpora(shared_dir), top_k=32)
    _check_outputs(root, "stories-smoke")
    manifest = json.loads(next((root / "results" / "stories-smoke" / "cache").glob("positions-*/manifest.json")).read_text())
    assert manifest["model_id"].endswith("stories260K/hf")
