"""Notebook 11's tables on synthetic measurements where the answer is known, and the prompt choice."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fisherlib.steps import steering as S
from fisherlib.steps import steering_study as SS
from helpers.layers import VOCAB, WIDTH, _random_lm


def _tokens(ratio_all: float = 1.0, ratio_target: float = 1.2) -> pd.DataFrame:
    exact = np.random.default_rng(0).uniform(1, 10, 20)  # each token's exact budget, the same for both pushes
    rows = []
    for mode, ratio in (("all", ratio_all), ("target", ratio_target)):
        for position in range(1 if mode == "target" else 0, 20):
            emp = float(exact[position])
            rows.append(dict(vector="eigvec", kind="eigvec", sign="+", mode=mode, text=0, position=position, eps=0.1,
                             curv=2 * 0.1 / emp**2 * (ratio**2 if mode == "all" else 1.0), alpha_pred=emp * ratio,
                             alpha_quartic=emp, alpha_emp=emp, nonmonotone=False, unconverged=False))  # fmt: skip
    return pd.DataFrame(rows)


def test_token_accuracy_scores_each_predictor_against_the_exact_budget():
    table = SS.token_accuracy(_tokens(ratio_all=1.0, ratio_target=1.3))
    at = table.set_index("mode")
    assert at.loc["all", "within_10"] == 1.0 and at.loc["all", "median_rho"] == pytest.approx(1.0)
    assert at.loc["target", "within_10"] == 0.0 and at.loc["target", "within_50"] == 1.0
    assert at.loc["target", "median_rho"] == pytest.approx(1 / 1.3**2)
    assert (table["within_10_quartic"] == 1.0).all() and (table["spearman"] > 0.99).all()
    assert list(at["n"]) == [20, 19]


def test_attention_share_matches_tokens_of_both_pushes():
    tokens = _tokens(ratio_all=0.5)  # all-positions curvature 0.25x the target's: the push through attention cancels
    share = SS.attention_share(tokens)
    assert share["n"].iloc[0] == 19 and share["median_curv_ratio"].iloc[0] == pytest.approx(0.25)
    assert share["median_alpha_ratio"].iloc[0] == pytest.approx(1.0) and share["share_sooner"].iloc[0] == 0.0


def test_population_tables_measure_every_method_against_exact():
    population = pd.DataFrame({"vector": "v", "kind": "random", "sign": ["+"] * 4 + ["-"] * 4, "eps": 1.0, "quantile": 0.95,
                               "method": list(S.METHODS) * 2, "alpha": [11.0, 9.0, 10.0, 10.0, 12.0, 10.0, 10.0, 10.0],
                               "passes": [2, 2, 20, 40] * 2, "mean_residual_norm": 5.0})  # fmt: skip
    table = SS.population_table(population)
    np.testing.assert_allclose(table["rel_error"], [0.1, -0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(table["alpha_rel"], population["alpha"] / 5.0)
    summary = SS.population_summary(population).set_index("method")
    assert summary.loc["closed", "max_abs_rel_error"] == pytest.approx(0.2) and summary.loc["closed", "median_passes"] == 2


def test_natural_table_is_relative_to_the_natural_gradient_and_says_when_it_could_not_run():
    natural = pd.DataFrame({"direction": ["euclidean_gradient", "natural_gradient"], "reached": True,
                            "off_target_kl": [0.03, 0.01], "total_kl": [0.04, 0.02]})  # fmt: skip
    assert SS.natural_table(natural)["off_target_ratio"].tolist() == pytest.approx([3.0, 1.0])
    assert SS.natural_table(pd.DataFrame())["direction"].tolist() == ["none"]


def test_prompts_come_from_distinct_documents_round_robin_over_domains():
    table = pd.DataFrame({"domain": ["a"] * 6 + ["b"] * 3, "doc_id": [0, 0, 1, 2, 3, 3, 10, 11, 11]})
    chosen = SS.choose_prompts(table, 5, seed=0)
    picked = table.iloc[chosen]
    assert len(chosen) == 5 and picked["doc_id"].is_unique
    assert (picked["domain"] == "b").sum() == 2  # b has two documents, both taken
    assert len(SS.choose_prompts(table, 50, seed=0)) == 6  # one per document at most


def test_closed_form_grid_equals_the_single_budgets():
    model = _random_lm("llama")
    generator = torch.Generator().manual_seed(9)
    texts = [torch.randint(0, VOCAB, (n,), generator=generator) for n in (8, 10)]
    v = torch.nn.functional.normalize(torch.randn(WIDTH, dtype=torch.float64, generator=generator), dim=0)
    grid = S.closed_form_scales(model, texts, 1, v, [0.1, 1.0], [0.5, 0.9], quartic=True)
    assert len(grid) == 8 and set(grid["method"]) == {"closed", "quartic"}
    for cell in grid.itertuples():
        single = S.steering_scale(model, texts, 1, v, eps=cell.eps, quantile=cell.quantile, method=cell.method)
        assert single.alpha == cell.alpha or (math.isinf(single.alpha) and math.isinf(cell.alpha))


def test_generated_tables_put_the_methods_side_by_side_without_nan():
    from fisherlib.steps.generated_steering import BUDGET_TABLE_COLUMNS

    rows = []
    for vector, kind in (("eigvec", "eigvec"), ("random:0", "random"), ("random:1", "random")):
        for divergence in ("base_steered", "steered_base"):
            exact = 2.0 if kind == "eigvec" else 4.0
            for method, alpha, level, passes in (("closed", 2.2, math.nan, 10), ("corrected", 1.9, 0.9, 14), ("exact", exact, 1.0, 40),
                                                 ("teacher_forced", 2.4, math.nan, 3)):  # fmt: skip
                rows.append(dict(vector=vector, kind=kind, divergence=divergence, eps=1.0, quantile=0.95, method=method, alpha=alpha,
                                 level=level, passes=passes, seconds=0.1, n_generate=4, continuations=3 if method == "exact" else 1,
                                 at_jump=method == "exact" and vector == "random:1", ratio_to_exact=alpha / exact))  # fmt: skip
    generated = pd.DataFrame(rows)[["vector", "kind", *BUDGET_TABLE_COLUMNS]]
    table = SS.generated_table(generated)
    assert len(table) == 6 and not table.select_dtypes("number").isna().any().any()
    first = table.iloc[0]
    assert first["alpha_closed"] == 2.2 and first["ratio_closed"] == pytest.approx(1.1) and first["passes_exact"] == 40
    assert first["level_corrected"] == 0.9 and first["continuations"] == 3
    summary = SS.generated_summary(generated)
    assert not summary.select_dtypes("number").isna().any().any()
    random = summary[(summary["kind"] == "random") & (summary["divergence"] == "steered_base")].iloc[0]
    assert random["n"] == 2 and random["at_jump"] == 1 and random["ratio_teacher_forced"] == pytest.approx(0.6)
    empty = SS.generated_table(generated.iloc[0:0])
    assert list(empty["vector"]) == ["none"]
