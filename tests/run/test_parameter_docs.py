"""docs/parameters.md documents every notebook parameter, from StudyParams, through tools/readme_parameters.py."""

from __future__ import annotations

import dataclasses
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
    assert block == parameters_markdown(), (
        "docs/parameters.md is out of date: run `python tools/readme_parameters.py --write`"
    )


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
