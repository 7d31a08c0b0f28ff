"""Models: loading (the registry, hub ids, local folders), the LM-head capture, the embedded model `tiny`.

`loading` turns a name into a `LoadedModel` with a clear error for every way that can fail (offline,
gated, not a causal LM, a non-linear head); `surgery` finds the LM head and captures the residual it
reads (tuned-lens' model surgery: it fails loudly on an unknown architecture); `tiny` trains and ships
the embedded default. It may import `core`, `io` and `data` (tiny trains on the standard-library corpus).
The loading names (`load_model`, `LoadedModel`, `REGISTRY`, …) resolve here too, as before the layout.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "load_model": "loading", "LoadedModel": "loading", "REGISTRY": "loading", "resolve_model_id": "loading",
        "run_with_oom_backoff": "loading", "TINY_MODEL_ID": "loading",
        "find_lm_head": "surgery", "capture_final_residual": "surgery", "LMHead": "surgery",
        "ensure_tiny_model": "tiny",
    },
    __path__,
)  # fmt: skip
