"""The conda environment and the package metadata name the same dependencies."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {_name(r) for r in project["dependencies"] + extras["dev"] + extras["notebooks"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    # Lines starting with "-" are pip options (-e, -c, --extra-index-url), not requirements.
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject.toml: {declared - listed}"
    assert "-e .[dev,notebooks]" in pip_section, "environment.yml must install this package itself, with the extras make venv installs"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make reproduce" in readme
    assert re.search(r"^make lint\nmake test$", ci, re.MULTILINE), "CI lints, then tests"


def test_the_notebooks_tools_are_an_extra_that_make_venv_installs():
    """jupyter, papermill and seaborn are the notebooks' (an extra), not the library's; the set-up installs them, and ruff."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    notebooks = {_name(r) for r in project["optional-dependencies"]["notebooks"]}
    assert {"jupyter", "papermill", "seaborn"} <= notebooks and not {"jupyter", "papermill", "seaborn"} & required
    assert "ruff" in {_name(r) for r in project["optional-dependencies"]["dev"]}
    assert re.search(r"^ruff==", (ROOT / "constraints.txt").read_text(), re.MULTILINE), "constraints.txt pins ruff"
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[dev,notebooks]"' in makefile
    assert re.search(r"^lint: .*\n\t.*ruff check .*\n\t.*ruff format --check ", makefile, re.MULTILINE)
