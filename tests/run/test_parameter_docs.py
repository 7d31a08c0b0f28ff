"""docs/parameters.md documents every notebook parameter, from StudyParams, through tools/readme_parameters.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fisherlib.run import parameter_docs
from fisherlib.run.parameter_docs import BEGIN, END, _class_comments, parameters_markdown, readme_block, refresh_readme
from fisherlib.run.params import StudyParams

ROOT = Path(__file__).resolve().parents[2]


PARAMETERS_DOC = ROOT / "docs" / "parameters.md"


def test_parameter_block_is_current():
    block = readme_block(PARAMETERS_DOC.read_text(encoding="utf-8"))
    assert block == parameters_markdown(), "docs/parameters.md is out of date: run `python tools/readme_parameters.py --write`"


def test_every_field_has_a_row_with_its_default():
    table = parameters_markdown()
    defaults = StudyParams()
    for field in dataclasses.fields(StudyParams):
        row = next((line for line in table.splitlines() if line.startswith(f"| `{field.name}` |")), None)
        assert row is not None, field.name
        assert row.split(" | ")[2].strip() != "", field.name  # a description
        if isinstance(getattr(defaults, field.name), (int, float)) and not isinstance(getattr(defaults, field.name), bool):
            assert f"`{getattr(defaults, field.name)!r}`" in row


def test_docs_explain_how_to_set_them_and_the_readme_links_them():
    doc = PARAMETERS_DOC.read_text(encoding="utf-8")
    section = doc[: doc.index(BEGIN)]
    assert "-p " in section and "-y " in section and "params/" in section and "make reproduce" in section
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Notebook parameters") : readme.index("### Opening the notebooks in Jupyter")]
    assert "(docs/parameters.md)" in section and "-p " in section and BEGIN not in readme


def test_a_field_without_description_fails_loudly(monkeypatch: pytest.MonkeyPatch):
    trailing, _ = _class_comments(StudyParams)
    uncommented = next(f.name for f in dataclasses.fields(StudyParams) if f.name not in trailing)
    descriptions = dict(parameter_docs.DESCRIPTIONS)
    del descriptions[uncommented]
    monkeypatch.setattr(parameter_docs, "DESCRIPTIONS", descriptions)
    with pytest.raises(ValueError, match=uncommented):
        parameters_markdown()


def test_a_description_of_a_removed_field_fails(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(parameter_docs, "DESCRIPTIONS", {**parameter_docs.DESCRIPTIONS, "no_such_field": "gone"})
    with pytest.raises(ValueError, match="no_such_field"):
        parameters_markdown()


@dataclass
class _Example:
    plain: int = 1
    commented: str = ""  # empty: the default | with a pipe and <angle> brackets
    # --- a section (notebook 99) ---
    later: list = dataclasses.field(default_factory=list)  # after the section


def test_comments_and_sections_are_read_from_the_source():
    trailing, sections = _class_comments(_Example)
    assert trailing == {
        "commented": "empty: the default | with a pipe and <angle> brackets",
        "later": "after the section",
    }
    assert sections == {"later": "a section (notebook 99)"}
    assert parameter_docs._cell(trailing["commented"]) == "empty: the default \\| with a pipe and &lt;angle&gt; brackets"
    assert parameter_docs._cell("`<run>/` and <run>") == "`<run>/` and &lt;run&gt;"


def test_write_refreshes_a_stale_readme(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\n| old |\n{END}\n\nafter\n", encoding="utf-8")
    assert refresh_readme(readme) is True
    text = readme.read_text(encoding="utf-8")
    assert readme_block(text) == parameters_markdown()
    assert text.startswith("# x\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert refresh_readme(readme) is False


def test_tool_checks_and_prints(tmp_path: Path):
    tool = ROOT / "tools" / "readme_parameters.py"
    printed = subprocess.run([sys.executable, str(tool)], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert printed.stdout == parameters_markdown()
    stale = tmp_path / "README.md"
    stale.write_text(f"{BEGIN}\n{END}\n", encoding="utf-8")
    check = subprocess.run([sys.executable, str(tool), "--check", "--readme", str(stale)], capture_output=True, text=True)
    assert check.returncode == 1 and "--write" in check.stderr
    subprocess.run([sys.executable, str(tool), "--write", "--readme", str(stale)], check=True, capture_output=True)
    assert subprocess.run([sys.executable, str(tool), "--check", "--readme", str(stale)]).returncode == 0


# --- each notebook's parameters cell -------------------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_reads_are_found_directly_through_properties_and_through_fisherlib():
    from fisherlib.run.parameter_docs import notebook_reads

    assert notebook_reads("x = params.plateau_jump\ny = params.seed_list") == {"plateau_jump", "seeds", "seed"}
    # run_sweep reads its cache key (the sample's parameters and the sweep's) and, through load_sample, more.
    source = "from fisherlib.run.measurements import run_sweep\nrun_sweep(params, 0)"
    assert {"n_positions", "eps_grid", "n_random", "n_control", "divergence", "cache_dir"} <= notebook_reads(source)
    assert "plateau_jump" not in notebook_reads(source)
    assert notebook_reads("params.as_dict()\nStudyParams.create(**vars())") == set()  # recording and validating are not reads


def test_a_notebook_shows_its_identity_and_what_it_reads(tmp_path):
    from fisherlib.run.parameter_docs import notebook_cell_names
    from fisherlib.run.params import OUTPUT_LOCATION_FIELDS, RUN_IDENTITY

    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "seed = 0\n", "outputs": [], "execution_count": None},
        {"cell_type": "code", "metadata": {}, "source": ["%matplotlib inline\n", "print(params.plateau_jump, params.results_dir)"],
         "outputs": [], "execution_count": None},
    ]  # fmt: skip
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    names = notebook_cell_names(path)
    assert set(names) == set(RUN_IDENTITY) | {"plateau_jump"}  # results_dir reads results_root and run_name; locations stay out
    assert not set(names) & set(OUTPUT_LOCATION_FIELDS)
    assert names == [f.name for f in dataclasses.fields(StudyParams) if f.name in names]


def test_a_notebook_accepts_another_notebooks_parameter_but_not_an_unknown_name():
    """`make reproduce` passes every notebook every parameter: papermill injects them after the notebook's own cell."""
    from fisherlib.core.errors import ParameterError
    from fisherlib.run.parameter_docs import parameters_cell

    steering = next(p for p in NOTEBOOKS if p.name.startswith("11_"))
    own = parameters_cell(steering)
    assert "layer_positions" not in own and "plateau_jump" not in own
    injected = '# Parameters\nlayer_positions = 5\nplateau_jump = 3.0\nrun_name = "r"\n'
    params = StudyParams.from_namespace({"In": ["", own, injected], "layer_positions": 5, "plateau_jump": 3.0, "run_name": "r"})
    assert (params.layer_positions, params.plateau_jump, params.run_name, params.steer_texts) == (5, 3.0, "r", 8)
    with pytest.raises(ParameterError, match="did you mean layer_positions"):
        StudyParams.from_namespace({"In": ["", own, "# Parameters\nlayer_postions = 5\n"], "layer_postions": 5})
