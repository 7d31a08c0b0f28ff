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

Importing the package is cheap: names and subpackages resolve on first use (through `fisherlib._lazy`,
as in every subpackage but the self-contained `core`), so `import fisherlib` does not import
transformers or datasets.
"""

from __future__ import annotations

from ._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __path__)
