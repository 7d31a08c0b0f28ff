"""Rank-stratified sampling: deterministic, balanced, cached atomically, statistics against brute force."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fisherlib as fl
import fisherlib.data.sampling as sampling
from fisherlib.core.errors import ParameterError
from fisherlib.data.corpora import Document, fixture_corpora
from fisherlib.data.sampling import N_STRATA, position_statistics
from helpers.models import WORDS, make_model, make_tokenizer


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt_neox")
    make_model("gpt_neox").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return fl.load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(0)
    specs = []
    for domain in ("alpha", "beta"):
        path = folder / f"{domain}.jsonl"
        lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=60))}) for _ in range(12)]
        path.write_text("\n".join(lines) + "\n")
        specs.append(f"{domain}={path}")
    return specs


def _sample(model, corpora, **kwargs):
    options = dict(n_positions=40, seed=0, top_k=8, min_prefix=4, max_context=48, pool_factor=3, progress=False)
    return fl.sample_positions(model, corpora, **(options | kwargs))


def test_same_seed_same_sample_other_seed_other_sample(small_model, corpora):
    first, second = _sample(small_model, corpora), _sample(small_model, corpora)
    pd.testing.assert_frame_equal(first.table, second.table)
    assert torch.equal(first.h, second.h)
    other = _sample(small_model, corpora, seed=1)
    assert not first.table[["doc_id", "index"]].equals(other.table[["doc_id", "index"]])


def test_equal_shares_per_domain_and_effective_rank_quintile(small_model, corpora):
    sample = _sample(small_model, corpora)
    counts = sample.table.groupby(["domain", "stratum"]).size()
    assert len(counts) == 2 * N_STRATA
    assert (counts == 40 // (2 * N_STRATA)).all()
    assert sample.table["index"].min() >= 4
    assert len(sample) == 40 and sample.h.shape == (40, small_model.head.hidden_size)


def test_h_is_the_models_residual_at_the_recorded_index(small_model, corpora):
    sample = _sample(small_model, corpora)
    row = sample.table.iloc[3]
    text = next(d.text for name in corpora for d in fl.load_corpus(name, 100) if d.doc_id == row.doc_id)
    ids = small_model.tokenizer(text, truncation=True, max_length=48)["input_ids"]
    assert ids[row["index"]] == row.token
    logits = small_model.model(torch.tensor([ids[: row["index"] + 1]])).logits[0, -1]
    torch.testing.assert_close(small_model.logits(sample.h[3:4])[0], logits, atol=1e-4, rtol=1e-4)


def test_statistics_against_dense_matrices():
    g = torch.Generator().manual_seed(0)
    W, b, h = torch.randn(50, 10, generator=g), torch.randn(50, generator=g), 2 * torch.randn(6, 10, generator=g)
    stats = position_statistics(W, b, h, top_k=6)
    p = torch.softmax(h.double() @ W.double().T + b.double(), -1)
    F = fl.fisher_pullback(W, p)
    F_k = fl.fisher_pullback(W, p, top_k=6)
    lam = torch.linalg.eigvalsh(F_k).clamp_min(0)
    torch.testing.assert_close(stats["trace_f"], torch.diagonal(F, dim1=1, dim2=2).sum(-1))
    torch.testing.assert_close(stats["trace_fk"], lam.sum(-1))
    torch.testing.assert_close(stats["eff_rank"], fl.effective_rank(lam), atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(stats["entropy"], -(p * p.log()).sum(-1))
    torch.testing.assert_close(stats["max_prob"], p.max(-1).values)


def test_cache_round_trip_and_no_half_written_entry(small_model, corpora, tmp_path, monkeypatch):
    sample = _sample(small_model, corpora, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["model_id"] == small_model.model_id and "torch" in manifest and "git_commit" in manifest
    monkeypatch.setattr(sampling, "_measure_candidates", lambda *a, **k: pytest.fail("cache was not used"))
    cached = _sample(small_model, corpora, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(cached.table, sample.table)
    assert torch.equal(cached.h, sample.h)
    monkeypatch.undo()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sample(small_model, corpora, cache_dir=tmp_path, n_positions=30)
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # nothing new, no staging left over


def test_a_single_corpus_name_is_one_corpus_not_a_list_of_letters(small_model):
    sample = _sample(small_model, "stdlib-code", n_positions=10)
    assert len(sample) == 10 and sample.table["domain"].nunique() == 1
    assert sample.params["corpora"] == ["stdlib-code"]


def test_loaded_documents_and_paths_are_corpora(small_model, corpora):
    by_name = _sample(small_model, corpora, n_docs=12)
    loaded = [list(fl.load_corpus(spec, 12, seed=0)) for spec in corpora]
    by_documents = _sample(small_model, loaded, n_docs=12)
    pd.testing.assert_frame_equal(by_documents.table, by_name.table)
    assert torch.equal(by_documents.h, by_name.h)
    assert all(label.startswith("documents:") for label in by_documents.params["corpora"])
    # One corpus on its own: load_corpus's iterator, a list of Documents, a path (its stem is the domain).
    path = Path(corpora[0].partition("=")[2])
    for corpus in (fl.load_corpus(corpora[0], 12), loaded[0], path):
        sample = _sample(small_model, corpus, n_positions=10)
        assert len(sample) == 10 and set(sample.table["domain"]) == {"alpha"}


@pytest.mark.parametrize(
    "bad",
    [42, [42], b"stdlib-code", {"alpha": "stdlib-code"}, [Document("a", "0", "x y"), "stdlib-code"]],
    ids=["int", "list-of-int", "bytes", "dict", "documents-and-a-name"],
)
def test_other_corpora_arguments_say_what_is_accepted(small_model, bad):
    with pytest.raises(ParameterError, match="corpus name or file spec .* a path .* an iterable of Documents"):
        _sample(small_model, bad)


@pytest.mark.integration
def test_fixture_model_and_corpora_give_200_positions(shared_dir):
    model = fl.load_model(str(shared_dir / "fixtures/models/stories260K/hf"), device="cpu")
    sample = fl.sample_positions(model, fixture_corpora(shared_dir), 200, seed=0, top_k=32, max_context=128, progress=False)
    assert len(sample) == 200
    counts = sample.table.groupby(["domain", "stratum"]).size()
    assert (counts == 10).all() and set(sample.table.domain) == {"math", "code", "dialogue", "wiki"}
    assert sample.table["max_prob"].min() < 0.3 < 0.9 < sample.table["max_prob"].max()
    assert not sample.table.select_dtypes("number").isna().any().any()


def test_two_loaded_corpora_of_one_domain_are_refused(small_model):
    first = [Document("words", f"x{i}", " ".join(WORDS)) for i in range(4)]
    second = [Document("words", f"y{i}", " ".join(reversed(WORDS))) for i in range(4)]
    from fisherlib.core.errors import FisherlibError

    with pytest.raises(FisherlibError, match="domain 'words'"):
        _sample(small_model, [first, second], n_positions=10)
