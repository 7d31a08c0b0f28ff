"""What a reader sees: figures, the computed findings, the claims ledger and its rules, the write-up's numbers, `make paper`.

`plots`, `geometry_plots`, `layer_plots` and `dynamics_report` draw the figures; `findings` writes every
sentence a notebook states about its run, from its tables; `claims` (with `claim_rules`) decides the
write-up's claims on a run's tables; `reference` holds the write-up's numbers; `paper` assembles
`results/summary.md` across runs. It may import `core`, `io` and `steps`, never `run`.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {}, __path__)
