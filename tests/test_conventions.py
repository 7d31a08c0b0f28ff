"""The conventions of a paper repository: licence, citation, a pinned conda environment, atomic writes."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import threading
from pathlib import Path

import pytest
import tomllib
import yaml

from fisherlib.io.atomic import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
    temporary_directory,
)

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_section() -> list[str]:
    return next(item["pip"] for item in _environment()["dependencies"] if isinstance(item, dict))


def _makefile_variable(name: str) -> str | None:
    match = re.search(rf"^{name}\s*\??=\s*(.+?)\s*$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return match.group(1) if match else None


# --- licence and citation -------------------------------------------------------------------------


def test_license_is_mit_as_pyproject_says():
    assert _pyproject()["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the fisher-boundary authors" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_cff_parses_and_matches_pyproject():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == _pyproject()["version"]
    assert citation["license"] == _pyproject()["license"]
    assert str(citation["date-released"]) == "2026-11-27"
    assert citation["title"] and citation["message"] and citation["abstract"]
    assert citation["authors"] == [{"name": "the fisher-boundary authors"}]
    (reference,) = citation["references"]  # the write-up this repository reproduces
    assert reference["type"] and reference["title"] and reference["authors"]
    import fisherlib

    assert fisherlib.__version__ == _pyproject()["version"]


# --- the conda environment ---------------------------------------------------------------------------


def _recorded_python() -> str | None:
    """Return the Python version recorded beside the committed tables (a run manifest, else models/tiny)."""
    run = ROOT / "results" / "tiny"
    for path in [*sorted(run.glob("manifest*")), run / "run.json"]:
        if not path.is_file():
            continue
        if path.suffix == ".json":
            record = json.loads(path.read_text())
            version = record.get("python") or record.get("python_version")
        else:
            match = re.search(r"python[\"' _-]*(?:version)?[\"' :=|]*(\d+\.\d+\.\d+)", path.read_text(), re.I)
            version = match.group(1) if match else None
        if version:
            return str(version)
    training = ROOT / "models" / "tiny" / "training.json"
    if training.is_file():
        return json.loads(training.read_text()).get("python_version")
    return None


def test_environment_pins_the_python_the_tables_were_made_with():
    pins = [d for d in _environment()["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(pins) == 1, f"environment.yml must name python once, got {pins}"
    match = re.fullmatch(r"python\s*==?\s*(\d+\.\d+(?:\.\d+)?)", pins[0])
    assert match, f"environment.yml must pin python exactly (python=X.Y.Z), got {pins[0]!r}"
    pinned = match.group(1)
    recorded = _recorded_python()
    if recorded:
        assert pinned == recorded, f"environment.yml pins python {pinned}; the committed tables used {recorded}"
    else:
        assert pinned.split(".")[:2] == [str(v) for v in sys.version_info[:2]]


def test_environment_installs_torch_as_the_makefile_does():
    makefile_torch = _makefile_variable("TORCH")
    assert makefile_torch and "==" in makefile_torch, "the Makefile must pin torch (TORCH ?= torch==X.Y.Z)"
    pip = _pip_section()
    torch_lines = [r for r in pip if re.match(r"torch\b", r)]
    assert torch_lines == [makefile_torch], f"environment.yml installs {torch_lines}; the Makefile {makefile_torch}"
    index = _makefile_variable("TORCH_INDEX")
    if index:  # the Makefile's default torch index (the CPU build) is the environment's too
        assert any(r.split() in (["--extra-index-url", index], ["--index-url", index]) for r in pip), pip


def test_environment_uses_the_constraints_and_installs_the_package_and_kernel():
    pip = _pip_section()
    assert "-c constraints.txt" in pip and (ROOT / "constraints.txt").is_file()
    assert "-e .[dev,notebooks]" in pip
    assert any(re.match(r"ipykernel\b", r) for r in pip)
    header = (ROOT / "environment.yml").read_text()
    assert 'ipykernel install --user --name fisher-boundary --display-name "Python (fisher-boundary)"' in header
    assert "VENV=$CONDA_PREFIX" in header
    assert re.search(r"^PY := \$\(VENV\)/bin/python$", (ROOT / "Makefile").read_text(), re.MULTILINE)


# --- the tiny model's vocabulary, stated once and right ------------------------------------------------


def test_tiny_vocabulary_is_stated_right():
    from fisherlib.models.tiny import TinyConfig

    vocab = json.loads((ROOT / "models" / "tiny" / "config.json").read_text())["vocab_size"]
    assert vocab == TinyConfig().vocab_size
    tokenizer = json.loads((ROOT / "models" / "tiny" / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "BPE" and tokenizer["pre_tokenizer"]["type"] == "ByteLevel"
    for path in ("README.md", "fisherlib/models/tiny.py", "params/tiny.yaml"):
        text = (ROOT / path).read_text()
        assert f"V = {vocab}" in text or f"BPE with {vocab} tokens" in text, path
        assert "byte-level BPE" in text, path


# --- atomic writes ----------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # unchanged by the read


def test_cache_file_gets_the_mode_of_an_ordinary_file(tmp_path: Path, umask):
    with open(tmp_path / "table.csv", "w") as handle:
        handle.write("a,b\n")
    atomic_write_bytes(tmp_path / "cache.pt", b"\x00\x01")
    atomic_write_text(tmp_path / "cache.json", "{}\n")
    with atomic_path(tmp_path / "cache.parquet") as temporary:
        temporary.write_bytes(b"PAR1")
    expected = _mode(tmp_path / "table.csv")
    assert expected == 0o666 & ~umask
    for name in ("cache.pt", "cache.json", "cache.parquet"):
        assert _mode(tmp_path / name) == expected, name
    assert (tmp_path / "cache.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json", "cache.parquet", "cache.pt", "table.csv"]


def test_cache_folder_gets_the_mode_of_an_ordinary_folder(tmp_path: Path, umask):
    (tmp_path / "plain").mkdir()
    with atomic_directory(tmp_path / "entry") as staging:
        (staging / "positions.parquet").write_bytes(b"PAR1")
    assert _mode(tmp_path / "entry") == _mode(tmp_path / "plain") == 0o777 & ~umask
    assert (tmp_path / "entry" / "positions.parquet").read_bytes() == b"PAR1"
    assert _mode(temporary_directory(tmp_path / "model", tag="tmp-")) == 0o777 & ~umask


def test_temporaries_are_unique_hidden_and_keep_the_suffix(tmp_path: Path):
    names = []
    with atomic_path(tmp_path / "figure.png") as first, atomic_path(tmp_path / "figure.png") as second:
        names = [first.name, second.name]
        assert first.parent == second.parent == tmp_path
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert names[0] != names[1]
    assert all(n.startswith(".figure.png.") and n.endswith(".partial.png") for n in names)
    assert (tmp_path / "figure.png").read_bytes() == b"1"  # the last to finish (the outer one) wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_concurrent_writers_never_collide(tmp_path: Path):
    errors = []

    def write(index: int) -> None:
        try:
            for _ in range(20):
                atomic_write_text(tmp_path / "shared.txt", f"{index}\n" * 100)
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    lines = (tmp_path / "shared.txt").read_text().splitlines()
    assert len(lines) == 100 and len(set(lines)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_failed_write_leaves_the_target_and_no_temporary(tmp_path: Path):
    atomic_write_text(tmp_path / "cache.json", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "cache.json") as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "cache.json").read_text() == "old"
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "entry") as staging:
        (staging / "a").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]


def test_atomic_directory_keeps_a_copy_finished_first(tmp_path: Path):
    with atomic_directory(tmp_path / "entry") as staging:
        (staging / "a").write_text("first")
    with atomic_directory(tmp_path / "entry") as staging:
        (staging / "a").write_text("second")
    assert (tmp_path / "entry" / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_the_embedded_model_is_described_from_its_training_record():
    """README's recipe paragraph states what models/tiny/training.json records (retraining must update both)."""
    record = json.loads((ROOT / "models" / "tiny" / "training.json").read_text())
    text = (ROOT / "README.md").read_text()
    assert f"{record['steps']} steps ({record['tokens_seen'] / 1e6:.1f}M tokens)" in text
    by_domain = record["heldout_loss_by_domain"]
    assert (
        f"Held-out loss **{record['heldout_loss']:.2f}** nats per token (code {by_domain['stdlib-code']:.2f}, prose {by_domain['stdlib-docs']:.2f})"
        in text
    )
    checkpoints = [entry["step"] for entry in record["checkpoints"] if entry["step"] != record["steps"]]
    assert "Checkpoints at steps\n" + ", ".join(map(str, checkpoints)) in text or "Checkpoints at steps " + ", ".join(map(str, checkpoints)) in text
    assert f"the final model is `step{record['steps']}`" in text
