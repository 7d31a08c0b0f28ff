"""The metric pulled back through the network: the study at every layer of the residual stream.

`engine` runs the model from a layer on (the prefix's keys and values computed once, copies of the target
token forwarded with a perturbation, forward-mode JVPs); `full_context` does the same with whole-context
passes for models the fast engine cannot run, and `passes` chooses between them once per model; `pullback` builds on it the residuals, the logit
velocities `J_ℓ u`, the exact first crossing `layer_boundary` (its search in `first_crossing`) and the matrix-free
eigenpairs of `G_ℓ = J_ℓᵀ F J_ℓ` (block Krylov in `krylov`); `steering_pass` pushes every position of a text at once (activation steering: velocities,
exact first crossings, the per-token KL of a prompt set). It may import `core` and `io`; the model is passed in (duck-typed `LoadedModel`).
The `pullback` names resolve here too, as `fisherlib.layers.<name>` did before the layout.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {name: "pullback" for name in ("layer_residuals", "layer_velocities", "layer_boundary", "layer_fisher_eigh", "layer_curvature")}
    | {name: "passes" for name in ("Prefilled", "engine_path")}
    | {name: "engine" for name in ("HEAD", "residuals_by_layer", "default_layers", "check_layer", "n_layers")},
    __path__,
)
