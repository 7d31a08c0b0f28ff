"""The study's inputs: corpora and the rank-stratified sample of positions.

`corpora` reads the study's corpora (hub datasets, files, the standard library's code and docs for the
embedded default) into `Document`s; `sampling` draws positions from them, stratified by the effective
rank of the Fisher pullback, and captures each position's residual `h`. It may import `core` and `io`;
the model it samples from is passed in, so it imports nothing of `models`.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {}, __path__)
