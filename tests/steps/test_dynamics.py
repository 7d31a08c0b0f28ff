"""Tests for fisherlib.steps.dynamics: revisions, context capture and the tables across checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fisherlib.core.errors import FisherlibError
from fisherlib.run.params import StudyParams
from fisherlib.steps import dynamics
from helpers.dynamics import EPS, revision_tables, revisions


@pytest.fixture(scope="module")
def results() -> list[dynamics.RevisionMeasurement]:
    return revisions()


@pytest.fixture(scope="module")
def tables(results) -> dict[str, pd.DataFrame]:
    return revision_tables(results)


def test_revision_step():
    assert dynamics.revision_step("step143000") == 143000
    assert dynamics.revision_step("main") is None
    assert dynamics.revision_step("step12a") is None


def test_revisions_sorted_by_step_and_hub_models_need_a_list():
    params = StudyParams.create(arch="EleutherAI/pythia-1b", revisions=["step8000", "step1000", "step143000"])
    assert dynamics.dynamics_revisions(params) == ["step1000", "step8000", "step143000"]
    with pytest.raises(FisherlibError, match="REVISIONS"):
        dynamics.dynamics_revisions(StudyParams.create(arch="EleutherAI/pythia-1b"))


def test_every_table_has_one_block_per_revision_and_no_nan(tables, results):
    revisions = [r.revision for r in results]
    for name, table in tables.items():
        assert list(dict.fromkeys(table["revision"])) == revisions, name
        assert not table.isna().any().any(), name
    assert tables["dynamics_checkpoints"]["heldout_loss"].tolist() == [5.0, 4.0, 3.0]


def test_sharper_revisions_have_lower_entropy_and_more_near_binary_positions(tables):
    entropy = tables["dynamics_distributions"].query("statistic == 'entropy'")["q50"].to_numpy()
    assert np.all(np.diff(entropy) < 0)
    share = tables["dynamics_rank_one"]["share_near_binary"].to_numpy()
    assert share[-1] > share[0]


def test_rank_one_share_matches_a_direct_count(tables, results):
    positions = results[-1].positions
    p_a, p_b = positions["p_top1"].to_numpy(), positions["p_top2"].to_numpy()
    expected = np.mean((p_a + p_b >= 0.9) & (p_b >= 0.5 * (1 - p_a)))
    assert tables["dynamics_rank_one"]["share_near_binary"].iloc[-1] == pytest.approx(expected)


def test_table1_matches_the_median_of_the_top_eigenvector_rows(tables, results):
    measurements = results[1].measurements
    top = measurements[(measurements["cls"] == "eigvec") & (measurements["eig_rank"] == 1) & np.isclose(measurements["eps"], EPS[0])]
    row = tables["dynamics_table1"].query("revision == 'step100' and curvature == 'F'")
    assert row["median_rho"].iloc[0] == pytest.approx(np.median(top["rho_full"]))


def test_predictor_table_counts_a_missing_prediction_as_a_miss(results):
    result = results[0]
    broken = result.measurements.assign(t_pred=np.inf)
    table = dynamics.predictor_table([dynamics.RevisionMeasurement("step1", 1, result.positions, broken)], EPS[1])
    row = table[table["predictor"] == "closed form (F_k)"].iloc[0]
    assert row["within_50"] == 0.0 and row["n"] > 0


def test_table1_says_what_its_bootstrap_resampled(tables):
    assert set(tables["dynamics_table1"]["resampled"]) == {"document"}


def test_capture_contexts_equals_one_forward_pass_per_context(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from fisherlib.models.loading import load_model

    config = GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                           max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(50)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # the load-time checks need texts of several tokens
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", unk_token="t1")
    tokenizer.save_pretrained(tmp_path)
    model = load_model(tmp_path, device="cpu")
    contexts = [torch.tensor([3, 4, 5, 6, 7]), torch.tensor([8, 9]), torch.tensor([10, 11, 12])]
    h = dynamics.capture_contexts(model, contexts, batch_size=2)
    for i, ids in enumerate(contexts):
        single = model.capture(ids[None], None, [0], [len(ids) - 1])
        torch.testing.assert_close(h[i], single[0], rtol=1e-5, atol=1e-5)
