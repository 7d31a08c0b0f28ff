"""The study's statistics against hand-computed and brute-force values on small synthetic sweeps."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import fisherlib as fl
from fisherlib import analysis as an
from fisherlib import reference
from fisherlib.sampling import position_statistics

EPS = (0.01, 0.1, 1.0)


def synthetic_sweep(seed=0, n_positions=24, V=60, d=16, top_k=8, n_random=6, n_control=3):
    """Return (positions, measurements) with the sweep's schema, measured by the real core on a random head."""
    W = torch.randn(V, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    g = torch.Generator().manual_seed(100 + seed)
    scales = torch.linspace(0.3, 2.0, n_positions, dtype=torch.float64)[torch.randperm(n_positions, generator=g)]
    h = scales[:, None] * torch.randn(n_positions, d, generator=g, dtype=torch.float64)
    z = h @ W.T
    p = torch.softmax(z, -1)
    stats = position_statistics(W.float(), None, h.float(), top_k)
    positions = pd.DataFrame({k: v.numpy() for k, v in stats.items() if v.dim() == 1})
    positions.insert(0, "position", np.arange(n_positions))
    positions.insert(0, "seed", seed)
    U, table = fl.direction_sweep(W, h, p, n_random=n_random, n_control=n_control, seed=seed, top_k=top_k)
    A = torch.einsum("vd,pnd->pnv", W, U)
    curv_full, curv_topk = fl.curvature(p, A), fl.curvature(p, A, top_k=top_k)
    kappas = fl.cumulants(p, A)
    t_pred, t_pred_full = fl.predicted_boundary(curv_topk, EPS), fl.predicted_boundary(curv_full, EPS)
    t_cumulant, t_emp = fl.cumulant_boundary(kappas, EPS), fl.empirical_boundary(z, A, EPS)
    frames = []
    for e_i, eps in enumerate(EPS):
        frame = table.copy()
        frame.insert(0, "seed", seed)
        frame["eps"] = eps
        frame["curv_full"] = curv_full.reshape(-1).numpy()
        frame["curv_topk"] = curv_topk.reshape(-1).numpy()
        frame["kappa3"] = kappas[..., 1].reshape(-1).numpy()
        frame["kappa4"] = kappas[..., 2].reshape(-1).numpy()
        frame["t_pred"] = t_pred[..., e_i].reshape(-1).numpy()
        frame["t_pred_full"] = t_pred_full[..., e_i].reshape(-1).numpy()
        frame["t_cumulant"] = t_cumulant[..., e_i].reshape(-1).numpy()
        frame["t_emp"] = t_emp[..., e_i].reshape(-1).numpy()
        censored = ~np.isfinite(frame["t_emp"].to_numpy())
        frame["rho"] = np.where(censored, np.inf, 0.5 * frame["t_emp"] ** 2 * frame["curv_topk"] / eps)
        frame["rho_full"] = np.where(censored, np.inf, 0.5 * frame["t_emp"] ** 2 * frame["curv_full"] / eps)
        frame["censored"] = censored
        frames.append(frame)
    return positions, pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def sweep():
    parts = [synthetic_sweep(seed) for seed in (0, 1)]
    return pd.concat([p for p, _ in parts], ignore_index=True), pd.concat([m for _, m in parts], ignore_index=True)


def _no_nan(frame):
    assert not frame.select_dtypes("number").isna().any().any()


# --- bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_median_and_repeats_per_seed():
    values = np.random.default_rng(3).lognormal(size=301)
    median, lo, hi = an.bootstrap_median_ci(values, n_boot=500, seed=7)
    assert median == np.median(values)
    assert lo <= median <= hi and lo < hi
    assert an.bootstrap_median_ci(values, n_boot=500, seed=7) == (median, lo, hi)
    assert an.bootstrap_median_ci(values, n_boot=500, seed=8) != (median, lo, hi)


def test_cluster_bootstrap_equals_explicit_resampling():
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(9), rng.integers(1, 5, 9))
    values = rng.normal(size=codes.size)
    values[[2, 5]] = np.inf  # censored values rank above every finite one
    replicates = an.bootstrap_medians(values, groups=codes, n_boot=50, seed=4)
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
        got = an.weighted_medians(values[order], codes[order], counts)
        expected = [np.median(np.repeat(values[order], c[codes[order]])) for c in counts]
        np.testing.assert_array_equal(got, expected)


def test_percentile_interval_with_infinite_replicates_has_no_nan():
    lo, hi = an.percentile_interval([1.0, 2.0, np.inf, np.inf, np.inf], level=0.5)
    assert not math.isnan(lo) and not math.isnan(hi) and hi == np.inf


# --- Table 1 and ρ -------------------------------------------------------------------------------


def test_table1_per_seed_medians_and_their_mean(sweep):
    _, measurements = sweep
    table = an.top_eigvec_exactness(measurements, 0.01, n_boot=200)
    top = measurements[(measurements.cls == "eigvec") & (measurements.eig_rank == 1) & (measurements.eps == 0.01)]
    expected = top.groupby("seed")["rho"].median()
    per_seed = table[table.seeds != "all seeds"].set_index("seeds")["median_rho"]
    np.testing.assert_allclose(per_seed.to_numpy(), expected.to_numpy())
    overall = table[table.seeds == "all seeds"].iloc[0]
    assert overall.median_rho == pytest.approx(expected.mean())
    assert (overall.seed_min, overall.seed_max) == (expected.min(), expected.max())
    assert overall.n == len(top) and overall.n_positions == 48  # both signs pooled
    assert (table.ci_lo <= table.median_rho).all() and (table.median_rho <= table.ci_hi).all()
    pooled = an.top_eigvec_exactness(measurements, 0.01, by_seed=False, n_boot=200)
    assert pooled.median_rho.iloc[0] == pytest.approx(top["rho"].median())
    plus = an.top_eigvec_exactness(measurements, 0.01, by_seed=False, sign=1, n_boot=200)
    assert plus.n.iloc[0] == len(top) // 2
    _no_nan(table)


def test_rho_by_eig_rank_and_eps_are_group_medians(sweep):
    _, measurements = sweep
    by_rank = an.rho_by_eig_rank(measurements, 0.1, n_boot=100)
    eig = measurements[(measurements.cls == "eigvec") & (measurements.eps == 0.1)]
    np.testing.assert_allclose(by_rank.median_rho, eig.groupby("eig_rank")["rho"].median().loc[by_rank.eig_rank])
    by_eps = an.rho_by_eps(measurements, cls="random", n_boot=100)
    random = measurements[measurements.cls == "random"]
    np.testing.assert_allclose(by_eps.median_rho, random.groupby("eps")["rho"].median().to_numpy())
    _no_nan(by_rank)
    _no_nan(by_eps)


def test_topk_rho_splits_into_taylor_and_truncation_parts(sweep):
    _, measurements = sweep
    table = an.rho_topk_vs_full(measurements)
    assert ((table.truncation_share >= 0) & (table.truncation_share <= 1)).all()
    assert (table.dropped == 0).all()
    finite = measurements[np.isfinite(measurements.rho)]
    np.testing.assert_allclose(finite.rho / finite.rho_full, finite.curv_topk / finite.curv_full, rtol=1e-9)
    _no_nan(table)


def test_cumulant_sign_law_and_opposite_signs(sweep):
    _, measurements = sweep
    summary = an.cumulant_summary(measurements, eps=0.01)
    top = summary.set_index("cls").loc["eigvec rank 1"]
    assert top.sign_agreement > 0.9 and top.opposite_sides > 0.9
    assert (summary.median_abs_dev_quartic < summary.median_abs_dev).all()
    accuracy = an.predictor_accuracy(measurements, eps=0.01).set_index(["cls", "predictor"])
    error = accuracy["median_abs_rel_error"]
    assert error[("structured", "t_cumulant")] < error[("structured", "t_pred_full")]
    _no_nan(summary)


# --- Table 2 ------------------------------------------------------------------------------------


def test_table2_medians_equal_pandas_groupby(sweep):
    _, measurements = sweep
    table = an.median_rho_by_class(measurements, 1.0, n_boot=100).set_index("cls")
    at = measurements[measurements.eps == 1.0]
    expected = at.groupby(at.cls.astype(str))["rho"].median()
    for cls in ("structured", "tangent", "random", "eigvec", "control"):
        assert table.loc[cls, "median_rho"] == pytest.approx(expected[cls])
        assert table.loc[cls, "n"] == (at.cls == cls).sum()
    top = at[(at.cls == "eigvec") & (at.eig_rank == 1)]["rho"].median()
    assert table.loc["eigvec rank 1", "median_rho"] == pytest.approx(top)
    assert list(table.index) == list(an.TABLE2_GROUPS)
    _no_nan(table.reset_index())


# --- Spearman -----------------------------------------------------------------------------------


def test_per_position_spearman_equals_scipy(sweep):
    positions, measurements = sweep
    measurements = measurements.copy()
    rows = measurements.index[(measurements.eps == 1.0) & (measurements.cls == "random")][:3]
    measurements.loc[rows, "t_emp"] = np.inf  # censored rows must be dropped and counted
    per_position = an.per_position_spearman(measurements, positions, 1.0, predictors=("t_pred", "t_pred_full"))
    at = measurements[(measurements.eps == 1.0) & measurements.cls.astype(str).isin(an.PREDICTED_CLASSES)]
    ours = per_position[per_position.predictor == "t_pred"].set_index(["seed", "position"])
    for (seed, position), part in at.groupby(["seed", "position"]):
        finite = part[np.isfinite(part.t_pred) & np.isfinite(part.t_emp)]
        expected = scipy.stats.spearmanr(finite.t_pred, finite.t_emp).statistic
        assert ours.loc[(seed, position), "spearman"] == pytest.approx(expected, abs=1e-12)
        assert ours.loc[(seed, position), "dropped"] == len(part) - len(finite)
    assert ours["dropped"].sum() == 3
    baselines = per_position[per_position.predictor.isin(["entropy", "max_prob", "trace_f"])]
    assert (baselines.spearman == 0).all() and not baselines.defined.any()
    summary = an.spearman_summary(per_position)
    assert set(summary.seeds) == {"0", "1", "all seeds"}
    assert (summary[summary.predictor == "entropy"]["median"] == 0).all()
    _no_nan(summary)


def test_spearman_of_tied_ranks_matches_scipy():
    x, y = [1.0, 1.0, 2.0, 3.0, 3.0, 5.0], [2.0, 1.0, 1.0, 4.0, 5.0, 5.0]
    frame = pd.DataFrame({"seed": 0, "position": 0, "x": x, "y": y})
    result = an._grouped_spearman(frame, "x", "y", min_directions=3)
    assert result.spearman.iloc[0] == pytest.approx(scipy.stats.spearmanr(frame.x, frame.y).statistic, abs=1e-12)


# --- isotonic calibration ---------------------------------------------------------------------------


def _calibration_frame(t_pred, t_emp, seeds, positions, cls="random", eps=1.0):
    columns = {"seed": seeds, "position": positions, "cls": cls, "eps": eps, "t_pred": t_pred, "t_emp": t_emp}
    return pd.DataFrame(columns)


def test_folds_never_split_a_position_and_seeds_are_separate_groups():
    n_pos, per = 40, 6
    frame = _calibration_frame(1.0, 1.0, np.repeat([0, 1], n_pos * per), np.tile(np.repeat(np.arange(n_pos), per), 2))
    folds = an.position_folds(frame, n_splits=5, seed=0)
    frame["fold"] = folds
    assert (frame.groupby(["seed", "position"])["fold"].nunique() == 1).all()
    by_seed = frame.groupby(["position", "seed"])["fold"].first().unstack()
    assert (by_seed[0] != by_seed[1]).any()  # (0, p) and (1, p) are different positions
    np.testing.assert_array_equal(folds, an.position_folds(frame, n_splits=5, seed=0))


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
    grouped = an.calibrate_isotonic_cv(frame, classes=("random",), per_class=False)
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
    table = an.calibrate_isotonic_cv(frame, eps=1.0, classes=("random", "structured"))
    everything = table[table.cls == "all"].set_index("method")
    assert everything.loc["raw", "within_50"] < 0.1
    assert everything.loc["calibrated_pooled", "within_50"] > 0.95
    assert everything.loc["calibrated_per_class", "within_50"] >= everything.loc["raw", "within_50"]
    assert (everything.dropped == 3).all() and (everything.n == len(frame) - 3).all()
    assert table[table.cls == "random"].dropped.iloc[0] == 2  # rows 11 and 3 are odd
    curve = an.isotonic_curve(frame, 1.0, classes=("random", "structured"))
    assert set(curve.cls) == {"all", "random", "structured"}
    assert (np.diff(curve[curve.cls == "all"].t_cal) >= 0).all()
    _no_nan(table)


def test_calibration_on_a_sweep(sweep):
    _, measurements = sweep
    table = an.calibrate_isotonic_cv(measurements, n_splits=4)
    assert set(table.method) == {"raw", "calibrated_pooled", "calibrated_per_class"}
    assert set(table.cls) == {"all", *an.PREDICTED_CLASSES}
    assert (table.n > 0).all()
    _no_nan(table)


# --- stratifiers -------------------------------------------------------------------------------


def test_stratifier_that_determines_log_rho_wins_by_a_large_ratio():
    rng = np.random.default_rng(2)
    n_pos = 500
    positions = pd.DataFrame(
        {
            "seed": 0,
            "position": np.arange(n_pos),
            "entropy": rng.uniform(0, 4, n_pos),
            "max_prob": rng.uniform(0, 1, n_pos),
            "eff_rank": rng.uniform(1, 8, n_pos),
        }
    )
    measurements = pd.DataFrame(
        {"seed": 0, "position": np.arange(n_pos), "cls": "eigvec", "eig_rank": 1, "eps": 0.01,
         "rho": np.exp(2 * positions.entropy)}  # fmt: skip
    )
    measurements.loc[0, "rho"] = np.inf  # censored: dropped from log ρ, counted
    table = an.stratifier_variance(measurements, positions, 0.01).set_index("stratifier")
    assert table.loc["entropy", "best"] and table.loc["entropy", "ratio_to_best"] == 1
    assert table.loc["eff_rank", "ratio_to_best"] > 10 and table.loc["max_prob", "ratio_to_best"] > 10
    assert table.loc["entropy", "robust_ratio_to_best"] == 1 and table.loc["eff_rank", "robust_ratio_to_best"] > 10
    assert (table.dropped == 1).all() and (table.n == n_pos - 1).all()
    # Hand-computed pooled within-cell variance for entropy.
    usable = positions.iloc[1:]
    bins = an._quantile_bins(usable.entropy, 5)
    log_rho = 2 * usable.entropy.to_numpy()
    cells = [log_rho[bins == b] for b in range(5)]
    expected = sum((c.size - 1) * c.var(ddof=1) for c in cells) / sum(c.size - 1 for c in cells)
    assert table.loc["entropy", "within_var"] == pytest.approx(expected)
    _no_nan(table.reset_index())


def test_stratifier_tables_on_a_sweep(sweep):
    positions, measurements = sweep
    cells = an.stratifier_cells(measurements, positions, 1.0, cls="all")
    assert set(cells.stratifier) == set(an.STRATIFIERS) and set(cells.bin) == set(range(5))
    variance = an.stratifier_variance(measurements, positions, 1.0, cls="all")
    assert variance.best.sum() >= 1 and (variance.ratio_to_best >= 1).all()
    _no_nan(cells)
    _no_nan(variance)


# --- stable regions -------------------------------------------------------------------------------


def _head(V=50, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g)
    b = 0.1 * torch.randn(V, generator=g)
    h = 1.5 * torch.randn(d, generator=g)
    u1, u2 = torch.nn.functional.normalize(torch.randn(2, d, generator=g, dtype=torch.float64), dim=-1)
    return W, b, h, u1, u2


def test_kl_slice_is_zero_at_h_and_matches_kl_along_line():
    W, b, h, u1, u2 = _head()
    x, y, kl = an.kl_slice(W, b, h, u1, u2, extent=2.0, n_grid=41, memory_budget=4096)  # tiny budget: many chunks
    centre = 20
    assert x[centre] == 0 and y[centre] == 0 and kl[centre, centre] == pytest.approx(0, abs=1e-14)
    z = (W.double() @ h.double() + b.double())[None]
    along_x = fl.kl_along_line(z, (W.double() @ u1)[None, None], torch.as_tensor(x))[0, 0].numpy()
    along_y = fl.kl_along_line(z, (W.double() @ u2)[None, None], torch.as_tensor(y))[0, 0].numpy()
    np.testing.assert_allclose(kl[centre, :], along_x, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(kl[:, centre], along_y, rtol=1e-9, atol=1e-13)
    _, _, reverse = an.kl_slice(W, b, h, u1, u2, extent=2.0, n_grid=41, divergence="reverse")
    along_reverse = fl.kl_along_line(z, (W.double() @ u1)[None, None], torch.as_tensor(x), divergence="reverse")
    along_reverse = along_reverse[0, 0].numpy()
    np.testing.assert_allclose(reverse[centre, :], along_reverse, rtol=1e-9, atol=1e-13)


def test_fisher_ellipse_points_lie_on_the_quadratic_level_set():
    W, b, h, u1, u2 = _head()
    p = torch.softmax(W.double() @ h.double() + b.double(), -1)
    F = fl.fisher_pullback(W, p[None])[0]
    F2 = an.restrict_to_plane(F, u1, u2)
    np.testing.assert_allclose(an.plane_fisher(W, b, h, u1, u2), F2, rtol=1e-9, atol=1e-12)
    F_k = fl.fisher_pullback(W, p[None], top_k=7)[0]
    F2_k = an.restrict_to_plane(F_k, u1, u2)
    np.testing.assert_allclose(an.plane_fisher(W, b, h, u1, u2, top_k=7), F2_k, rtol=1e-9, atol=1e-12)
    for eps in (0.01, 1.0):
        points = an.fisher_ellipse(F, u1, u2, eps, n_points=64)
        np.testing.assert_allclose(0.5 * np.einsum("ni,ij,nj->n", points, F2, points), eps, rtol=1e-10)
    # At small ε the true KL on the ellipse is ε to second order.
    points = an.fisher_ellipse(F, u1, u2, 1e-4, n_points=16)
    z = W.double() @ h.double() + b.double()
    for x, y in points:
        q = torch.log_softmax(z + W.double() @ (x * u1 + y * u2), -1)
        kl = float((p * (torch.log(p) - q)).sum())
        assert kl == pytest.approx(1e-4, rel=0.05)


def test_stable_region_slices_and_figures():
    import matplotlib

    matplotlib.use("Agg")
    from fisherlib import plots

    W, b, h, *_ = _head(V=40, d=12)
    slices = an.stable_region_slices(W, b, h, eps_levels=(0.01, 0.1), top_k=6, n_grid=31)
    assert len(slices) == 2
    for plane in slices:
        assert plane.kl.shape == (31, 31) and np.isfinite(plane.kl).all()
        assert set(plane.ellipses) == {0.01, 0.1}
        assert abs(plane.x).max() >= abs(plane.ellipses[0.1][:, 0]).max()  # the largest ellipse fits
    fig = plots.plot_stable_regions([("a position", slices)])
    assert len(fig.axes) == 2
    matplotlib.pyplot.close("all")


def test_figures_draw_from_the_tables(sweep):
    import matplotlib

    matplotlib.use("Agg")
    from fisherlib import plots

    positions, measurements = sweep
    figures = [
        plots.plot_rho_by_eig_rank(an.rho_by_eig_rank(measurements, 0.01, n_boot=50)),
        plots.plot_rho_by_eps(an.rho_by_eps(measurements, n_boot=50)),
        plots.plot_rho_topk_vs_full(an.rho_topk_vs_full(measurements)),
        plots.plot_cumulant_check(an.cumulant_terms(measurements, 0.1)),
        plots.plot_predictor_accuracy(an.predictor_accuracy(measurements)),
        plots.plot_rho_by_class(measurements, 1.0),
        plots.plot_spearman_histogram(
            an.per_position_spearman(measurements, positions, 1.0), reference_range=(0.66, 0.98)
        ),
        plots.plot_calibration_within50(an.calibrate_isotonic_cv(measurements, n_splits=4)),
        plots.plot_calibration_curve(measurements, an.isotonic_curve(measurements, 1.0)),
        plots.plot_stratifier_variance(an.stratifier_variance(measurements, positions, 1.0, cls="all")),
        plots.plot_stratifier_cells(an.stratifier_cells(measurements, positions, 1.0, cls="all")),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figures)
    matplotlib.pyplot.close("all")


# --- reference numbers ------------------------------------------------------------------------------


def test_reference_numbers_exist_for_the_three_architectures():
    for key in ("qwen", "llama", "pythia"):
        ref = reference.WRITE_UP[key]
        assert set(ref["table2"]) == {"structured", "tangent", "random", "eigvec"}
        assert ref["table1"]["ci"][0] < ref["table1"]["median"] < ref["table1"]["ci"][1]
        assert 0 < ref["calibration"]["raw"] < ref["calibration"]["calibrated_pooled"] < 1
    assert reference.WRITE_UP["qwen"]["table1"]["median"] == 1.002
    assert reference.WRITE_UP["pythia"]["table2"]["eigvec"] == 0.72
    hub_ids = [("Qwen/Qwen3-1.7B", "qwen"), ("meta-llama/Llama-3.2-1B", "llama"), ("EleutherAI/pythia-1b", "pythia")]
    for arch, key in hub_ids + [("llama", "llama")]:
        assert reference.arch_key(arch) == key
    assert reference.arch_key("tiny") is None and reference.arch_key("/models/stories260K/hf") is None


def test_with_reference_adds_a_column_only_for_the_study_models(sweep):
    _, measurements = sweep
    table = an.median_rho_by_class(measurements, 1.0, n_boot=50)
    assert reference.with_reference(table, "table2_rho_by_class", "tiny") is table
    with_ref = reference.with_reference(table, "table2_rho_by_class", "EleutherAI/pythia-1b").set_index("cls")
    assert with_ref.loc["eigvec", "write-up"] == "0.72" and with_ref.loc["control", "write-up"] == ""
    table1 = an.top_eigvec_exactness(measurements, 0.01, n_boot=50)
    table1 = reference.with_reference(table1, "table1_top_eigvec", "qwen")
    assert table1["write-up"].iloc[-1].startswith("1.002 [0.999, 1.005]") and table1["write-up"].iloc[0] == ""
    calibration = an.calibrate_isotonic_cv(measurements, n_splits=4, eps=1.0)
    calibration = reference.with_reference(calibration, "calibration_within50", "llama")
    headline = calibration[(calibration.cls == "all")].set_index("method")["write-up"]
    assert headline["raw"] == "51%" and headline["calibrated_pooled"] == "68%"
    with pytest.raises(KeyError):
        reference.with_reference(table, "no_such_table", "qwen")
