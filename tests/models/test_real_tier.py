"""Issue 9 on the sampling path: trunk work, float64 logits read in row chunks, padding rows, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from helpers.models import VOCAB, make_tokenizer
from transformers import AutoModelForCausalLM

import fisherlib.models.loading
import fisherlib.data.sampling
from fisherlib.models.loading import load_model
from fisherlib.data.sampling import position_statistics, sample_positions

WORDS = "once upon a time there was little girl boy named lily tom she he loved to play outside in the park".split()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama_padded")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    with torch.no_grad():
        model.lm_head.weight[len(make_tokenizer()) :] *= 3  # padding rows that would win the top-k
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return load_model(folder, device="cpu")


@pytest.fixture(scope="module")
def uneven_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return a local corpus of 24 documents from 12 to 180 words: uneven prefixes, as real corpora have."""
    path = tmp_path_factory.mktemp("corpus") / "uneven.jsonl"
    lines = []
    for i in range(24):
        n = 12 + (i * 37) % 170
        lines.append(json.dumps({"id": f"doc{i}", "text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))}))
    path.write_text("\n".join(lines) + "\n")
    return f"story={path}"


def test_sampling_runs_about_the_trunk_tokens_it_needs(loaded, uneven_corpus, monkeypatch: pytest.MonkeyPatch):
    counts = dict(run=0, needed=0)
    original = fisherlib.models.loading.capture_final_residual

    def counting(model, input_ids, attention_mask, rows, cols):
        rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
        counts["run"] += input_ids.numel()
        counts["needed"] += sum(int(cols[rows == r].max()) + 1 for r in rows.unique().tolist())
        return original(model, input_ids, attention_mask, rows, cols)

    monkeypatch.setattr(fisherlib.models.loading, "capture_final_residual", counting)
    sample = sample_positions(loaded, [uneven_corpus], 10, max_context=200, batch_size=4, top_k=8, progress=False)
    assert len(sample) == 10
    # Batches cut at their longest context ran 1.9x the tokens needed here; sorted by prefix, 1.16x.
    assert counts["run"] <= 1.25 * counts["needed"], counts
    # h does not depend on how the candidates were batched: recompute a few one at a time.
    for row in range(3):
        ids = sample.context_ids[row] if sample.context_ids is not None else None
        if ids is None:
            pytest.skip("this sample records no context ids")
        h = loaded.capture(ids[None], None, [0], [len(ids) - 1])
        torch.testing.assert_close(h[0], sample.h[row], atol=1e-5, rtol=1e-5)


def test_padding_rows_never_become_token_pair_tokens(loaded, uneven_corpus):
    n_tokens = loaded.head.n_tokens
    assert n_tokens < VOCAB
    sample = sample_positions(loaded, [uneven_corpus], 10, max_context=200, top_k=8, progress=False)
    assert (sample.topk_ids < n_tokens).all()
    assert (sample.table[["top1", "top2"]] < n_tokens).all().all()
    # The padding rows keep their probability in p: here they hold most of it.
    z = sample.h.double() @ loaded.head.weight.double().T
    p = torch.softmax(z, -1)
    assert (p[:, n_tokens:].sum(-1) > 0.5).any()
    torch.testing.assert_close(torch.tensor(sample.table["entropy"].to_numpy()), -(p * p.log()).sum(-1))


def test_position_statistics_reads_w_in_row_chunks(loaded, monkeypatch: pytest.MonkeyPatch):
    W, b = loaded.head.weight, torch.randn(VOCAB)
    h = torch.randn(5, W.shape[1]) * 3
    whole = position_statistics(W, b, h, top_k=6)
    monkeypatch.setattr(fisherlib.data.sampling, "_ROW_CHUNK", 9)
    chunked = position_statistics(W, b, h, top_k=6)
    for name, value in whole.items():
        torch.testing.assert_close(chunked[name], value, rtol=1e-10, atol=1e-12, msg=name)
    z = h.double() @ W.double().T + b.double()
    torch.testing.assert_close(whole["p_top1"], torch.softmax(z, -1).amax(-1), rtol=1e-12, atol=0)


def test_manifest_records_dtype_card_and_corpus_options(loaded, uneven_corpus, tmp_path: Path):
    sample = sample_positions(
        loaded, [uneven_corpus], 5, max_context=200, top_k=8, progress=False, cache_dir=tmp_path,
        corpus_options=dict(strip_calculator=False),
    )  # fmt: skip
    manifest = json.loads(next(tmp_path.glob("positions-*/manifest.json")).read_text())
    assert manifest["dtype"] == "torch.float32" and manifest["model_card"]["dtype"] == "float32"
    assert manifest["model_card"]["padding_rows"] == VOCAB - len(make_tokenizer())
    assert manifest["corpus_options"] == dict(strip_calculator=False, detokenize_wikitext=True, stream_scan=8)
    assert sample.params["corpus_options"]["strip_calculator"] is False
