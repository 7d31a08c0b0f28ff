"""Progress bars that a terminal sees advance even when the work runs inside a notebook kernel.

Inside a kernel that papermill drives, a tqdm bar is a widget or a stream of carriage returns that
reaches the log only when its cell ends, so `make reproduce` used to show "capturing h 0/1600" for
minutes. `progress_bar` is tqdm as usual and, when `$FISHERLIB_PROGRESS` names a file (the notebook
runner `tools/runs.py` sets it), also writes the bar's state there as one JSON line, at most twice a
second, for the runner to print on the terminal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .atomic import atomic_write_text

PROGRESS_ENV = "FISHERLIB_PROGRESS"
_MIN_INTERVAL_S = 0.5


def read_progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """Return the last state a bar reported to `path` (desc, n, total, unit, elapsed_s), else None."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class ReportingBar(tqdm):
    """A tqdm bar that also reports its state to `$FISHERLIB_PROGRESS` when that is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        target = os.environ.get(PROGRESS_ENV)
        self._report_path = Path(target) if target and not self.disable else None
        self._reported_at = 0.0
        self._report(force=True)

    def update(self, n: float | None = 1) -> bool | None:
        displayed = super().update(n)
        self._report()
        return displayed

    def close(self) -> None:
        if not getattr(self, "disable", True):
            self._report(force=True)
        super().close()

    def _report(self, force: bool = False) -> None:
        if self._report_path is None:
            return
        now = time.monotonic()
        if not force and now - self._reported_at < _MIN_INTERVAL_S:
            return
        self._reported_at = now
        # tqdm's own clock (its start_t is time.time(), not monotonic): the seconds since the bar began.
        state = dict(desc=self.desc, n=self.n, total=self.total, unit=self.unit, elapsed_s=round(self._time() - self.start_t, 1))
        try:  # renamed into place: the reader never sees half a line
            atomic_write_text(self._report_path, json.dumps(state))
        except OSError:
            self._report_path = None  # the folder went away: progress is a courtesy, never an error


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False) -> ReportingBar:
    """Return a bar to `update()` by hand: tqdm, plus the report to `$FISHERLIB_PROGRESS`."""
    return ReportingBar(total=total, desc=desc, unit=unit, disable=disable)


def progress(iterable: Iterable, desc: str = "", unit: str = "it", total: int | None = None, disable: bool = False) -> Iterator:
    """Yield from `iterable` with a reporting bar (`total` defaults to `len(iterable)`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with progress_bar(total=total, desc=desc, unit=unit, disable=disable) as bar:
        for item in iterable:
            yield item
            bar.update(1)
