"""fisherlib: the Fisher pullback of a language model's next-token distribution and its KL boundaries.

Importing the package is cheap: names resolve to their modules on first use, so
`import fisherlib` does not import transformers or datasets.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # core math (fisherlib.fisher, fisherlib.boundary, fisherlib.directions)
    "fisher_pullback": "fisher",
    "fisher_eigh": "fisher",
    "curvature": "fisher",
    "cumulants": "fisher",
    "effective_rank": "fisher",
    "predicted_boundary": "fisher",
    "cumulant_boundary": "fisher",
    "top_k_distribution": "fisher",
    "entropy": "fisher",
    "kl_along_line": "boundary",
    "empirical_boundary": "boundary",
    "direction_sweep": "directions",
    # models and data
    "load_model": "models",
    "LoadedModel": "models",
    "REGISTRY": "models",
    "find_lm_head": "model_surgery",
    "capture_final_residual": "model_surgery",
    "load_corpus": "corpora",
    "Document": "corpora",
    "ensure_tiny_model": "tiny",
    "sample_positions": "sampling",
    "PositionSample": "sampling",
    "measure_boundaries": "measure",
    # the layer study (notebooks 08-09): the Fisher metric pulled back to the residual stream at any layer
    "layer_residuals": "layers",
    "layer_velocities": "layers",
    "layer_boundary": "layers",
    "layer_fisher_eigh": "layers",
    "layer_curvature": "layers",
    "Prefilled": "layer_engine",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


_SUBMODULES = {
    "analysis", "boundary", "corpora", "directions", "errors", "fisher", "geometry", "measure", "model_surgery",
    "models", "paper", "plots", "reference", "sampling", "study", "tiny",
    # the study's steps (notebooks 04-07), their shared statistics, the claims ledger and the computed findings
    "stats", "exactness", "direction_classes", "calibration", "stratifiers", "stable_regions", "claims",
    "claim_rules", "findings",
    # the layer study (notebooks 08-09)
    "layers", "layer_engine", "layer_study", "layer_plots", "plateaus",
    # training dynamics (notebook 10)
    "dynamics", "dynamics_report",
    # the brute-force reference boundary; atomic writes, progress reports and the parameter table
    "bisection", "atomic", "progress", "parameter_docs",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"fisherlib.{name}")
    if name in _EXPORTS:
        module = importlib.import_module(f"fisherlib.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fisherlib' has no attribute {name!r}")


def __dir__():
    return __all__
