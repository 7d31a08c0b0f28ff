"""Notebook 06's statistics (`fisherlib.steps.calibration`): grouped CV, both spaces, and every predictor on one denominator."""

import numpy as np
import pandas as pd
import pytest

from fisherlib.steps import calibration as cal
from fisherlib.steps import stats as st
from helpers.sweeps import no_nan


def _calibration_frame(t_pred, t_emp, seeds, positions, cls="random", eps=1.0):
    columns = {"seed": seeds, "position": positions, "cls": cls, "eps": eps, "t_pred": t_pred, "t_emp": t_emp}
    frame = pd.DataFrame(columns)
    return frame.assign(t_pred_full=frame["t_pred"], t_cumulant=np.inf)


def test_folds_never_split_a_position_and_seeds_are_separate_groups():
    n_pos, per = 40, 6
    frame = _calibration_frame(1.0, 1.0, np.repeat([0, 1], n_pos * per), np.tile(np.repeat(np.arange(n_pos), per), 2))
    folds = cal.position_folds(frame, n_splits=5, seed=0)
    frame["fold"] = folds
    assert (frame.groupby(["seed", "position"])["fold"].nunique() == 1).all()
    by_seed = frame.groupby(["position", "seed"])["fold"].first().unstack()
    assert (by_seed[0] != by_seed[1]).any()  # (0, p) and (1, p) are different positions
    np.testing.assert_array_equal(folds, cal.position_folds(frame, n_splits=5, seed=0))


def test_grouped_cross_validation_does_not_leak_positions():
    # Positions sit at their own t_pred; log t_emp climbs with t_pred in random steps of 0 or 3, and all
    # rows of a position share both. A calibrator that saw a position in training reproduces its t_emp
    # exactly; one that did not can only interpolate between its neighbours, wrong by 1.5 in log
    # wherever the two steps around the position differ.
    rng = np.random.default_rng(0)
    n_pos, per = 300, 5
    log_t_emp = np.cumsum(rng.choice([0.0, 3.0], n_pos))
    t_pred = np.repeat(np.exp(np.arange(n_pos) / 10), per)
    t_emp = np.repeat(np.exp(log_t_emp), per)
    frame = _calibration_frame(t_pred, t_emp, 0, np.repeat(np.arange(n_pos), per))
    grouped = cal.calibrate_isotonic_cv(frame, classes=("random",), per_class=False, spaces="log")
    calibrated = grouped[(grouped.cls == "all") & (grouped.method == "calibrated_pooled")].within_50.iloc[0]
    # The same fit with folds over rows instead of positions: leaking makes it near perfect.
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import KFold

    leaked = np.empty(len(frame))
    for train, test in KFold(5, shuffle=True, random_state=0).split(frame):
        model = IsotonicRegression(out_of_bounds="clip").fit(np.log(t_pred[train]), np.log(t_emp[train]))
        leaked[test] = np.exp(model.predict(np.log(t_pred[test])))
    assert np.mean(np.abs(leaked / t_emp - 1) <= 0.5) > 0.95
    assert calibrated < 0.75


def test_calibration_removes_a_known_monotone_bias_and_counts_dropped_rows():
    rng = np.random.default_rng(1)
    n_pos, per = 100, 8
    t_pred = rng.lognormal(size=n_pos * per)
    t_emp = 0.5 * t_pred * rng.lognormal(sigma=0.1, size=t_pred.size)
    frame = _calibration_frame(t_pred, t_emp, 0, np.repeat(np.arange(n_pos), per))
    frame["cls"] = np.where(np.arange(len(frame)) % 2, "random", "structured")
    frame.loc[[3, 10, 11], "t_emp"] = np.inf
    table = cal.calibrate_isotonic_cv(frame, eps=1.0, classes=("random", "structured"))
    everything = table[table.cls == "all"].set_index("method")
    assert everything.loc["raw", "within_50"] < 0.1
    assert everything.loc["calibrated_pooled", "within_50"] > 0.95
    assert everything.loc["calibrated_per_class", "within_50"] >= everything.loc["raw", "within_50"]
    assert (everything.dropped == 3).all() and (everything.n == len(frame) - 3).all()
    assert table[table.cls == "random"].dropped.iloc[0] == 2  # rows 11 and 3 are odd
    curve = cal.isotonic_curve(frame, 1.0, classes=("random", "structured"))
    assert set(curve.cls) == {"all", "random", "structured"}
    assert (np.diff(curve[curve.cls == "all"].t_cal) >= 0).all()
    no_nan(table)


def test_calibration_on_a_sweep(sweep):
    _, measurements = sweep
    table = cal.calibrate_isotonic_cv(measurements, n_splits=4)
    assert set(table.method) == {"raw", "calibrated_pooled", "calibrated_per_class"}
    assert set(table.cls) == {"all", *st.PREDICTED_CLASSES}
    assert (table.n > 0).all()
    no_nan(table)


def test_document_folds_keep_documents_together():
    frame = _calibration_frame(1.0, 1.0, 0, np.arange(60))
    frame["domain"], frame["doc_id"] = "d", np.arange(60) // 4
    folds = cal.unit_folds(frame, n_splits=5, seed=0, unit="document")
    assert (pd.Series(folds).groupby(frame["doc_id"]).nunique() == 1).all()
    with pytest.raises(ValueError, match="documents cannot be split"):
        cal.unit_folds(frame.assign(doc_id=frame["doc_id"] % 3), n_splits=5, unit="document")


def test_linear_and_log_space_differ_and_are_labelled():
    # t_emp = t_pred² spans 4 decades: a linear fit is dominated by the long boundaries, a log fit is not.
    rng = np.random.default_rng(5)
    t_pred = np.exp(rng.uniform(-2, 2, 2000))
    t_emp = t_pred**2 * rng.lognormal(sigma=0.2, size=t_pred.size)
    frame = _calibration_frame(t_pred, t_emp, 0, np.repeat(np.arange(400), 5))
    table = cal.calibrate_isotonic_cv(frame, classes=("random",), spaces=("linear", "log"))
    rows = table[table.cls == "all"].set_index(["method", "space"])["within_50"]
    assert set(table.space) == {"none", "linear", "log"}
    assert rows[("calibrated_pooled", "log")] > 0.9
    assert rows[("calibrated_pooled", "linear")] != rows[("calibrated_pooled", "log")]
    headline = cal.headline(table, 1.0, "log")
    assert set(headline.space) == {"none", "log"}
    with pytest.raises(ValueError):
        cal.calibrate_isotonic_cv(frame, classes=("random",), spaces="cubic")


def test_predictor_comparison_scores_every_predictor_on_the_same_rows(sweep):  # noqa: F811
    positions, measurements = sweep
    measurements = st.attach_documents(measurements, positions).copy()
    at = measurements.index[measurements.eps == 1.0]
    measurements.loc[at[:30], "t_cumulant"] = np.inf
    measurements.loc[at[30:33], "t_emp"] = np.inf
    table = cal.predictor_comparison(measurements, eps=1.0, n_splits=4, unit="document")
    assert set(table.predictor) == {"t_pred", "t_pred_full", "t_quartic", *cal.CALIBRATED}
    for _, group in table.groupby(["eps", "cls"]):
        assert group.n.nunique() == 1 and group.dropped.nunique() == 1
    everything = table[table.cls == "all"].set_index("predictor")
    assert everything.loc["t_quartic", "n_fallback"] > 0 and everything.loc["t_quartic", "dropped"] == 3
    # The pooled calibrator here equals calibrate_isotonic_cv's on the same rows and folds.
    same = cal.calibrate_isotonic_cv(measurements, eps=1.0, n_splits=4, spaces="linear", unit="document")
    pooled = same[(same.cls == "all") & (same.method == "calibrated_pooled")].within_50.iloc[0]
    assert everything.loc["iso_pooled_linear", "within_50"] == pytest.approx(pooled)
    assert set(table.resampled) == {"document"}
    no_nan(table)
