"""Notebook 04's statistics (`fisherlib.steps.exactness`) against hand-computed values on synthetic sweeps."""

import numpy as np
import pytest

from fisherlib.steps import exactness as ex
from fisherlib.steps import stats as st
from helpers.sweeps import no_nan


def test_table1_per_seed_medians_and_their_mean(sweep):
    _, measurements = sweep
    table = ex.top_eigvec_exactness(measurements, 0.01, n_boot=200)
    top = measurements[(measurements.cls == "eigvec") & (measurements.eig_rank == 1) & (measurements.eps == 0.01)]
    expected = top.groupby("seed")["rho"].median()
    per_seed = table[table.seeds != "all seeds"].set_index("seeds")["median_rho"]
    np.testing.assert_allclose(per_seed.to_numpy(), expected.to_numpy())
    overall = table[table.seeds == "all seeds"].iloc[0]
    assert overall.median_rho == pytest.approx(expected.mean())
    assert (overall.seed_min, overall.seed_max) == (expected.min(), expected.max())
    assert overall.n == len(top) and overall.n_positions == 48  # both signs pooled
    assert (table.ci_lo <= table.median_rho).all() and (table.median_rho <= table.ci_hi).all()
    pooled = ex.top_eigvec_exactness(measurements, 0.01, by_seed=False, n_boot=200)
    assert pooled.median_rho.iloc[0] == pytest.approx(top["rho"].median())
    plus = ex.top_eigvec_exactness(measurements, 0.01, by_seed=False, sign=1, n_boot=200)
    assert plus.n.iloc[0] == len(top) // 2
    no_nan(table)


def test_rho_by_eig_rank_and_eps_are_group_medians(sweep):
    _, measurements = sweep
    by_rank = ex.rho_by_eig_rank(measurements, 0.1, n_boot=100)
    eig = measurements[(measurements.cls == "eigvec") & (measurements.eps == 0.1)]
    np.testing.assert_allclose(by_rank.median_rho, eig.groupby("eig_rank")["rho"].median().loc[by_rank.eig_rank])
    by_eps = ex.rho_by_eps(measurements, cls="random", n_boot=100)
    random = measurements[measurements.cls == "random"]
    np.testing.assert_allclose(by_eps.median_rho, random.groupby("eps")["rho"].median().to_numpy())
    no_nan(by_rank)
    no_nan(by_eps)


def test_topk_rho_splits_into_taylor_and_truncation_parts(sweep):
    _, measurements = sweep
    table = ex.rho_topk_vs_full(measurements)
    assert ((table.truncation_share >= 0) & (table.truncation_share <= 1)).all()
    assert (table.dropped == 0).all()
    finite = measurements[np.isfinite(measurements.rho)]
    np.testing.assert_allclose(finite.rho / finite.rho_full, finite.curv_topk / finite.curv_full, rtol=1e-9)
    no_nan(table)


def test_cumulant_sign_law_and_opposite_signs(sweep):
    _, measurements = sweep
    summary = ex.cumulant_summary(measurements, eps=0.01)
    top = summary.set_index("cls").loc["eigvec rank 1"]
    assert top.sign_agreement > 0.9 and top.opposite_sides > 0.9
    assert (summary.median_abs_dev_quartic < summary.median_abs_dev).all()
    accuracy = ex.predictor_accuracy(measurements, eps=0.01).set_index(["cls", "predictor"])
    error = accuracy["median_abs_rel_error"]
    assert error[("structured", "t_quartic")] < error[("structured", "t_pred_full")]
    no_nan(summary)


def test_table1_resamples_documents_when_asked(sweep):  # noqa: F811
    positions, measurements = sweep
    with_docs = st.attach_documents(measurements, positions)
    by_position = ex.top_eigvec_exactness(with_docs, 0.01, n_boot=200, unit="position")
    by_document = ex.top_eigvec_exactness(with_docs, 0.01, n_boot=200, unit="document")
    assert (by_document.median_rho == by_position.median_rho).all()  # the point estimate does not depend on the unit
    assert set(by_document.resampled) == {"document"} and set(by_position.resampled) == {"position"}
    assert by_document.n_units.tolist() == [8, 8, 16] and by_position.n_units.tolist() == [24, 24, 48]
    by_rank = ex.rho_by_eig_rank(with_docs, 0.01, n_boot=100, unit="document")
    assert set(by_rank.resampled) == {"document"} and (by_rank.n_units == 8).all()
    no_nan(by_document)


def test_quartic_fallback_and_one_denominator(sweep):  # noqa: F811
    _, measurements = sweep
    frame = measurements[measurements.eps == 1.0].copy()
    frame.loc[frame.index[:40], "t_cumulant"] = np.inf  # no positive root: falls back to t_pred_full
    frame.loc[frame.index[40:45], "t_emp"] = np.inf  # censored: dropped for every predictor
    t_quartic, fell_back = ex.quartic_with_fallback(frame)
    assert fell_back[:40].all() and np.array_equal(t_quartic[:40], frame["t_pred_full"].to_numpy()[:40])
    accuracy = ex.predictor_accuracy(frame)
    for _, group in accuracy.groupby(["eps", "cls"]):
        assert group["n"].nunique() == 1 and group["dropped"].nunique() == 1  # the same rows for every predictor
    pooled = accuracy[(accuracy.cls == "eigvec") | (accuracy.cls == "random")]
    assert pooled[pooled.predictor == "t_quartic"]["n_fallback"].sum() > 0
    assert (accuracy[accuracy.predictor != "t_quartic"]["n_fallback"] == 0).all()
    assert accuracy["dropped"].sum() > 0
    no_nan(accuracy)
