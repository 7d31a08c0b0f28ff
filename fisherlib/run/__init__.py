"""The notebooks' glue: parameters, a run's inputs and caches, where outputs go, the command line.

`params` (`StudyParams`, validated, and where a run's files go), `inputs` (the run's model, sample and
LM head, loaded once and cached), `measurements` (each measurement step from the parameters, cached by
key, resumable), `outputs` (tables, figures and the claims ledger of a run), `cli` (`fisherlib …`) and
`parameter_docs` (the README's parameter table). The top of the import graph: it may import every other
subpackage, and none of them imports it. The make runner, `tools/runs.py`, stays outside the package:
make calls it with the system Python before the environment exists.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {}, __path__)
