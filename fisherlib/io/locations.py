"""Where things are: the user cache folder and the repository root."""

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


def repo_root(start: Path | None = None) -> Path:
    """Return the repository root (the folder holding this project's pyproject.toml), else the cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "fisherlib").is_dir():
            return folder
    return here
