"""Tests for fisherlib.tiny: a few training steps into a temporary cache (offline, CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fisherlib import tiny
from fisherlib.errors import FisherlibError

STEPS = 8  # the full architecture, only a handful of steps


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.ensure_tiny_model(tmp_path_factory.mktemp("cache"), seed=0, steps=STEPS, progress=False)


def test_folder_loads_with_auto_classes(trained: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForCausalLM.from_pretrained(trained)
    assert model.config.model_type == "gpt_neox"
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert tokenizer.eos_token == tiny.END_OF_TEXT
    text = "def add(a, b):\n    return a + b\n"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == text  # byte-level BPE round-trips exactly
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_training_record(trained: Path):
    record = json.loads((trained / "training.json").read_text())
    assert record["seed"] == 0 and record["steps"] == STEPS
    assert record["config"]["hidden_size"] == tiny.TinyConfig().hidden_size
    for key in ("wall_time_s", "final_train_loss", "heldout_loss", "torch_version"):
        assert key in record
    assert 0 < record["heldout_loss"] < 10


def test_second_call_reuses_the_folder(trained: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(*args, **kwargs):
        raise AssertionError("retrained although a finished folder exists")

    monkeypatch.setattr(tiny, "_train_into", fail)
    started = time.perf_counter()
    again = tiny.ensure_tiny_model(trained.parent, seed=0, steps=STEPS, progress=False)
    assert again == trained
    assert time.perf_counter() - started < 1.0


def test_no_temporary_folders_left(trained: Path):
    assert [path.name for path in trained.parent.iterdir()] == [trained.name]


def test_cache_key_depends_on_seed_and_steps():
    config = tiny.TinyConfig()
    keys = {
        tiny._cache_key(config, seed=0),
        tiny._cache_key(config, seed=1),
        tiny._cache_key(tiny.TinyConfig(steps=STEPS), seed=0),
    }
    assert len(keys) == 3
    assert tiny._cache_key(config, seed=0) == tiny._cache_key(tiny.TinyConfig(), seed=0)


def test_interrupted_training_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def interrupted(folder: Path, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "_train_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.ensure_tiny_model(tmp_path, steps=STEPS, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unfinished_folder_at_final_path_is_reported(tmp_path: Path):
    final = tmp_path / f"tiny-{tiny._cache_key(tiny.TinyConfig(steps=STEPS), seed=0)}"
    final.mkdir()
    with pytest.raises(FisherlibError, match="Delete it"):
        tiny.ensure_tiny_model(tmp_path, steps=STEPS, progress=False)


@pytest.mark.slow
def test_same_seed_gives_identical_weights(trained: Path, tmp_path: Path):
    from safetensors.torch import load_file

    retrained = tiny.ensure_tiny_model(tmp_path, seed=0, steps=STEPS, progress=False)
    assert retrained.name == trained.name and retrained != trained
    assert (retrained / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    first, second = load_file(trained / "model.safetensors"), load_file(retrained / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
