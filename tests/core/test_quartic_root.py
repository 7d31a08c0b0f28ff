"""`cumulant_boundary` returns the smallest positive real root of the quartic Taylor series, however narrow or far."""

import math

import numpy as np
import pytest
import torch

from fisherlib.core.fisher import cumulant_boundary


def smallest_positive_root(k2, k3, k4, eps):
    roots = np.roots([k4 / 24, k3 / 6, k2 / 2, 0.0, -eps])
    real = roots[(np.abs(roots.imag) <= 1e-9 * np.abs(roots)) & (roots.real > 0)].real
    return real.min() if real.size else math.inf


def _solve(k2, k3, k4, eps):
    return float(cumulant_boundary(torch.tensor([[[k2, k3, k4]]], dtype=torch.float64), [eps])[0, 0, 0])


def test_random_quartics_match_numpy_roots():
    rng = np.random.default_rng(0)
    n = 3000
    kappas = np.c_[rng.lognormal(size=n), 3 * rng.normal(size=n), 5 * rng.normal(size=n)]
    eps = [0.01, 0.3, 1.0, 5.0]
    got = cumulant_boundary(torch.tensor(kappas)[:, None, :], eps)[:, 0].numpy()
    expected = np.array([[smallest_positive_root(*k, e) for e in eps] for k in kappas])
    assert (np.isfinite(got) == np.isfinite(expected)).all()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-9)


def test_a_narrow_window_between_two_close_roots_is_not_missed():
    # f(s) = y s⁴ + x s³ + s² − 1 touches 0 at s0 (a double root) when x, y solve f(s0) = f'(s0) = 0;
    # nudging y up opens a window of width ~1e-4 around s0 where f > 0: the smallest root is its left end.
    s0 = 1.7
    A = np.array([[s0**4, s0**3], [4 * s0**2, 3 * s0]])
    y, x = np.linalg.solve(A, [1 - s0**2, -2])
    y += 1e-9
    k2, eps = 2.0, 0.5  # t_pred = sqrt(2ε/κ₂) = 1/√2
    t_pred = math.sqrt(2 * eps / k2)
    k3, k4 = 3 * k2 * x / t_pred, 12 * k2 * y / t_pred**2
    expected = smallest_positive_root(k2, k3, k4, eps)
    assert expected == pytest.approx(s0 * t_pred, rel=1e-3)
    assert _solve(k2, k3, k4, eps) == pytest.approx(expected, rel=1e-9)


def test_a_root_far_beyond_the_quadratic_one_is_found():
    # Negative skew holds the quartic below ε until s ≈ 400 t_pred, then positive kurtosis lifts it.
    k2, eps = 1.0, 0.5  # t_pred = 1
    k3, k4 = 3 * k2 * (-1.0), 12 * k2 * 0.0025  # x = −1, y = 1/400
    expected = smallest_positive_root(k2, k3, k4, eps)
    assert 100 < expected < math.inf
    assert _solve(k2, k3, k4, eps) == pytest.approx(expected, rel=1e-9)


def test_no_positive_root_and_zero_curvature_give_inf():
    assert _solve(1.0, -3.0, -12.0, 5.0) == math.inf  # bends down before reaching ε
    assert _solve(0.0, 1.0, 1.0, 1.0) == math.inf  # κ₂ = 0: no second-order boundary to scale by
    assert _solve(2.0, 0.0, 0.0, 1.0) == pytest.approx(1.0)  # pure quadratic: t_pred
