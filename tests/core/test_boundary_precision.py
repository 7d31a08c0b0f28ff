"""t_emp, curvature and cumulants at extreme probabilities against a 60-digit mpmath reference.

Positions with p_top1 ≥ 1 − 1e-11 have boundaries at t ≈ 1e7…1e11, where K(t) ≈ t·c_top1 and
c_top1 = a_top1 − E_p[a] is a difference of two nearly equal numbers; a naive centring loses up to
6e-5 of relative accuracy there (issue 9, item 3). Everything here is checked to rtol 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch

import fisherlib as fl
from fisherlib.core.boundary import reverse_kl_bound
from fisherlib.core.fisher import cumulants, curvature
from helpers.precision import EPS, RTOL, _mp_distribution, mp, mp_boundary, mp_cumulants, mpmath, near_deterministic


@pytest.mark.parametrize("gap", [25.0, 30.0, 34.0])
def test_forward_boundary_at_extreme_probabilities_matches_mpmath(gap):
    z, A = near_deterministic(gap)
    t = fl.empirical_boundary(z, A, EPS)
    p_top1 = torch.softmax(z.double(), -1)[:, 0]
    assert (1 - p_top1).max() < 1e-8  # the regime of the issue: p_top1 within 1e-8 … 1e-14 of 1
    worst, largest_t = 0.0, 0.0
    for i in range(z.shape[0]):
        for j in range(A.shape[1]):
            for e, eps in enumerate(EPS):
                reference = mp_boundary(z[i], A[i, j], eps)
                assert math.isfinite(t[i, j, e])
                worst = max(worst, abs(t[i, j, e].item() / reference - 1))
                largest_t = max(largest_t, reference)
    assert largest_t > 1e7, "no boundary in the far regime: the test would not test the issue"
    assert worst < RTOL, f"max relative error {worst:.2e}"


def test_reverse_boundary_at_extreme_probabilities_matches_mpmath():
    z, A = near_deterministic(30.0, P=2)
    eps = [1e-3, 1e-2]
    t = fl.empirical_boundary(z, A, eps, divergence="reverse")
    bound = reverse_kl_bound(z, A)
    checked = 0
    for i in range(z.shape[0]):
        for j in range(A.shape[1]):
            for e, target in enumerate(eps):
                if target >= bound[i, j]:
                    assert math.isinf(t[i, j, e])
                    continue
                reference = mp_boundary(z[i], A[i, j], target, "reverse")
                assert abs(t[i, j, e].item() / reference - 1) < RTOL
                checked += 1
    assert checked >= 4


def test_curvature_and_cumulants_at_extreme_probabilities_match_mpmath():
    z, A = near_deterministic(30.0, P=2)
    p = torch.softmax(z.double(), -1)
    curv = curvature(p, A)
    kappas = cumulants(p, A)
    for i in range(z.shape[0]):
        for j in range(A.shape[1]):
            k2, k3, k4 = mp_cumulants(z[i], A[i, j])
            assert abs(curv[i, j].item() / k2 - 1) < 1e-9
            assert abs(kappas[i, j, 0].item() / k2 - 1) < 1e-9
            assert abs(kappas[i, j, 1].item() / k3 - 1) < 1e-6
            assert abs(kappas[i, j, 2].item() / k4 - 1) < 1e-6


def test_truncated_curvature_at_extreme_probabilities_matches_mpmath():
    """uᵀF_k u = Σ_K p a² − (Σ_K p a)²: the textbook difference cancels all digits when p_top1 ≈ 1."""
    z, A = near_deterministic(30.0, P=2, V=60)
    top_k = 8
    p = torch.softmax(z.double(), -1)
    curv_k = curvature(p, A, top_k=top_k)
    ids = torch.topk(p, top_k, -1).indices
    with mp.workdps(60):
        for i in range(z.shape[0]):
            probs, _ = _mp_distribution(z[i], A[i, 0])
            for j in range(A.shape[1]):
                a = [mpmath.mpf(float(A[i, j, v])) for v in ids[i].tolist()]
                pk = [probs[v] for v in ids[i].tolist()]
                exact = mpmath.fsum(q * x**2 for q, x in zip(pk, a)) - mpmath.fsum(q * x for q, x in zip(pk, a)) ** 2
                assert abs(curv_k[i, j].item() / float(exact) - 1) < 1e-9
