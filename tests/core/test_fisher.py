"""The Fisher pullback and its closed form against brute force (autograd, dense matrices)."""

import math

import pytest
import torch

import fisherlib as fl
from fisherlib.core.errors import InputError
from fisherlib.core.fisher import curvature_topk, fisher_eigh


def _problem(P=3, V=40, d=12, scale=2.0, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    h = scale * torch.randn(P, d, generator=g, dtype=torch.float64)
    return W, h, torch.softmax(h @ W.T, -1)


def test_full_fisher_is_the_autograd_hessian_of_kl():
    W, h, p = _problem()
    F = fl.fisher_pullback(W, p)
    for i in range(h.shape[0]):

        def kl(x, i=i):
            return (p[i] * (torch.log(p[i]) - torch.log_softmax(W @ x, -1))).sum()

        hessian = torch.autograd.functional.hessian(kl, h[i].clone())
        torch.testing.assert_close(F[i], hessian, rtol=1e-9, atol=1e-10)


def test_full_fisher_is_the_hessian_of_cross_entropy_for_any_label():
    W, h, p = _problem(P=1)
    F = fl.fisher_pullback(W, p)[0]
    for label in (0, 7):
        hessian = torch.autograd.functional.hessian(lambda x: -torch.log_softmax(W @ x, -1)[label], h[0].clone())
        torch.testing.assert_close(F, hessian, rtol=1e-9, atol=1e-10)


def test_top_k_fisher_matches_the_dense_definition():
    W, _, p = _problem()
    k = 5
    F_k = fl.fisher_pullback(W, p, top_k=k)
    for i in range(p.shape[0]):
        ids = torch.argsort(p[i], descending=True)[:k]
        p_k = p[i, ids]
        dense = W[ids].T @ (torch.diag(p_k) - torch.outer(p_k, p_k)) @ W[ids]
        torch.testing.assert_close(F_k[i], dense)
    renormalised = fl.fisher_pullback(W, p, top_k=k, renormalize=True)
    assert not torch.allclose(renormalised, F_k)
    full = fl.fisher_pullback(W, p, top_k=p.shape[1])
    torch.testing.assert_close(full, fl.fisher_pullback(W, p))


def test_curvature_is_the_quadratic_form_of_fisher():
    W, _, p = _problem()
    U = torch.nn.functional.normalize(torch.randn(p.shape[0], 6, W.shape[1], dtype=torch.float64), dim=-1)
    A = torch.einsum("vd,pnd->pnv", W, U)
    F = fl.fisher_pullback(W, p)
    F_k = fl.fisher_pullback(W, p, top_k=8)
    torch.testing.assert_close(fl.curvature(p, A), torch.einsum("pnd,pde,pne->pn", U, F, U))
    torch.testing.assert_close(fl.curvature(p, A, top_k=8), torch.einsum("pnd,pde,pne->pn", U, F_k, U))


def test_fisher_eigh_matches_a_dense_eigendecomposition():
    W, _, p = _problem(d=20)
    k = 6
    eigvals, eigvecs = fisher_eigh(W, p, k)
    F_k = fl.fisher_pullback(W, p, top_k=k)
    dense = torch.linalg.eigvalsh(F_k).flip(-1)[:, :k]
    torch.testing.assert_close(eigvals, dense.clamp_min(0), atol=1e-10, rtol=1e-8)
    for i in range(p.shape[0]):
        for r in range(k - 1):  # the last eigenvalue of a k×k covariance is 0
            v = eigvecs[i, :, r]
            torch.testing.assert_close(F_k[i] @ v, eigvals[i, r] * v, atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(eigvecs[i].T @ eigvecs[i], torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)


def test_near_binary_fisher_is_rank_one_along_the_token_difference():
    g = torch.Generator().manual_seed(3)
    V, d = 50, 16
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    z = torch.full((V,), -30.0, dtype=torch.float64)
    z[4], z[9] = 2.0, 1.5
    p = torch.softmax(z, -1)[None]
    eigvals, eigvecs = fisher_eigh(W, p, 16)
    diff = torch.nn.functional.normalize(W[9] - W[4], dim=0)
    assert abs(float(eigvecs[0, :, 0] @ diff)) > 1 - 1e-9
    assert fl.effective_rank(eigvals)[0] < 1 + 1e-6
    pa, pb = p[0, 4], p[0, 9]
    torch.testing.assert_close(eigvals[0, 0], pa * pb * (W[9] - W[4]).square().sum(), rtol=1e-6, atol=0)


def test_effective_rank_of_known_spectra():
    spectra = torch.tensor([[1.0, 1.0, 1.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(
        fl.effective_rank(spectra), torch.tensor([3.0, 1.0, 0.0, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))], dtype=torch.float64)
    )
    torch.testing.assert_close(fl.effective_rank(spectra, kind="participation"), torch.tensor([3.0, 1.0, 0.0, 16 / 10], dtype=torch.float64))
    with pytest.raises(ValueError, match="entropy"):
        fl.effective_rank(spectra, kind="bogus")


def test_cumulants_against_moments_and_the_taylor_series_of_kl():
    W, h, p = _problem(P=2)
    U = torch.nn.functional.normalize(torch.randn(2, 3, W.shape[1], dtype=torch.float64), dim=-1)
    A = torch.einsum("vd,pnd->pnv", W, U)
    kappas = fl.cumulants(p, A)
    # The n-th derivative of log E_p[exp(t a)] at 0 is κ_n: check by finite differences of the exact KL.
    z = torch.log(p)
    ts = torch.tensor([0.0, 1e-2, 2e-2, 3e-2, 4e-2], dtype=torch.float64)
    kl = fl.kl_along_line(z, A, ts)
    step = 1e-2
    second = (kl[..., 2] - 2 * kl[..., 1] + kl[..., 0]) / step**2  # ≈ κ₂ + κ₃·t
    torch.testing.assert_close(second, kappas[..., 0] + kappas[..., 1] * step, rtol=1e-2, atol=1e-4)
    mean = (p[:, None] * A).sum(-1, keepdim=True)
    mu2 = (p[:, None] * (A - mean) ** 2).sum(-1)
    mu4 = (p[:, None] * (A - mean) ** 4).sum(-1)
    torch.testing.assert_close(kappas[..., 2], mu4 - 3 * mu2**2)


def test_predicted_boundary_and_zero_curvature():
    curv = torch.tensor([[2.0, 0.0, 0.5]])
    t = fl.predicted_boundary(curv, [0.01, 1.0])
    assert t.shape == (1, 3, 2)
    torch.testing.assert_close(t[0, 0], torch.sqrt(torch.tensor([0.01, 1.0], dtype=torch.float64)))
    assert torch.isinf(t[0, 1]).all()
    assert not torch.isnan(t).any()


def test_cumulant_boundary_is_sharper_than_the_quadratic_one():
    W, h, p = _problem(P=4, scale=1.0)
    U = torch.nn.functional.normalize(torch.randn(4, 8, W.shape[1], dtype=torch.float64), dim=-1)
    A = torch.einsum("vd,pnd->pnv", W, U)
    eps = [0.01, 0.05]
    t_emp = fl.empirical_boundary(torch.log(p), A, eps)
    t_pred = fl.predicted_boundary(fl.curvature(p, A), eps)
    t_quartic = fl.cumulant_boundary(fl.cumulants(p, A), eps)
    quartic_error = (t_quartic / t_emp - 1).abs()
    quadratic_error = (t_pred / t_emp - 1).abs()
    assert quartic_error.median() < 0.3 * quadratic_error.median()


def test_truncated_curvature_never_negative():
    p_k = torch.tensor([[0.5, 0.3]])
    A_k = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    curv = curvature_topk(p_k, A_k)
    assert (curv >= 0).all()
    # Σ_K p a² − (Σ_K p a)² with Σ_K p = 0.8 < 1: a constant a still has curvature 0.8 − 0.64.
    torch.testing.assert_close(curv[0, 0], torch.tensor(0.8 - 0.64, dtype=torch.float64))


# ---------------------------------------------------------------- issue 9: real sizes, padding rows, autograd


def test_full_fisher_in_row_chunks_matches_the_dense_product(monkeypatch):
    """W is read a few rows at a time (no float64 copy of W, no [d, V] temporary); the result is unchanged."""
    import fisherlib.core.fisher

    W, _, p = _problem(P=2, V=50)
    dense = torch.stack([W.T @ torch.diag(p_i) @ W - torch.outer(W.T @ p_i, W.T @ p_i) for p_i in p])
    monkeypatch.setattr(fisherlib.core.fisher, "_ROW_CHUNK", 7)
    torch.testing.assert_close(fl.fisher_pullback(W.float(), p), dense, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fl.fisher_pullback(W, p), dense, rtol=1e-12, atol=1e-12)


def test_padding_rows_are_never_among_the_top_k():
    W, h, _ = _problem(P=3, V=40)
    z = h @ W.T
    z[:, 36:] += 50.0  # rows 36..39 pad the vocabulary, and (untrained) happen to win
    p = torch.softmax(z, -1)
    probs, ids = fl.top_k_distribution(p, 5, n_tokens=36)
    assert (ids < 36).all() and torch.equal(probs, torch.gather(p, -1, ids))
    assert (fl.top_k_distribution(p, 5)[1] >= 36).any()  # without n_tokens they would be picked
    vals, _ = fisher_eigh(W, p, 5, n_tokens=36)
    F_k = fl.fisher_pullback(W, p, top_k=5, n_tokens=36)
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(F_k).flip(-1)[:, :5], rtol=1e-8, atol=1e-10)


def test_inputs_that_require_grad_are_accepted():
    W, h, p = _problem(P=2)
    W = W.float().requires_grad_()  # as a model's weight is
    p = torch.softmax(h.float() @ W.T, -1)  # carries a graph
    U = torch.nn.functional.normalize(torch.randn(2, 3, W.shape[1]), dim=-1)
    A = U @ W.T
    assert A.requires_grad
    results = [
        fl.fisher_pullback(W, p), fl.fisher_pullback(W, p, top_k=4), *fisher_eigh(W, p, 4), fl.curvature(p, A),
        fl.curvature(p, A, top_k=4), fl.cumulants(p, A), fl.entropy(p), *fl.top_k_distribution(p, 3),
        fl.predicted_boundary(fl.curvature(p, A), [0.1]),
    ]  # fmt: skip
    assert not any(result.requires_grad for result in results)


def test_bad_inputs_raise_one_clear_error():
    W, _, p = _problem(P=2)
    with pytest.raises(ValueError, match=r"p must be \[P, V\] to match W \[V, d\] = \(40, 12\)"):
        fl.fisher_pullback(W, p[:, :30])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        fisher_eigh(W, p, 0)
    with pytest.raises(ValueError, match=r"A must be \[P, D, V\] to match p \[P, V\]"):
        fl.curvature(p, torch.zeros(2, 3, 39, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        fl.curvature(p, torch.zeros(2, 3, 40, dtype=torch.long))


def _velocities(P=2, D=3, V=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, D, V, generator=g, dtype=torch.float64)


def test_nan_probabilities_or_weights_raise_instead_of_returning_nan():
    W, _, p = _problem(P=2)
    A = _velocities()
    bad_p = p.clone()
    bad_p[1, 3] = math.nan
    for call in (
        lambda: fl.curvature(bad_p, A), lambda: fl.curvature(bad_p, A, top_k=4), lambda: fl.cumulants(bad_p, A),
        lambda: fl.fisher_pullback(W, bad_p), lambda: fl.fisher_pullback(W, bad_p, top_k=4),
        lambda: fisher_eigh(W, bad_p, 4), lambda: fl.entropy(bad_p), lambda: fl.top_k_distribution(bad_p, 4),
    ):  # fmt: skip
        with pytest.raises(InputError, match=r"p \[.*\] holds 1 NaN"):
            call()
    bad_W, bad_A = W.clone(), A.clone()
    bad_W[7, 2], bad_A[0, 1, 5] = math.inf, -math.inf
    with pytest.raises(InputError, match=r"W \[V, d\] holds 1 \+inf"):
        fl.fisher_pullback(bad_W, p)
    with pytest.raises(InputError, match=r"A \[P, D, V\] holds 1 -inf"):
        fl.curvature(p, bad_A)
    with pytest.raises(InputError, match="eigvals"):
        fl.effective_rank(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(InputError, match="kappas"):
        fl.cumulant_boundary(torch.tensor([[[1.0, math.nan, 0.0]]]), [0.1])


def test_top_k_must_lie_between_one_and_the_vocabulary():
    W, _, p = _problem(P=2, V=40)
    A = _velocities()
    for top_k in (0, 41, True, 2.0):
        for call in (
            lambda: fl.fisher_pullback(W, p, top_k=top_k), lambda: fisher_eigh(W, p, top_k),
            lambda: fl.curvature(p, A, top_k=top_k), lambda: fl.top_k_distribution(p, top_k),
        ):  # fmt: skip
            with pytest.raises(InputError, match="top_k must be"):
                call()
    with pytest.raises(InputError, match=r"at most n_tokens = 36"):
        fl.top_k_distribution(p, 37, n_tokens=36)
    assert fl.top_k_distribution(p, 40)[0].shape == (2, 40)  # top_k = V is the whole distribution


def test_eps_must_be_positive_and_finite_for_the_closed_forms():
    curv = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    kappas = torch.tensor([[[1.0, 0.5, 0.1]]], dtype=torch.float64)
    for eps in (0.0, -0.1, [0.1, math.nan], math.inf, []):
        with pytest.raises(InputError, match="every ε must be a positive finite number"):
            fl.predicted_boundary(curv, eps)
        with pytest.raises(InputError, match="every ε must be a positive finite number"):
            fl.cumulant_boundary(kappas, eps)


def test_mismatched_shapes_name_the_expected_shape():
    W, _, p = _problem(P=2, V=40, d=12)
    A = _velocities(P=2, D=3, V=40)
    with pytest.raises(InputError, match=r"A must be \[P, D, V\] to match p \[P, V\] = \(2, 40\); got A of shape \(1, 3, 40\)"):
        fl.curvature(p, A[:1])
    with pytest.raises(InputError, match=r"tail_mass must be \[P\] to match p_k \[P, k\]"):
        curvature_topk(p[:, :5], A[..., :5], tail_mass=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(InputError, match=r"kappas must be \[\.\.\., 3\]"):
        fl.cumulant_boundary(torch.ones(2, 1, 2, dtype=torch.float64), [0.1])
    with pytest.raises(InputError, match=r"W must be a floating-point tensor \[V, d\] \(2 dimensions\)"):
        fl.fisher_pullback(W[0], p)
    with pytest.raises(InputError, match=r"p must be a torch.Tensor \[P, V\] or \[V\] \(a numpy array is converted\), got list"):
        fl.fisher_pullback(W, p.tolist())


def test_numpy_inputs_are_converted():
    W, _, p = _problem(P=2)
    A = _velocities()
    torch.testing.assert_close(fl.fisher_pullback(W.numpy(), p.numpy()), fl.fisher_pullback(W, p), rtol=0, atol=0)
    torch.testing.assert_close(fl.fisher_pullback(W.numpy(), p, top_k=4), fl.fisher_pullback(W, p, top_k=4), rtol=0, atol=0)
    for got, expected in zip(fisher_eigh(W.numpy(), p.numpy(), 4), fisher_eigh(W, p, 4)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(fl.curvature(p.numpy(), A.numpy(), top_k=4), fl.curvature(p, A, top_k=4), rtol=0, atol=0)
    torch.testing.assert_close(fl.cumulants(p.numpy(), A), fl.cumulants(p, A), rtol=0, atol=0)
    torch.testing.assert_close(fl.entropy(p.numpy()), fl.entropy(p), rtol=0, atol=0)
    curv = fl.curvature(p, A)
    torch.testing.assert_close(fl.predicted_boundary(curv.numpy(), [0.1]), fl.predicted_boundary(curv, [0.1]), rtol=0, atol=0)
