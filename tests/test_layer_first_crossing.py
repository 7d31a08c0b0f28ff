"""`layer_boundary`'s first crossing (`fisherlib.layers._first_crossing`) on lines built to be non-monotone.

Synthetic lines: `D(t) = ½ s² + bump(s)`, `s = sqrt(κ) t`, a Gaussian bump whose window above ε lies between
two points of the scan (ratio √2), with its exact first crossing from a dense grid and bisection. Real lines:
inner layers of a small float64 LM, against a dense full-context brute force.
"""

from __future__ import annotations

import math

import pytest
import torch

from fisherlib import layers as L

RATIO = 2**0.5


class Bumps:
    """Lines `D(s) = ½ s² + h exp(−(s − c)² / 2w²)`, `s = sqrt(κ) t`, with exact values and slopes."""

    def __init__(self, kappa, c, w, h):
        self.kappa, self.c, self.w, self.h = (torch.as_tensor(x, dtype=torch.float64) for x in (kappa, c, w, h))
        self.calls = 0

    def value_slope(self, lines, t):
        k, c, w, h = self.kappa[lines], self.c[lines], self.w[lines], self.h[lines]
        s = torch.sqrt(k) * t
        g = h * torch.exp(-((s - c) ** 2) / (2 * w**2))
        return 0.5 * s**2 + g, torch.sqrt(k) * (s - g * (s - c) / w**2)

    def evaluate(self, lines, t, slopes=True):
        self.calls += 1
        value, slope = self.value_slope(lines, t)
        return value, slope if slopes else None

    def first_crossing(self, eps: float) -> torch.Tensor:
        """The exact first crossing per line: a grid of 10⁵ points in s, then 60 bisection steps."""
        n = len(self.kappa)
        s = torch.linspace(0, 4 * math.sqrt(2 * eps) + 4, 100_001, dtype=torch.float64)
        lines = torch.arange(n)
        value = 0.5 * s**2 + self.h[:, None] * torch.exp(-((s - self.c[:, None]) ** 2) / (2 * self.w[:, None] ** 2))
        k = (value >= eps).long().argmax(1)
        lo, hi = s[k - 1], s[k]
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.value_slope(lines, mid / torch.sqrt(self.kappa))[0] < eps
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2 / torch.sqrt(self.kappa)


def _solve(bumps, eps, rtol=1e-6, cap=1e6):
    n = len(bumps.kappa)
    return L._first_crossing(bumps.evaluate, bumps.kappa, torch.full((n,), cap, dtype=torch.float64),
                             torch.as_tensor(eps, dtype=torch.float64), rtol, RATIO)  # fmt: skip


def _windows(n=40, seed=0):
    """Bumps peaking above ε = 1 between the scan points s = 2^{-1/2} and 1, falling at s = 1."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    c = u(0.85, 0.90)
    w = u(0.06, 0.09)
    peak = u(1.02, 1.2)  # the bump's top above ε = 1
    h = peak - 0.5 * c**2
    kappa = 10 ** u(-2, 3)
    return Bumps(kappa, c, w, h)


def test_a_window_above_eps_between_scan_points_is_found():
    bumps = _windows()
    value, slope = bumps.value_slope(torch.arange(40), 1 / torch.sqrt(bumps.kappa))
    assert (value < 1).all() and (slope < 0).all()  # the scan point after the window: below ε, falling
    truth = bumps.first_crossing(1.0)
    assert (truth * torch.sqrt(bumps.kappa) < 0.9).all() and (truth * torch.sqrt(bumps.kappa) > 2**-0.5).all()
    for eps in ([1.0], [0.01, 1.0], [1.0, 5.0]):
        t, _, unconverged, unresolved = _solve(bumps, eps)
        e = eps.index(1.0)
        assert not unconverged.any() and not unresolved.any()
        assert ((t[:, e] - truth).abs() <= 1e-6 * truth).all(), (t[:, e] / truth - 1).abs().max()


def test_the_answer_for_one_eps_does_not_depend_on_the_others():
    bumps = _windows(seed=1)
    alone = _solve(bumps, [1.0])[0][:, 0]
    for others in ([0.01, 1.0], [1.0, 5.0], [1e-4, 0.3, 1.0, 2.0], [5.0, 1.0, 0.02]):
        with_others = _solve(bumps, others)[0][:, others.index(1.0)]
        assert torch.equal(with_others, alone), others


@pytest.mark.parametrize("rtol", [1e-6, 1e-8, 1e-10])
def test_rtol_holds_on_smooth_and_bumpy_lines(rtol):
    g = torch.Generator().manual_seed(3)
    n = 60
    kappa = 10 ** (-2 + 5 * torch.rand(n, generator=g, dtype=torch.float64))
    c = 0.2 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
    w = torch.minimum(0.05 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64), c / 5)  # D(0) = 0 to 1e-5
    h = torch.where(torch.arange(n) % 2 == 0, 0.0, 2 * torch.rand(n, generator=g, dtype=torch.float64))
    bumps = Bumps(kappa, c, w, h)
    eps = [0.01, 0.5, 1.0, 3.0]
    t, _, unconverged, unresolved = _solve(bumps, eps, rtol=rtol)
    assert not unconverged.any() and not unresolved.any()
    for e, x in enumerate(eps):
        truth = bumps.first_crossing(x)
        err = ((t[:, e] - truth).abs() / truth).max()
        assert err <= rtol, (x, float(err))


def test_an_interval_that_cannot_be_resolved_is_reported():
    """Slopes that flip sign at every point, values just below ε: every split stays suspect."""

    def evaluate(lines, t, slopes=True):
        s = t.clone()
        inside = (s > 0.6) & (s < 0.8)  # holds the scan point 2^{-1/2}
        value = torch.where(inside, torch.full_like(s, 1 - 1e-12), 0.5 * s**2)
        slope = torch.where(inside, 1e3 * torch.sign(torch.sin(1e9 * s)), s)
        return value, slope if slopes else None

    curv = torch.ones(1, dtype=torch.float64)
    t, _, unconverged, unresolved = L._first_crossing(evaluate, curv, torch.full((1,), 1e6, dtype=torch.float64),
                                                      torch.tensor([1.0], dtype=torch.float64), 1e-12, RATIO)  # fmt: skip
    assert unresolved[0, 0] >= 1 and not unconverged.any()
    assert abs(float(t[0, 0]) - math.sqrt(2)) <= 1e-12 * math.sqrt(2)  # past the unresolved interval: ½ s² = 1
