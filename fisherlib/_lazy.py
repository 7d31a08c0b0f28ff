"""Lazy attributes for a package: its submodules and the names it re-exports resolve on first use.

So `import fisherlib` (or `fisherlib.models`) imports neither transformers nor pandas until a name that
needs them is touched.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], path) -> tuple[Callable, Callable]:
    """Return `(__getattr__, __dir__)` for `package`: `exports` maps a public name to the submodule defining it."""
    submodules = {info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_")}

    def __getattr__(name: str):
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(exports) | submodules)

    return __getattr__, __dir__
