"""Cache entries that can be verified: written atomically with their checksums, read back only if they match.

A file entry `x.parquet` gets a hidden sidecar `.x.parquet.sha256` (its size and SHA-256), written after
the file; a folder entry holds `.checksums.json` (every file's size and SHA-256), written into the staging
folder before it is renamed into place. Reading an entry checks them first: an entry that is truncated,
altered, missing its checksums (an interrupted write, or an earlier fisherlib) or that fails to parse is
reported in one line ("cache entry … is corrupt …; recomputing it"), removed, and read as absent, so the
caller recomputes it and the tables equal those of a clean run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .atomic import atomic_directory, atomic_path, atomic_write_text

logger = logging.getLogger("fisherlib")
T = TypeVar("T")
FOLDER_CHECKSUMS = ".checksums.json"


def checksum_file(path: str | os.PathLike) -> Path:
    """Return the sidecar holding the checksum of the file entry `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def digest(path: str | os.PathLike) -> dict[str, int | str]:
    """Return `{"size": bytes, "sha256": hex}` of the file at `path`."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return {"size": os.path.getsize(path), "sha256": sha.hexdigest()}


def write_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write the file entry `path` with `write(temporary)` atomically, then its checksum. Return `path`."""
    path = Path(path)
    with atomic_path(path) as partial:
        write(partial)
        stamp = digest(partial)
    atomic_write_text(checksum_file(path), json.dumps(stamp, sort_keys=True) + "\n")
    return path


def read_file(path: str | os.PathLike, read: Callable[[Path], T], discard: bool = True) -> T | None:
    """Return `read(path)` when the file entry exists and verifies; None when it is absent or corrupt.

    A corrupt entry is reported and removed; with `discard=False` (a cache that is not ours to change)
    it is reported and left in place.
    """
    path = Path(path)
    remove = lambda: (path.unlink(missing_ok=True), checksum_file(path).unlink(missing_ok=True))  # noqa: E731
    return _read(path, path.is_file(), _file_problem, read, discard and remove)


def write_folder(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write the folder entry `folder` with `write(staging)`, with the checksums of its files, atomically."""
    folder = Path(folder)
    with atomic_directory(folder) as staging:
        write(staging)
        stamps = {str(p.relative_to(staging)): digest(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        (staging / FOLDER_CHECKSUMS).write_text(json.dumps(stamps, indent=1, sort_keys=True) + "\n")
    return folder


def read_folder(folder: str | os.PathLike, read: Callable[[Path], T], discard: bool = True) -> T | None:
    """Return `read(folder)` when the folder entry exists and verifies; None when it is absent or corrupt (as `read_file`)."""
    folder = Path(folder)
    return _read(folder, folder.is_dir(), _folder_problem, read, discard and (lambda: shutil.rmtree(folder, ignore_errors=True)))


def _read(entry: Path, exists: bool, problem_of, read: Callable[[Path], T], remove) -> T | None:
    if not exists:
        return None
    problem = problem_of(entry)
    if problem is None:
        try:
            return read(entry)
        except Exception as error:  # noqa: BLE001 - any reader's failure on a verified entry is still a bad entry
            problem = f"{type(error).__name__}: {error}"
    _discard(entry, problem, remove)
    return None


def _file_problem(path: Path) -> str | None:
    try:
        expected = json.loads(checksum_file(path).read_text())
    except (OSError, ValueError):
        return "it has no checksum (an interrupted write, or one by an earlier fisherlib)"
    return _mismatch(path, expected)


def _folder_problem(folder: Path) -> str | None:
    try:
        expected = json.loads((folder / FOLDER_CHECKSUMS).read_text())
    except (OSError, ValueError):
        return "it has no checksums (an interrupted write, or one by an earlier fisherlib)"
    for name, stamp in expected.items():
        problem = _mismatch(folder / name, stamp)
        if problem:
            return f"{name}: {problem}"
    return None


def _mismatch(path: Path, expected: dict) -> str | None:
    if not path.is_file():
        return "a file is missing"
    size = path.stat().st_size
    if size != expected.get("size"):
        return f"{size} bytes where {expected.get('size')} were written"
    if digest(path)["sha256"] != expected.get("sha256"):
        return "its content changed since it was written"
    return None


def _discard(path: Path, problem: str, remove: Callable[[], object] | bool) -> None:
    if not remove:
        logger.warning("cache entry %s is corrupt (%s); not using it (read-only here)", path, problem)
        return
    logger.warning("cache entry %s is corrupt (%s); recomputing it", path, problem)
    remove()
