"""Verified cache entries: a truncated, altered or unchecked entry is reported in one line and recomputed."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from fisherlib.io.cache import FOLDER_CHECKSUMS, checksum_file, read_file, read_folder, write_file, write_folder

FRAME = pd.DataFrame({"position": range(50), "t_emp": [0.5 * i for i in range(50)]})


def _write_frame(path):
    return write_file(path, lambda file: FRAME.to_parquet(file, index=False))


def test_an_entry_reads_back_and_an_absent_one_is_none(tmp_path):
    path = _write_frame(tmp_path / "sweep.parquet")
    assert json.loads(checksum_file(path).read_text())["size"] == path.stat().st_size
    pd.testing.assert_frame_equal(read_file(path, pd.read_parquet), FRAME)
    assert read_file(tmp_path / "other.parquet", pd.read_parquet) is None


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), "bytes where"),  # truncated: today ArrowInvalid
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\0"), "content changed"),  # same size, altered
        (lambda p: checksum_file(p).unlink(), "no checksum"),  # interrupted before its checksum
    ],
    ids=["truncated", "altered", "unchecked"],
)
def test_a_damaged_entry_is_reported_in_one_line_removed_and_read_as_absent(tmp_path, caplog, damage, reason):
    path = _write_frame(tmp_path / "sweep.parquet")
    damage(path)
    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        assert read_file(path, pd.read_parquet) is None
    [record] = caplog.records
    assert record.getMessage().startswith(f"cache entry {path} is corrupt (") and reason in record.getMessage()
    assert record.getMessage().endswith("; recomputing it") and "\n" not in record.getMessage()
    assert not path.exists() and not checksum_file(path).exists()
    _write_frame(path)  # recomputed: the same content as a clean write
    pd.testing.assert_frame_equal(read_file(path, pd.read_parquet), FRAME)


def test_a_reader_that_fails_on_a_verified_entry_counts_as_corrupt(tmp_path, caplog):
    path = write_file(tmp_path / "head.pt", lambda file: file.write_bytes(b"not a torch file"))
    import torch

    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        assert read_file(path, lambda file: torch.load(file, weights_only=True)) is None
    assert "is corrupt (UnpicklingError" in caplog.text or "is corrupt (" in caplog.text
    assert not path.exists()


def test_folder_entries_carry_every_file_checksum(tmp_path, caplog):
    def write(staging):
        FRAME.to_parquet(staging / "positions.parquet", index=False)
        (staging / "manifest.json").write_text("{}\n")

    folder = write_folder(tmp_path / "positions-seed0", write)
    assert set(json.loads((folder / FOLDER_CHECKSUMS).read_text())) == {"positions.parquet", "manifest.json"}
    pd.testing.assert_frame_equal(read_folder(folder, lambda f: pd.read_parquet(f / "positions.parquet")), FRAME)
    (folder / "positions.parquet").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        assert read_folder(folder, lambda f: pd.read_parquet(f / "positions.parquet")) is None
    assert "positions.parquet: 0 bytes where" in caplog.text and not folder.exists()
