"""Tests for fisherlib.models.tiny: a few training steps into a temporary cache (offline, CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fisherlib.models import tiny
from fisherlib.core.errors import FisherlibError

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


def test_checkpoint_schedule_is_log_spaced_and_excludes_the_last_step():
    config = tiny.TinyConfig()
    steps = tiny.checkpoint_steps(config)
    assert len(steps) == config.n_checkpoints and steps[0] == config.first_checkpoint
    assert steps == sorted(steps) and steps[-1] < config.steps
    ratios = [b / a for a, b in zip(steps, steps[1:])]
    assert max(ratios) / min(ratios) < 1.1  # equal ratios up to rounding
    assert tiny.checkpoint_steps(tiny.TinyConfig(steps=8)) == []


@pytest.fixture(scope="module")
def with_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny.TinyConfig(steps=12, first_checkpoint=2, n_checkpoints=3, eval_windows_per_domain=2, log_every=4)
    return tiny.train_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny", config, progress=False)


def test_checkpoints_are_saved_and_recorded(with_checkpoints: Path):
    record = json.loads((with_checkpoints / "training.json").read_text())
    assert [entry["step"] for entry in record["checkpoints"]] == [2, 4, 7, 12]
    assert [entry["step"] for entry in record["loss_curve"]] == [4, 8, 12]
    assert tiny.tiny_revisions(with_checkpoints) == ["step2", "step4", "step7", "step12"]
    assert tiny.tiny_revision_folder("step12", with_checkpoints) == with_checkpoints
    assert tiny.tiny_revision_folder("", with_checkpoints) == with_checkpoints
    with pytest.raises(FisherlibError, match="saved revisions are"):
        tiny.tiny_revision_folder("step5", with_checkpoints)


def test_load_model_reads_a_checkpoint_revision(with_checkpoints: Path, monkeypatch: pytest.MonkeyPatch):
    from safetensors.torch import load_file

    from fisherlib.models.loading import load_model

    monkeypatch.setattr(tiny, "SHIPPED_FOLDER", with_checkpoints)
    early = load_model("tiny", revision="step4", device="cpu")
    final = load_model("tiny", device="cpu")
    assert early.revision == "step4" and final.revision is None
    stored = load_file(with_checkpoints / "checkpoints" / "step4" / "model.safetensors")
    name = "embed_out.weight"
    assert stored[name].dtype == torch.float16
    torch.testing.assert_close(early.head.weight, stored[name].float())
    assert not torch.equal(early.head.weight, final.head.weight)


def test_a_local_folder_has_no_revisions(with_checkpoints: Path):
    from fisherlib.models.loading import load_model

    with pytest.raises(FisherlibError, match="has no revisions"):
        load_model(with_checkpoints, revision="step4")


@pytest.mark.skipif(tiny.shipped_tiny_model() is None, reason="the shipped model models/tiny is absent")
def test_shipped_model_predicts_held_out_text():
    """A few hundred held-out tokens per domain: the shipped weights reach the recorded held-out loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fisherlib.data.corpora import stdlib_split

    folder = tiny.shipped_tiny_model()
    record = json.loads((folder / "training.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    losses = []
    for kind in ("code", "docs"):
        _, heldout = stdlib_split(kind)
        text = "".join(document.text for document in heldout[:3])
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :256]
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    assert record["heldout_loss"] <= 3.0
    # 512 tokens are a noisy estimate of the recorded loss; an untrained model would give ln 512 = 6.2.
    assert sum(losses) / 2 < record["heldout_loss"] + 0.6
