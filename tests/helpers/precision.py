"""Positions with near-deterministic distributions and a 60-digit mpmath reference for their boundaries."""

from __future__ import annotations

import pytest
import torch

mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp

EPS = [1e-3, 1e-2, 1.0]
RTOL = 1e-6


def near_deterministic(gap: float, P: int = 3, D: int = 4, V: int = 40, seed: int = 0):
    """Return float32 `z [P, V]` with token 0 `gap` nats above the rest, and float32 `A [P, D, V]`.

    Half of the directions make token 0 the fastest too (a_0 = max a), which puts the boundary at
    t ≈ ε / c_0 (1e7…1e11); the others let another token overtake it at moderate t.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(P, V, generator=g, dtype=torch.float64)
    z[:, 0] += gap
    A = 2 * torch.randn(P, D, V, generator=g, dtype=torch.float64)
    A[:, ::2, 0] = A[:, ::2, 1:].amax(-1) + 0.5
    return z.float(), A.float()


def _mp_distribution(z, a):
    with mp.workdps(60):
        z = [mpmath.mpf(float(x)) for x in z]
        a = [mpmath.mpf(float(x)) for x in a]
        top = max(z)
        weights = [mpmath.exp(x - top) for x in z]
        total = mpmath.fsum(weights)
        p = [w / total for w in weights]
        mean = mpmath.fsum(pi * ai for pi, ai in zip(p, a))
        return p, [ai - mean for ai in a]


def mp_boundary(z, a, eps: float, divergence: str = "forward") -> float:
    """Return the t > 0 with KL = ε, by doubling and 120 bisection steps in 60-digit arithmetic."""
    with mp.workdps(60):
        p, c = _mp_distribution(z, a)

        def divergence_at(t):
            weights = [pi * mpmath.exp(t * ci) for pi, ci in zip(p, c)]
            total = mpmath.fsum(weights)
            K = mpmath.log(total)
            if divergence == "forward":
                return K
            return t * mpmath.fsum(w * ci for w, ci in zip(weights, c)) / total - K

        target = mpmath.mpf(eps)
        lo, hi = mpmath.mpf(0), mpmath.mpf(1)
        while divergence_at(hi) < target:
            lo, hi = hi, hi * 8
        for _ in range(120):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if divergence_at(mid) < target else (lo, mid)
        return float((lo + hi) / 2)


def mp_cumulants(z, a) -> tuple[float, float, float]:
    with mp.workdps(60):
        p, c = _mp_distribution(z, a)
        m2, m3, m4 = (mpmath.fsum(pi * ci**n for pi, ci in zip(p, c)) for n in (2, 3, 4))
        return float(m2), float(m3), float(m4 - 3 * m2**2)
