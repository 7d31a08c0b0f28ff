"""load_model on a real trained model folder: karpathy's stories260K (../shared/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fisherlib.models.loading import LoadedModel, load_model

pytestmark = pytest.mark.integration

# Top-5 next tokens after "Once upon a time, there was a little", from the fixture's SOURCE.md.
TOP5_AFTER_LITTLE = [("▁g", 0.640), ("▁b", 0.275), ("▁do", 0.022), ("▁c", 0.012), ("▁f", 0.010)]


@pytest.fixture(scope="module")
def stories_dir(shared_dir: Path) -> Path:
    """Return the Hugging Face folder of stories260K."""
    folder = shared_dir / "fixtures" / "models" / "stories260K" / "hf"
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="module")
def stories(stories_dir: Path) -> LoadedModel:
    """Return stories260K loaded on the CPU."""
    return load_model(stories_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(stories_dir: Path) -> dict:
    """Return the fixture's greedy-decoding reference."""
    return json.loads((stories_dir.parent / "reference_outputs.json").read_text())


def test_loads_with_a_faithful_head(stories: LoadedModel) -> None:
    assert stories.logits_check_error < 1e-4
    assert stories.head.weight.shape == (512, 64) and stories.head.bias is None
    assert stories.revision is None and stories.dtype == torch.float32


def test_greedy_decoding_matches_reference(stories: LoadedModel, reference: dict) -> None:
    input_ids = stories.tokenizer(reference["prompt"], return_tensors="pt")["input_ids"]
    assert input_ids[0].tolist() == reference["prompt_ids"]
    new_tokens = len(reference["greedy_ids"]) - len(reference["prompt_ids"])
    with torch.inference_mode():
        output = stories.model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens, do_sample=False
        )
    assert output[0].tolist() == reference["greedy_ids"]


def test_top5_next_tokens_match_source(stories: LoadedModel) -> None:
    batch = stories.tokenizer(["Once upon a time, there was a little"], return_tensors="pt")
    last = int(batch["attention_mask"].sum()) - 1
    h = stories.capture(batch["input_ids"], batch["attention_mask"], [0], [last])
    probabilities = torch.softmax(stories.logits(h)[0], dim=-1)
    top = torch.topk(probabilities, k=5)
    tokens = stories.tokenizer.convert_ids_to_tokens(top.indices.tolist())
    assert tokens == [token for token, _ in TOP5_AFTER_LITTLE]
    for probability, (_, expected) in zip(top.values.tolist(), TOP5_AFTER_LITTLE):
        assert probability == pytest.approx(expected, abs=0.005)
