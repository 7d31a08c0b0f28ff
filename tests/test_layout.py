"""The package's layout: every import points down the subpackage order, and the core stays tensors-only.

Imports are read with `ast` (function-level imports included), so a new back-arrow fails here with the
file and line that added it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fisherlib

PACKAGE = Path(fisherlib.__file__).parent
# What each subpackage may import of fisherlib (besides itself and the top-level package's lazy helpers).
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "data": {"core", "io"},
    "models": {"core", "io", "data"},
    "layers": {"core", "io"},
    "steps": {"core", "io", "data", "models", "layers"},
    "report": {"core", "io", "data", "models", "layers", "steps"},
    "run": {"core", "io", "data", "models", "layers", "steps", "report"},
}
# The core is tensors in, tensors out: none of the heavy or tabular libraries.
CORE_FORBIDDEN = {"pandas", "transformers", "datasets", "matplotlib", "seaborn", "sklearn", "accelerate"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Return `(line, absolute module)` for every import in `path` (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # `from ..run import params` and `from ..run.params import X` both import from fisherlib.run.
            found.append((node.lineno, importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module))
    return found


def subpackage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "fisherlib" and len(parts) > 1 and parts[1] in ALLOWED else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_lives_in_a_subpackage():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "_lazy.py"))
    assert not flat, f"modules at fisherlib's top level {flat}: put each in the subpackage of its role"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = path.relative_to(PACKAGE).parts[0]
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name} ({subpackage_of(name)} is not below {own})"
        for line, name in imports_of(path)
        if subpackage_of(name) not in (None, own) and subpackage_of(name) not in ALLOWED[own]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_tables_and_no_models(path):
    heavy = [f"core/{path.name}:{line}: imports {name}" for line, name in imports_of(path) if name.split(".")[0] in CORE_FORBIDDEN]
    assert not heavy, "\n".join(heavy)


def test_the_checker_sees_a_back_arrow(tmp_path, monkeypatch):
    """A module of `core` importing `run` (at function level, relatively) is reported with its line."""
    fake = tmp_path / "fisherlib" / "core"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("import torch\n\n\ndef f():\n    from ..run.params import StudyParams\n    from . import fisher\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "fisherlib")
    assert imports_of(fake / "bad.py") == [(1, "torch"), (5, "fisherlib.run.params"), (6, "fisherlib.core")]
    with pytest.raises(AssertionError, match=r"core/bad.py:5: imports fisherlib.run.params"):
        test_imports_point_down(fake / "bad.py")


def test_core_imports_nothing_of_fisherlib_outside_core():
    """`fisherlib.core` is self-contained: not even the top-level package's lazy helpers (`fisherlib._lazy`)."""
    outside = [
        f"core/{path.name}:{line}: imports {name}"
        for path in sorted((PACKAGE / "core").glob("*.py"))
        for line, name in imports_of(path)
        if name.split(".")[0] == "fisherlib" and name.split(".")[:2] != ["fisherlib", "core"]
    ]
    assert not outside, "\n".join(outside)


def test_every_public_name_imports():
    for name in fisherlib.__all__:
        assert getattr(fisherlib, name) is not None, name
        namespace = {}
        exec(f"from fisherlib import {name}", namespace)
        assert namespace[name] is getattr(fisherlib, name), name
    from fisherlib.layers import layer_boundary
    from fisherlib.models import load_model

    assert load_model is fisherlib.load_model and layer_boundary is fisherlib.layer_boundary


@pytest.mark.parametrize("old", ["sampling", "fisher", "errors", "cli", "steering"])
def test_the_flat_layouts_module_names_are_gone(old):
    """0.1.0 carries no aliases of the modules before the subpackages: `fisherlib.sampling` is `fisherlib.data.sampling`."""
    assert not hasattr(fisherlib, old)
    with pytest.raises(ModuleNotFoundError, match=f"fisherlib.{old}"):
        importlib.import_module(f"fisherlib.{old}")


def test_importing_fisherlib_is_cheap():
    """`import fisherlib` imports neither torch nor transformers (names resolve on first use)."""
    code = "import sys, fisherlib; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'pandas', 'datasets'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_gpu_check_runs_test_files_that_exist():
    """`make gpu-check` names its CUDA test files by path: a move of the tests must move them there too."""
    import re

    root = Path(__file__).resolve().parents[1]
    source = (root / "benchmarks" / "gpu_check.py").read_text()
    named = set(re.findall(r'"(tests/[\w/]+\.py)"', source))
    assert named and all((root / path).is_file() for path in named), sorted(named)
    cuda_tests = {str(path.relative_to(root)) for path in (root / "tests").rglob("test_*.py") if re.search(r"def test_\w*cuda", path.read_text())}
    assert cuda_tests <= named, sorted(cuda_tests - named)


def test_no_test_file_imports_another_and_no_import_path_is_added():
    """Shared helpers live in tests/helpers/ and tests/conftest.py: a test file never imports a test file, and
    neither the tests nor pytest's settings add import paths."""
    import tomllib

    root = PACKAGE.parent
    wrong = []
    for path in sorted((root / "tests").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            wrong += [
                f"{path.relative_to(root)}:{node.lineno}: imports {name}" for name in names if name.split(".")[-1].startswith(("test_", "conftest"))
            ]
        wrong += [f"{path.relative_to(root)}: changes sys.path" for _ in re.finditer(r"sys\.path\.(insert|append)|sys\.path\s*[+=]", source)]
    assert not wrong, "\n".join(wrong)
    settings = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "pythonpath" not in settings
