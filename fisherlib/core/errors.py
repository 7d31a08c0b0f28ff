"""Exceptions that tell the user what to do next."""


class FisherlibError(Exception):
    """Base class: every error raised on purpose by fisherlib."""


class UnknownArchitectureError(FisherlibError, ValueError):
    """An `arch` that is neither a registry name, a local folder, nor a reachable hub id."""


class HubUnreachableError(FisherlibError, ConnectionError):
    """The Hugging Face hub could not be reached and nothing was cached."""


class GatedModelError(FisherlibError, PermissionError):
    """The hub refused a gated model: accept its licence and authenticate."""


class NotACausalLMError(FisherlibError, ValueError):
    """The model has no causal-LM head (no `get_output_embeddings()`)."""


class MissingWeightsError(FisherlibError, FileNotFoundError):
    """A local model folder without weight files."""


class CorpusError(FisherlibError, ValueError):
    """A corpus name or file that cannot be read."""


class DegenerateInputError(FisherlibError, ValueError):
    """Inputs for which a requested quantity is undefined (say, `top_k >= d` for control directions)."""


class ParameterError(FisherlibError, TypeError):
    """A notebook or CLI parameter of the wrong type or value."""


class InputError(ParameterError, ValueError):
    """An array argument of the wrong type, dtype or shape, holding NaN or inf, or a size such as `top_k` or ε out of range.

    Raised by the core math (`fisher`, `boundary`, `directions`, `measure_boundaries`) before any work
    starts. Both a TypeError and a ValueError, so `except ValueError` still catches it.
    """


class NotApplicable(FisherlibError):
    """An analysis that does not apply to this model or run (a local folder has no training checkpoints).

    Not a failure: the notebook stops with this one sentence as its finding, the claims it decides are
    `not testable` with the reason, and the run still publishes (`tools/runs.py` records it in
    `results/<run>/not_applicable.json`). A genuine error still stops publication.
    """

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the executed notebook reads as a finding, not a crash.
        return [f"Not applicable to this run: {self}"]
