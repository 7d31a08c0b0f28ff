"""What reaches the disk and the terminal: atomic writes, tables on disk, progress bars, where caches live.

`atomic` (a file or folder appears whole or not at all), `tables` (a CSV and its Markdown twin, each
recording what made it), `progress` (tqdm bars that a runner can follow from another process) and
`locations` (the user cache folder, the repository root). It may import `fisherlib.core` (its errors)
and nothing else of fisherlib; every other subpackage may use it.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {}, __path__)
