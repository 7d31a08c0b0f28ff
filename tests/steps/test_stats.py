"""Shared statistics (`fisherlib.steps.stats`): the cluster bootstrap, resampling units and scoring."""

import math

import numpy as np
import pandas as pd
import pytest

from fisherlib.steps import stats as st


def test_bootstrap_ci_covers_the_median_and_repeats_per_seed():
    values = np.random.default_rng(3).lognormal(size=301)
    median, lo, hi = st.bootstrap_median_ci(values, n_boot=500, seed=7)
    assert median == np.median(values)
    assert lo <= median <= hi and lo < hi
    assert st.bootstrap_median_ci(values, n_boot=500, seed=7) == (median, lo, hi)
    assert st.bootstrap_median_ci(values, n_boot=500, seed=8) != (median, lo, hi)


def test_cluster_bootstrap_equals_explicit_resampling():
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(9), rng.integers(1, 5, 9))
    values = rng.normal(size=codes.size)
    values[[2, 5]] = np.inf  # censored values rank above every finite one
    replicates = st.bootstrap_medians(values, groups=codes, n_boot=50, seed=4)
    draws = np.random.default_rng(4).integers(0, 9, size=(50, 9))
    expected = [np.median(np.concatenate([values[codes == g] for g in row])) for row in draws]
    np.testing.assert_array_equal(replicates, expected)


def test_weighted_medians_match_expanded_samples():
    rng = np.random.default_rng(1)
    for trial in range(100):
        n = int(rng.integers(1, 60))
        n_groups = int(rng.integers(1, n + 1))
        codes = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n - n_groups)])
        values = np.round(rng.normal(size=n), 1)  # ties
        if trial % 3 == 0:
            values[rng.random(n) < 0.3] = np.inf
        order = np.argsort(values, kind="stable")
        counts = rng.integers(0, 4, size=(6, n_groups))
        counts[:, 0] += 1
        got = st.weighted_medians(values[order], codes[order], counts)
        expected = [np.median(np.repeat(values[order], c[codes[order]])) for c in counts]
        np.testing.assert_array_equal(got, expected)


def test_percentile_interval_with_infinite_replicates_has_no_nan():
    lo, hi = st.percentile_interval([1.0, 2.0, np.inf, np.inf, np.inf], level=0.5)
    assert not math.isnan(lo) and not math.isnan(hi) and hi == np.inf


def test_attach_documents_and_unit_keys(sweep):  # noqa: F811
    positions, measurements = sweep
    with pytest.raises(KeyError, match="attach_documents"):
        st.unit_keys(measurements, "document")
    attached = st.attach_documents(measurements, positions)
    assert len(attached) == len(measurements)
    assert st.unit_keys(attached, "document") == ["domain", "doc_id"]
    # 24 positions per seed, three to a document, the same documents under both seeds.
    assert st.count_units(attached, "position") == 48 and st.count_units(attached, "document") == 8
    assert st.attach_documents(attached, positions) is attached
    with pytest.raises(ValueError):
        st.check_unit("token")


def test_document_bootstrap_is_wider_when_documents_share_their_values():
    # Ten documents of twenty positions; a document's positions share one value: resampling positions
    # treats 200 values as independent and gives a far narrower interval than resampling documents.
    rng = np.random.default_rng(0)
    per_document = rng.normal(size=10)
    frame = pd.DataFrame({"seed": 0, "position": np.arange(200), "domain": "d", "doc_id": np.repeat(np.arange(10), 20),
                          "rho": np.repeat(per_document, 20) + 1e-6 * rng.normal(size=200)})  # fmt: skip
    by_position = st._median_row(frame, "rho", 500, 0, 0.95, "position")
    by_document = st._median_row(frame, "rho", 500, 0, 0.95, "document")
    assert by_document["resampled"] == "document" and by_document["n_units"] == 10
    assert by_position["n_units"] == 200
    assert (by_document["ci_hi"] - by_document["ci_lo"]) > 2 * (by_position["ci_hi"] - by_position["ci_lo"])


def test_score_counts_infinite_predictions_as_misses():
    result = st.score([1.0, 1.4, np.inf, 3.0], [1.0, 1.0, 1.0, 1.0])
    assert result["within_50"] == 0.5 and result["n"] == 4
    assert result["median_abs_rel_error"] == pytest.approx((0.4 + 2.0) / 2)
    assert st.score([], [])["n"] == 0
    assert math.isinf(st.relative_errors([np.inf], [2.0])[0])
