"""A full disk: one DiskFullError saying where and how much, nothing half-written, and a rerun that completes."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from fisherlib.io import atomic
from fisherlib.io.atomic import DiskFullError, atomic_directory, atomic_path, atomic_write_text
from fisherlib.io.cache import read_file, write_file


def _no_partials(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial" in p.name]


def test_enospc_from_a_writer_names_the_device_and_the_size(tmp_path, monkeypatch):
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".partial" in str(file):
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    monkeypatch.setattr("builtins.open", full_open)
    target = tmp_path / "table.csv"
    with pytest.raises(DiskFullError) as caught:
        atomic_write_text(target, "x" * 5000)
    message = str(caught.value)
    assert f"no space left on the device holding {tmp_path} while writing table.csv" in message
    assert "it needed 5,000 bytes" in message and "bytes free" in message and "rerun" in message
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert not target.exists() and _no_partials(tmp_path)


def test_a_writer_that_hides_enospc_is_still_a_full_disk(tmp_path, monkeypatch):
    """torch.save on a full device raises RuntimeError ("unexpected pos"): the free space tells."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage(600_000, 599_000, 1_000))

    def write(path):
        path.write_bytes(b"\0" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 257216 vs 257168")

    with pytest.raises(DiskFullError, match=r"while writing head.pt: it had written 4,096 bytes when the device filled, 1,000 bytes free"):
        write_file(tmp_path / "head.pt", write)
    assert not (tmp_path / "head.pt").exists() and _no_partials(tmp_path)
    with pytest.raises(DiskFullError, match="while writing positions-seed0"):
        with atomic_directory(tmp_path / "positions-seed0") as staging:
            write(staging / "tensors.pt")
    assert not (tmp_path / "positions-seed0").exists() and _no_partials(tmp_path)


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        with atomic_path(tmp_path / "x.csv"):
            raise ValueError("a bug")
    assert _no_partials(tmp_path)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 600 KB tmpfs (as in the issue), where this machine lets the test mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_real_full_filesystem_then_a_rerun_with_space(small_tmpfs):
    tensors = {"h": torch.arange(200_000, dtype=torch.float32)}  # 800 KB: more than the device holds
    target = small_tmpfs / "cache" / "head.pt"
    with pytest.raises(DiskFullError, match=r"no space left on the device holding .*cache while writing head.pt"):
        write_file(target, lambda file: torch.save(tensors, file))
    assert not target.exists() and _no_partials(target.parent)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    write_file(target, lambda file: torch.save(tensors, file))
    torch.testing.assert_close(read_file(target, lambda file: torch.load(file, weights_only=True))["h"], tensors["h"])
