"""Atomic writes for caches and tables: a uniquely named temporary beside the target, renamed into place.

Every writer in fisherlib that must never leave a half-written file (caches, tables, figures, model
folders) goes through this module, so that

- a temporary has a unique name in the target's folder (two processes, or two notebooks under
  `make -j`, never write the same temporary), starts with a dot and contains `.partial`;
- the finished file gets the permissions an ordinary `open(path, "w")` would give it
  (`0o666 & ~umask`; a folder `0o777 & ~umask`), not the private 0600/0700 of `tempfile`;
- a failed write removes its temporary and leaves the target as it was;
- a write that fails because the device is full raises `DiskFullError`, saying where it was writing and
  how much it needed, whatever the writer's own error was (torch's zip writer, for one, reports a full
  disk as `RuntimeError: [enforce fail at inline_container.cc…] unexpected pos`).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import FisherlibError

__all__ = [
    "DiskFullError",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "make_shared",
    "shared_mode",
    "temporary_directory",
]

_UMASK_LOCK = threading.Lock()
# A write that fails with less than this free on its device is taken for a full disk, whatever the error.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(FisherlibError, OSError):
    """A cache, table or figure could not be written: its device is full (nothing half-written is left)."""


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def disk_full_error(error: BaseException, target: Path, partial: Path, needed: int | None = None) -> DiskFullError | None:
    """Return the DiskFullError that `error` (raised writing `partial` for `target`) stands for, or None.

    A full disk is an `ENOSPC` / `EDQUOT` OSError, or any error while the device has less than
    `NEARLY_FULL_BYTES` free (checked before the partial write is removed, so the space it took counts).
    """
    free = _free_bytes(target.parent)
    if not (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
        if isinstance(error, DiskFullError) or free is None or free >= NEARLY_FULL_BYTES:
            return None
    written = _size(partial)
    amount = f"it needed {needed:,} bytes" if needed is not None else f"it had written {written:,} bytes when the device filled"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on the device holding {target.parent} while writing {target.name}: {amount}, "
        f"{'an unknown amount' if free is None else f'{free:,} bytes'} free. Nothing half-written was left; "
        "free some space (or point cache_dir / results_root at another disk) and rerun: it resumes from what was written.",
    )


def current_umask() -> int:
    """Return the process's umask without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and restore it; the lock keeps fisherlib's own threads apart.
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def shared_mode(directory: bool = False) -> int:
    """Return the mode `open()` (or `os.mkdir` for a folder) would give a new file under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_shared(path: str | os.PathLike) -> None:
    """Give `path` (a file or a folder) the mode an ordinary `open()` / `mkdir()` would have given it."""
    os.chmod(path, shared_mode(directory=Path(path).is_dir()))


def _temporary_name_parts(target: Path) -> tuple[str, str]:
    # Keep the target's suffix last: writers such as savefig pick the format from the extension.
    return f".{target.name}.", f".partial{target.suffix}"


@contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success it gets shared permissions and replaces `path`.

    The temporary exists (empty) when yielded; the caller writes it by name with any writer (`torch.save`,
    `DataFrame.to_parquet`, `Figure.savefig`, ...). On an exception it is removed and `path` is untouched;
    on a full device the exception is a `DiskFullError` (`needed`: the size to report, when known).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_name_parts(target)
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        make_shared(temporary)
        os.replace(temporary, target)
    except BaseException as error:
        full = disk_full_error(error, target, temporary, needed) if isinstance(error, Exception) else None
        temporary.unlink(missing_ok=True)
        if full is not None:
            raise full from error
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically, with the permissions of an ordinary `open()`. Return `path`."""
    with atomic_path(path, needed=len(data)) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (no newline translation), with ordinary permissions. Return `path`."""
    with atomic_path(path, needed=len(text.encode(encoding))) as temporary:
        with open(temporary, "w", encoding=encoding, newline="") as file:
            file.write(text)
    return Path(path)


def temporary_directory(folder: str | os.PathLike, tag: str = "") -> Path:
    """Create and return a uniquely named, shared-permission folder beside `folder` (`.<name>.<tag>XXXX.partial`)."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}", suffix=".partial", dir=target.parent))
    make_shared(staging)
    return staging


@contextmanager
def atomic_directory(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder beside `folder`; on success it is renamed to `folder`.

    When `folder` already exists (another process finished the same entry first) that copy is kept and the
    staging folder is discarded: callers write deterministic content keyed by its inputs. On an exception the
    staging folder is removed.
    """
    target = Path(folder)
    staging = temporary_directory(target)
    try:
        yield staging
    except BaseException as error:
        full = disk_full_error(error, target, staging) if isinstance(error, Exception) else None
        shutil.rmtree(staging, ignore_errors=True)
        if full is not None:
            raise full from error
        raise
    try:
        os.replace(staging, target)  # fails when `folder` exists and is not empty
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
        # another run finished the same entry first: keep its copy
