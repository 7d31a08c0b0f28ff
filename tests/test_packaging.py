"""The conda environment and the package metadata name the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    # Lines starting with "-" are pip options (-e, -c, --extra-index-url), not requirements.
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject.toml: {declared - listed}"
    assert any(re.fullmatch(r"-e \.(\[dev\])?", r) for r in pip_section), "environment.yml must install this package itself"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make reproduce" in readme
    assert re.search(r"^make test$", ci, re.MULTILINE)
