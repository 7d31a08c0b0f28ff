"""Notebook 09's statistics: interpolation paths, jumps by the stated rule, hit rates, Fisher length."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fisherlib.steps import plateaus as PL
from helpers.layers import WIDTH, _contexts, _random_lm


def test_arc_keeps_the_start_norm_and_its_derivative_is_exact():
    generator = torch.Generator().manual_seed(0)
    r_a, r_b, mean = (torch.randn(WIDTH, dtype=torch.float64, generator=generator) for _ in range(3))
    alphas = torch.linspace(0, 1, 11, dtype=torch.float64)
    gamma, derivative = PL.path_points(r_a, r_b, mean, alphas, "arc")
    torch.testing.assert_close((gamma - mean).norm(dim=-1), (r_a - mean).norm().expand(11), rtol=1e-12, atol=0)
    torch.testing.assert_close(gamma[0], r_a, rtol=1e-12, atol=1e-12)
    h = 1e-6
    plus, _ = PL.path_points(r_a, r_b, mean, alphas + h, "arc")
    minus, _ = PL.path_points(r_a, r_b, mean, alphas - h, "arc")
    torch.testing.assert_close(derivative, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)
    straight, step = PL.path_points(r_a, r_b, mean, alphas, "straight")
    torch.testing.assert_close(straight[-1], r_b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(step, (r_b - r_a).expand(11, -1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="path kind"):
        PL.path_points(r_a, r_b, mean, alphas, "spiral")


def _steps(measured, fisher=None, pair=0, path="straight"):
    measured = np.asarray(measured, dtype=float)
    fisher = measured if fisher is None else np.asarray(fisher, dtype=float)
    n = len(measured)
    return pd.DataFrame(dict(
        pair=pair, path=path, step=np.arange(n), alpha_mid=(np.arange(n) + 0.5) / n, measured=measured, fisher=fisher,
        final_residual=np.ones(n), path_speed=np.ones(n),
    ))  # fmt: skip


def test_jump_rule_marks_runs_and_their_peaks():
    measured = [0.01] * 10 + [0.05, 0.2, 0.06] + [0.01] * 10 + [0.3] + [0.01] * 5
    steps = PL.mark_jumps(_steps(measured), factor=4.0)
    assert steps["jump"].sum() == 4 and sorted(steps.loc[steps["jump"], "event"].unique()) == [0, 1]
    assert steps.loc[steps["peak"], "step"].tolist() == [11, 23]
    flat = PL.mark_jumps(_steps([1e-6] * 20), factor=4.0)
    assert flat["flat"].all() and not flat["jump"].any()


def test_hit_rates_separate_a_perfect_predictor_from_chance():
    rng = np.random.default_rng(0)
    frames = []
    for pair in range(30):
        measured = np.full(40, 0.01)
        where = rng.integers(5, 35)
        measured[where] = 0.5
        frames.append(_steps(measured, pair=pair))
    steps = PL.mark_jumps(pd.concat(frames, ignore_index=True), factor=4.0)
    hits = PL.jump_hit_rates(steps, seed=0).set_index("predictor")
    assert hits.loc["fisher", "hit_rate"] == 1.0 and hits.loc["fisher", "n_jumps"] == 30
    # Shuffled and constant predictors land within ±1 step of one jump among 40 steps about 3/40 of the time.
    assert hits.loc["shuffled", "hit_rate"] < 0.3 and hits.loc["path_speed", "hit_rate"] < 0.3
    assert hits.loc["fisher", "ci_lo"] > hits.loc["shuffled", "ci_hi"]


def test_paths_through_a_model_agree_with_the_fisher_length():
    model = _random_lm("gpt_neox")
    contexts = _contexts(lengths=(6, 9, 12, 7))
    from fisherlib.layers.engine import residuals_by_layer

    residuals = residuals_by_layer(model, contexts, [1])[1]
    pairs = pd.DataFrame(dict(pair=[0, 1], a=[0, 2], b=[1, 3]))
    alphas = torch.linspace(0, 1, 201, dtype=torch.float64)
    points, steps = PL.measure_paths(model, contexts, pairs, 1, residuals.mean(0), residuals, alphas)
    assert set(points["path"]) == set(PL.PATHS) and len(points) == 2 * 2 * 201
    start = points[points["alpha"] == 0]
    assert (start["kl_start"].abs() < 1e-12).all() and (start["fr_start"].abs() < 1e-6).all()
    # The Fisher metric integrates to the output's Fisher–Rao path length on a fine grid.
    summary = PL.path_summary(PL.mark_jumps(steps, 4.0), points)
    np.testing.assert_allclose(summary["length_ratio"], 1.0, rtol=1e-3)
    assert (summary["fr_end"] <= summary["fisher_length"] * (1 + 1e-6)).all()
    lengths = PL.length_table(summary, points, 1e-3)
    assert set(lengths["path"]) == set(PL.PATHS) and np.isfinite(lengths["median_length_ratio"]).all()
    text = PL.plateau_findings(PL.plateau_table(summary, 200), PL.jump_hit_rates(PL.mark_jumps(steps, 4.0)), lengths, 1, 4.0, 1e-3)
    assert "Fisher length against the divergence" in text


def test_pairs_come_from_different_documents():
    table = pd.DataFrame(dict(domain=["a"] * 6, doc_id=[0, 0, 1, 1, 2, 2]))
    pairs = PL.choose_pairs(table, 10, seed=0)
    assert len(pairs) == 10
    assert (table["doc_id"].to_numpy()[pairs["a"]] != table["doc_id"].to_numpy()[pairs["b"]]).all()
