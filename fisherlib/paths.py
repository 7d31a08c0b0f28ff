"""Where fisherlib keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Return the user cache folder (`$FISHERLIB_CACHE`, else `$XDG_CACHE_HOME/fisherlib`, else `~/.cache/fisherlib`)."""
    if os.environ.get("FISHERLIB_CACHE"):
        return Path(os.environ["FISHERLIB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fisherlib"
