"""The long-form sweep table: complete, NaN-free, consistent with the core, independent of chunking."""

import numpy as np
import pandas as pd
import pytest
import torch

import fisherlib as fl
from fisherlib.core.errors import InputError
from fisherlib.steps.sweep import MEASUREMENT_COLUMNS, measure_boundaries

EPS = [0.01, 0.1, 1.0]


def _head(V=80, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g)
    b = 0.5 * torch.randn(V, generator=g)
    h = 2 * torch.randn(4, d, generator=g)
    return W, b, h


def test_table_is_complete_and_consistent_with_the_core():
    W, b, h = _head()
    table = measure_boundaries(W, b, h, EPS, top_k=8, n_random=3, n_control=2, seed=1, progress=False)
    assert list(table.columns) == list(MEASUREMENT_COLUMNS)
    directions = 14 + 12 + 14 + 3 + 2
    assert len(table) == 4 * directions * len(EPS)
    assert not table.select_dtypes("number").isna().any().any()
    finite = table[~table.censored]
    rho = 0.5 * finite.t_emp**2 * finite.curv_topk / finite.eps
    np.testing.assert_allclose(finite.rho, rho, rtol=1e-12)
    t_pred = np.sqrt(2 * table.eps / table.curv_topk.where(table.curv_topk > 0))
    np.testing.assert_allclose(table.t_pred[table.curv_topk > 0], t_pred[table.curv_topk > 0], rtol=1e-12)
    assert np.isinf(table.t_pred[table.cls == "control"]).all()  # u orthogonal to W_K: no predicted boundary
    # The empirical boundary of one row, from scratch.
    row = table.iloc[5]
    z = (h[row.position].double() @ W.double().T + b.double())[None]
    U, _ = fl.direction_sweep(
        W.double(),
        h[row.position : row.position + 1].double(),
        torch.softmax(z, -1),
        top_k=8,
        n_random=3,
        n_control=2,
        seed=1,
        position_ids=[row.position],
    )
    A = (U[0, row.direction] @ W.double().T)[None, None]
    assert abs(fl.kl_along_line(z, A, torch.tensor([row.t_emp])).item() / row.eps - 1) < 1e-6


def test_censored_rows_are_kept_with_infinite_rho():
    W, b, h = _head()
    table = measure_boundaries(W, b, h, [0.01, 50.0], top_k=8, n_random=2, n_control=0, divergence="reverse", progress=False)
    censored = table[table.censored]
    assert len(censored) > 0  # ε = 50 nats is above every reverse-KL bound here
    assert np.isinf(censored.t_emp).all() and np.isinf(censored.rho).all()
    assert not table.select_dtypes("number").isna().any().any()


def test_results_do_not_depend_on_the_memory_budget():
    W, b, h = _head()
    big = measure_boundaries(W, b, h, EPS, top_k=8, n_random=3, n_control=2, progress=False)
    small = measure_boundaries(W, b, h, EPS, top_k=8, n_random=3, n_control=2, memory_budget=1, progress=False)
    # Batched matrix products round differently for other batch shapes (last bits, amplified by the
    # cancellation in Var_p[a]); the boundaries themselves agree far below the solver tolerance.
    pd.testing.assert_frame_equal(big, small, rtol=1e-9, atol=0)


def test_out_of_memory_halves_the_chunk_and_gives_the_same_table(monkeypatch, caplog):
    import fisherlib.steps.sweep as measure

    W, b, h = _head()
    expected = measure_boundaries(W, b, h, EPS, top_k=8, n_random=3, n_control=2, progress=False)
    real = measure.empirical_boundary

    def fails_on_big_chunks(z, *args, **kwargs):
        if z.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(z, *args, **kwargs)

    monkeypatch.setattr(measure, "empirical_boundary", fails_on_big_chunks)
    with caplog.at_level("WARNING", logger="fisherlib"):
        table = measure_boundaries(W, b, h, EPS, top_k=8, n_random=3, n_control=2, progress=False)
    assert "retrying with" in caplog.text
    pd.testing.assert_frame_equal(table, expected, rtol=1e-9, atol=0)


def test_bad_inputs_are_refused_before_any_work_and_numpy_is_converted():
    W, b, h = _head()
    bad_h = h.clone()
    bad_h[2, 3] = float("nan")
    with pytest.raises(InputError, match=r"h \[P, d\] holds 1 NaN"):
        measure_boundaries(W, b, bad_h, EPS, top_k=8, progress=False)
    with pytest.raises(InputError, match=r"b must be \[V\] to match W \[V, d\]"):
        measure_boundaries(W, b[:-1], h, EPS, top_k=8, progress=False)
    with pytest.raises(InputError, match="every ε must be a positive finite number"):
        measure_boundaries(W, b, h, [0.1, 0.0], top_k=8, progress=False)
    with pytest.raises(InputError, match="top_k must be at most V = 80"):
        measure_boundaries(W, b, h, EPS, top_k=81, progress=False)
    options = dict(top_k=8, n_random=1, n_control=1, progress=False)
    pd.testing.assert_frame_equal(
        measure_boundaries(W.numpy(), b.numpy(), h.numpy(), np.array(EPS), **options), measure_boundaries(W, b, h, EPS, **options)
    )
