"""Notebook 05's statistics (`fisherlib.steps.direction_classes`): Table 2, its sign pattern and per-position Spearman."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from fisherlib.steps import direction_classes as dc
from fisherlib.steps import stats as st
from helpers.sweeps import no_nan


def test_table2_medians_equal_pandas_groupby(sweep):
    _, measurements = sweep
    table = dc.median_rho_by_class(measurements, 1.0, n_boot=100).set_index("cls")
    at = measurements[measurements.eps == 1.0]
    expected = at.groupby(at.cls.astype(str))["rho"].median()
    for cls in ("structured", "tangent", "random", "eigvec", "control"):
        assert table.loc[cls, "median_rho"] == pytest.approx(expected[cls])
        assert table.loc[cls, "n"] == (at.cls == cls).sum()
    top = at[(at.cls == "eigvec") & (at.eig_rank == 1)]["rho"].median()
    assert table.loc["eigvec rank 1", "median_rho"] == pytest.approx(top)
    assert list(table.index) == list(st.TABLE2_GROUPS)
    no_nan(table.reset_index())


def test_per_position_spearman_equals_scipy(sweep):
    positions, measurements = sweep
    measurements = measurements.copy()
    rows = measurements.index[(measurements.eps == 1.0) & (measurements.cls == "random")][:3]
    measurements.loc[rows, "t_emp"] = np.inf  # censored rows must be dropped and counted
    per_position = dc.per_position_spearman(measurements, positions, 1.0, predictors=("t_pred", "t_pred_full"))
    at = measurements[(measurements.eps == 1.0) & measurements.cls.astype(str).isin(st.PREDICTED_CLASSES)]
    ours = per_position[per_position.predictor == "t_pred"].set_index(["seed", "position"])
    for (seed, position), part in at.groupby(["seed", "position"]):
        finite = part[np.isfinite(part.t_pred) & np.isfinite(part.t_emp)]
        expected = scipy.stats.spearmanr(finite.t_pred, finite.t_emp).statistic
        assert ours.loc[(seed, position), "spearman"] == pytest.approx(expected, abs=1e-12)
        assert ours.loc[(seed, position), "dropped"] == len(part) - len(finite)
    assert ours["dropped"].sum() == 3
    baselines = per_position[per_position.predictor.isin(["entropy", "max_prob", "trace_f"])]
    assert (baselines.spearman == 0).all() and not baselines.defined.any()
    summary = dc.spearman_summary(per_position)
    assert set(summary.seeds) == {"0", "1", "all seeds"}
    assert (summary[summary.predictor == "entropy"]["median"] == 0).all()
    no_nan(summary)


def test_spearman_of_tied_ranks_matches_scipy():
    x, y = [1.0, 1.0, 2.0, 3.0, 3.0, 5.0], [2.0, 1.0, 1.0, 4.0, 5.0, 5.0]
    frame = pd.DataFrame({"seed": 0, "position": 0, "x": x, "y": y})
    result = dc._grouped_spearman(frame, "x", "y", min_directions=3)
    assert result.spearman.iloc[0] == pytest.approx(scipy.stats.spearmanr(frame.x, frame.y).statistic, abs=1e-12)


def test_table2_with_full_f_and_its_sign_pattern(sweep):  # noqa: F811
    positions, measurements = sweep
    with_docs = st.attach_documents(measurements, positions)
    table = dc.median_rho_by_class(with_docs, 1.0, n_boot=100, unit="document", with_full=True).set_index("cls")
    at = measurements[measurements.eps == 1.0]
    expected = at.groupby(at.cls.astype(str))["rho_full"].median()
    for cls in ("structured", "random"):
        assert table.loc[cls, "median_rho_full"] == pytest.approx(expected[cls])
        assert table.loc[cls, "ci_lo_full"] <= table.loc[cls, "median_rho_full"] <= table.loc[cls, "ci_hi_full"]
    assert set(table.resampled) == {"document"}
    made_up = pd.DataFrame({"cls": ["structured", "tangent", "random", "eigvec"], "median_rho": [1.2, 0.9, 0.5, 1.0]})
    pattern = dc.sign_pattern(made_up).set_index("cls")
    assert pattern.agrees.tolist() == [True, False, True, False]  # eigvec exactly at 1 is not below it
    no_nan(table.reset_index())
