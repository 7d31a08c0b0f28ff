"""The study's steps: one module per measurement or analysis, named for what it measures, each used by one notebook.

`geometry` (02: spectra, the rank-one regime), `sweep` (03: the direction sweep's measurement table),
`exactness` (04: Table 1, the closed forms), `direction_classes` (05: Table 2), `calibration` (06:
isotonic calibration), `stratifiers` and `stable_regions` (07), `layer_study` (08), `plateaus` (09),
`dynamics` (10), `steering` (11: a KL budget for activation steering) and `generated_steering` (11: the
same budget on greedily generated text, as the iso-KL calibration measures it), and `stats`, the statistics
they share (groups, bootstrap, scores). Functions take tensors, tables and models and return tables; they
may import `core`, `io`, `data`, `models` and `layers`, never `report` or `run` (finding inputs and caching outputs is `run`'s job).
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {}, __path__)
