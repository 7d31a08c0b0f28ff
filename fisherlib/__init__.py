"""fisherlib: the Fisher pullback of a language model's next-token distribution and its KL boundaries.

Layout (imports point down the list; `tests/test_layout.py` enforces it):

- `core`: the Fisher pullback, closed forms, exact boundary, bisection, direction sweep (tensors only);
- `io`: atomic writes, tables on disk, progress bars, cache locations;
- `data`: corpora and the rank-stratified sample of positions;
- `models`: loading, the LM-head capture, the embedded model `tiny`;
- `layers`: the metric pulled back to any layer (prefix engine, JVP velocities, layer boundaries);
- `steps`: one module per study step (notebooks 02-10) and their shared statistics;
- `report`: figures, computed findings, the claims ledger, `make paper`;
- `run`: the notebooks' glue (parameters, cached inputs and measurements, outputs, the CLI).

Importing the package is cheap: names resolve to their modules on first use, so `import fisherlib`
does not import transformers or datasets. The modules of the flat layout before subpackages
(`fisherlib.fisher`, `fisherlib.sampling`, …) still import, as aliases of their new homes
(`docs/api.md` lists where each moved).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the core (fisherlib.core)
    "fisher_pullback": "core.fisher",
    "fisher_eigh": "core.fisher",
    "curvature": "core.fisher",
    "cumulants": "core.fisher",
    "effective_rank": "core.fisher",
    "predicted_boundary": "core.fisher",
    "cumulant_boundary": "core.fisher",
    "top_k_distribution": "core.fisher",
    "entropy": "core.fisher",
    "kl_along_line": "core.boundary",
    "empirical_boundary": "core.boundary",
    "direction_sweep": "steps.sweep",
    # models and data
    "load_model": "models.loading",
    "LoadedModel": "models.loading",
    "REGISTRY": "models.loading",
    "find_lm_head": "models.surgery",
    "capture_final_residual": "models.surgery",
    "load_corpus": "data.corpora",
    "Document": "data.corpora",
    "ensure_tiny_model": "models.tiny",
    "sample_positions": "data.sampling",
    "PositionSample": "data.sampling",
    "measure_boundaries": "steps.sweep",
    # the layer study (notebooks 08-09): the Fisher metric pulled back to the residual stream at any layer
    "layer_residuals": "layers.pullback",
    "layer_velocities": "layers.pullback",
    "layer_boundary": "layers.pullback",
    "layer_fisher_eigh": "layers.pullback",
    "layer_curvature": "layers.pullback",
    "Prefilled": "layers.passes",
    # a KL budget for activation steering (notebook 11)
    "steering_budget": "steps.steering",
    "steering_scale": "steps.steering",
    "SteeringScale": "steps.steering",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

SUBPACKAGES = ("core", "io", "data", "models", "layers", "steps", "report", "run")

# The flat layout's modules -> their homes. Modules split in two (study, measure) and analysis (a
# re-export of the step modules) have no single home: docs/api.md says where their names went.
MOVED_MODULES = {
    "errors": "core.errors", "_checks": "core.checks", "fisher": "core.fisher", "boundary": "core.boundary",
    "bisection": "core.bisection", "directions": "core.directions",
    "atomic": "io.atomic", "progress": "io.progress", "paths": "io.locations",
    "corpora": "data.corpora", "sampling": "data.sampling",
    "model_surgery": "models.surgery", "tiny": "models.tiny",
    "layer_engine": "layers.engine",
    "stats": "steps.stats", "geometry": "steps.geometry", "exactness": "steps.exactness",
    "direction_classes": "steps.direction_classes", "calibration": "steps.calibration",
    "stratifiers": "steps.stratifiers", "stable_regions": "steps.stable_regions", "layer_study": "steps.layer_study",
    "plateaus": "steps.plateaus", "dynamics": "steps.dynamics",
    "findings": "report.findings", "claims": "report.claims", "claim_rules": "report.claim_rules",
    "reference": "report.reference", "paper": "report.paper", "plots": "report.plots",
    "layer_plots": "report.layer_plots", "dynamics_report": "report.dynamics_report",
    "cli": "run.cli", "parameter_docs": "run.parameter_docs",
}  # fmt: skip
# Every alias the finder serves: the moved modules, and short names for a step researchers import directly.
MODULE_ALIASES = {**MOVED_MODULES, "steering": "steps.steering"}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import `fisherlib.<old name>` as the module it moved to: the same module object, not a copy."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in MODULE_ALIASES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MODULE_ALIASES[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the alias's spec on the real module: give it back its own.
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in MODULE_ALIASES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fisherlib' has no attribute {name!r}")


def __dir__():
    return __all__ + list(SUBPACKAGES)
