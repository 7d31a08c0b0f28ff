"""The averaged Jacobian lens: exact where the Jacobian does not depend on the position, held out, matched to t_emp."""

import numpy as np
import pandas as pd
import pytest
import torch

from fisherlib.steps import jacobian_lens as jl
from fisherlib.steps import layer_study


def _setup(P=6, d=5, V=9, shared=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, V, generator=g, dtype=torch.float64)
    A = base.expand(P, d, V).clone() if shared else base + torch.randn(P, d, V, generator=g, dtype=torch.float64)
    p = torch.softmax(3 * torch.randn(P, V, generator=g, dtype=torch.float64), -1)
    return A, p


def test_a_position_independent_jacobian_makes_the_lens_exact():
    A, p = _setup(shared=True)
    G, G_bar, _ = jl.lens_metrics(A, p)
    torch.testing.assert_close(G_bar, G)
    assert np.allclose(jl.top_eigvec_angles(G, G_bar), 0, atol=1e-5)


def test_the_lens_is_held_out_and_differs_where_the_jacobian_varies():
    A, p = _setup(shared=False)
    lens = jl.held_out_lens(A, n_folds=2)
    torch.testing.assert_close(lens[0], A[1::2].mean(0))  # position 0 (fold 0) sees only fold 1
    torch.testing.assert_close(lens[1], A[0::2].mean(0))
    G, G_bar, _ = jl.lens_metrics(A, p)
    assert not torch.allclose(G, G_bar)
    angles = jl.top_eigvec_angles(G, G_bar)
    assert ((angles >= 0) & (angles <= 90)).all()


def test_the_table_scores_both_metrics_against_t_emp():
    A, p = _setup(P=4, shared=False)
    G, G_bar, _ = jl.lens_metrics(A, p)
    U = jl.random_directions([10, 11, 12, 13], 2, 5, seed=0)
    curv, curv_lens = jl.curvatures(G, U), jl.curvatures(G_bar, U)
    lens = pd.DataFrame({"layer": "1", "position": np.repeat([10, 11, 12, 13], 2), "rank": np.tile([0, 1], 4),
                         "curv": curv.reshape(-1), "curv_lens": curv_lens.reshape(-1), "angle_deg": 5.0})  # fmt: skip
    rows = []
    for eps in (0.01, 1.0):
        for i, position in enumerate([10, 11, 12, 13]):
            for r in range(2):
                t = np.sqrt(2 * eps / curv[i, r])  # t_emp where G's closed form is exact
                rows.append(dict(layer="1", position=position, direction=4 + r, cls="random", eps=eps, t_emp=t, curv=curv[i, r]))
            rows.append(dict(layer="1", position=position, direction=0, cls="eigvec", eps=eps, t_emp=1.0, curv=1.0))
    table = jl.lens_table(lens, pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["within_10_G"] == 1.0 and row["within_50_G"] == 1.0 and row["n"] == 16
    assert row["max_curv_mismatch"] == pytest.approx(0, abs=1e-12) and row["median_angle_deg"] == 5.0
    assert row["within_50_lens"] <= 1.0 and not table.isna().any().any()


# --- Table 1 along the lens's top eigenvector -------------------------------------------------------------


def _lens_lines(rho, rho_lens, layer="1", positions=(10, 11, 12, 13), eps=(0.01, 1.0)):
    """Lens top-eigvec rows (`LENS_TOP_COLUMNS`): two signs per position, `rho [P, 2]` the same at every ε."""
    rows = []
    for i, position in enumerate(positions):
        for j, sign in enumerate((1, -1)):
            for e in eps:
                censored = not np.isfinite(rho[i][j])
                rows.append(dict(layer=layer, position=position, sign=sign, eps=e, curv=1.0, curv_lens=1.0,
                                 t_emp=np.inf if censored else 0.1, rho=rho[i][j], rho_lens=rho_lens[i][j], censored=censored))  # fmt: skip
    return pd.DataFrame(rows)[list(jl.LENS_TOP_COLUMNS)]


def _layer_study_top(rho_by_position: dict, layer="1", eps=(0.01, 1.0)):
    """The layer study's rows of `G_ℓ`'s top eigenvector (both signs), plus a rank-2 and a random row that must be ignored."""
    rows = []
    for position, (plus, minus) in rho_by_position.items():
        for e in eps:
            rows += [dict(layer=layer, position=position, cls="eigvec", eig_rank=1, sign=1, eps=e, rho=plus),
                     dict(layer=layer, position=position, cls="eigvec", eig_rank=1, sign=-1, eps=e, rho=minus),
                     dict(layer=layer, position=position, cls="eigvec", eig_rank=2, sign=1, eps=e, rho=50.0),
                     dict(layer=layer, position=position, cls="random", eig_rank=-1, sign=1, eps=e, rho=60.0)]  # fmt: skip
    return pd.DataFrame(rows)


def test_lens_table1_equals_g_table1_where_the_lens_is_exact():
    # A position-independent Jacobian: Ḡ = G, the same top eigenvector and curvature, so every median is G's Table 1.
    rho = [[1.01, 0.99], [1.03, 0.98], [1.02, 1.0], [0.97, 1.05]]
    lines = _lens_lines(rho, rho)
    study = _layer_study_top({10 + i: r for i, r in enumerate(rho)})
    table = jl.lens_table1(lines, study, 0.01, n_boot=500)
    expected = layer_study.table1_by_layer(study.assign(censored=False, rho_topk=study["rho"]), 0.01, n_boot=500)
    row, g = table.iloc[0], expected.iloc[0]
    assert row["n_positions"] == 4 and row["n"] == 8 and row["n_censored"] == 0
    assert row["median_rho_lens"] == row["median_rho_true"] == row["table1_median_rho"] == row["table1_median_rho_same"]
    assert row["median_rho_lens"] == g["median_rho"] == pytest.approx(np.median(np.ravel(rho)))
    assert (row["ci_lo_lens"], row["ci_hi_lens"]) == (row["ci_lo_true"], row["ci_hi_true"]) == (g["ci_lo"], g["ci_hi"])


def test_lens_table1_differs_where_the_lens_misjudges_the_curvature():
    rho = [[1.01, 0.99], [1.03, 0.98], [1.02, 1.0], [0.97, 1.05]]
    lens = [[4 * r for r in pair] for pair in rho]  # uᵀḠu four times uᵀGu: ρ_lens = 4ρ on the same lines
    lens[3][1] = np.inf  # a censored line stays inf, counted, not dropped
    rho[3][1] = np.inf
    lines = _lens_lines(rho, lens)
    # The layer study also measured two positions the lens did not: they enter table1_median_rho only.
    study = _layer_study_top({**{10 + i: (1.0, 1.0) for i in range(4)}, 20: (3.0, 3.0), 21: (3.0, 3.0)})
    row = jl.lens_table1(lines, study, 1.0, n_boot=500).iloc[0]
    assert row["eps"] == 1.0 and row["n_censored"] == 1 and row["n"] == 8
    assert row["median_rho_lens"] == pytest.approx(4 * row["median_rho_true"])
    assert row["median_rho_lens"] > row["ci_hi_true"] and row["ci_lo_lens"] > 1
    assert row["table1_median_rho_same"] == 1.0 and row["table1_median_rho"] == 1.0
    assert (
        jl.lens_table1(lines, _layer_study_top({20: (3.0, 3.0), 21: (3.0, 3.0), 10: (3.0, 3.0)}), 1.0, n_boot=50).iloc[0]["table1_median_rho"] == 3.0
    )
    with pytest.raises(ValueError, match="no lens lines at ε = 0.1"):
        jl.lens_table1(lines, study, 0.1)
    with pytest.raises(ValueError, match="no top eigenvector at layer 1"):
        jl.lens_table1(lines, _layer_study_top({20: (3.0, 3.0)}), 1.0)


def _lens_at(layer, eps=(1e-3, 1e-2)):
    """The lens's top-eigvec lines and the layer study's measurements at `layer` of a small float64 LM, 4 positions."""
    from fisherlib.layers.engine import residuals_by_layer
    from fisherlib.layers.passes import Prefilled
    from helpers.layers import WIDTH, _contexts, _random_lm

    model = _random_lm("gpt_neox")
    contexts = _contexts(lengths=(6, 9, 12, 7))
    prefilled = Prefilled(model, contexts)
    ids = np.arange(len(contexts))
    _, G, G_bar = jl.measure_lens(model, prefilled, layer, WIDTH, ids, n_per_class=1, return_lens_metric=True)
    lines = jl.measure_lens_top_eigvec(model, prefilled, layer, G, G_bar, ids, list(eps), rtol=1e-8)
    residuals = residuals_by_layer(model, contexts, [layer])[layer]
    study = layer_study.measure_layer(model, prefilled, layer, residuals, ids, ids.astype(str), ids, list(eps), n_eig=1,
                                      n_per_class=1, top_k=8, rtol=1e-8)  # fmt: skip
    return model, contexts, G, G_bar, lines, study


def test_at_the_head_the_lens_table1_is_the_layer_study_s():
    # At the head J = I for every position: Ḡ = G, so the lens's top eigenvector and its curvature are G's.
    _, _, G, G_bar, lines, study = _lens_at("head")
    torch.testing.assert_close(G_bar, G, rtol=1e-12, atol=1e-12 * float(G.abs().max()))
    assert list(lines.columns) == list(jl.LENS_TOP_COLUMNS) and len(lines) == 4 * 2 * 2
    np.testing.assert_allclose(lines["rho_lens"], lines["rho"], rtol=1e-10)
    # The same lines as the layer study's top eigenvector, sign for sign (both orient + toward swapping the top two
    # tokens), up to its eigensolver's tolerance (a Ritz residual of 1e-3 λ₁ moves t_emp by about 1e-5).
    top = study[(study["cls"] == "eigvec") & (study["eig_rank"] == 1)].sort_values(["position", "sign", "eps"])
    mine = lines.sort_values(["position", "sign", "eps"])
    np.testing.assert_allclose(mine["t_emp"].to_numpy(), top["t_emp"].to_numpy(), rtol=1e-4)
    row = jl.lens_table1(lines, study, 1e-2, n_boot=200).iloc[0]
    table1 = layer_study.table1_by_layer(study, 1e-2, n_boot=200).iloc[0]
    assert row["median_rho_lens"] == pytest.approx(row["median_rho_true"], rel=1e-10)
    assert row["median_rho_lens"] == pytest.approx(table1["median_rho"], rel=1e-4)
    assert row["table1_median_rho"] == row["table1_median_rho_same"] == table1["median_rho"]
    assert row["ci_lo_lens"] == pytest.approx(table1["ci_lo"], rel=1e-4) and row["ci_hi_lens"] == pytest.approx(table1["ci_hi"], rel=1e-4)


def test_at_an_inner_layer_the_lens_direction_is_measured_exactly_and_its_curvature_differs():
    from fisherlib.layers.pullback import layer_curvature
    from helpers.layers import _divergence_full_context

    model, contexts, G, G_bar, lines, study = _lens_at(1)
    U = jl.lens_top_eigvec_directions(model, contexts, 1, G_bar)
    torch.testing.assert_close(U[:, 1], -U[:, 0])
    top_lens = torch.linalg.eigvalsh(G_bar)[:, -1]
    torch.testing.assert_close(torch.as_tensor(jl.curvatures(G_bar, U))[:, 0], top_lens)  # Ḡ's top eigenvector, not G's
    assert (torch.as_tensor(jl.curvatures(G, U))[:, 0] < torch.linalg.eigvalsh(G)[:, -1] * 0.999).all()
    assert (layer_curvature(model, contexts, 1, U)["top2_gap"][:, 0] >= 0).all()  # + toward swapping the top two tokens
    at = lines[lines["eps"] == 1e-2].sort_values(["position", "sign"], ascending=[True, False])
    t = torch.tensor(at["t_emp"].to_numpy()).reshape(4, 2)
    kl = _divergence_full_context(model, contexts, 1, U, t)  # the real network, full context, at the measured t_emp
    torch.testing.assert_close(kl, torch.full_like(kl, 1e-2), rtol=1e-6, atol=0)
    row = jl.lens_table1(lines, study, 1e-3, n_boot=200).iloc[0]
    assert abs(row["median_rho_true"] - 1) < 0.02  # the quadratic holds at small ε along the lens's direction ...
    assert abs(np.log(row["median_rho_lens"] / row["median_rho_true"])) > 0.2  # ... but the lens misjudges its curvature
    assert not np.allclose(lines["curv_lens"], lines["curv"], rtol=0.05)
