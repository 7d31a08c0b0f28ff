"""The averaged Jacobian lens: exact where the Jacobian does not depend on the position, held out, matched to t_emp."""

import numpy as np
import pandas as pd
import pytest
import torch

from fisherlib.steps import jacobian_lens as jl


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
