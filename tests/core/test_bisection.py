"""fisherlib.core.bisection: the brute-force reference boundary, checked where the answer is known exactly."""

import math

import torch

from fisherlib.core.bisection import bisection_boundary


def test_it_finds_where_a_known_divergence_reaches_each_target():
    curvature = torch.tensor([[0.5, 2.0, 800.0]], dtype=torch.float64)  # t* = sqrt(2ε / κ) per line
    targets = torch.tensor([[0.01, 1.0, 5.0]], dtype=torch.float64)
    t = bisection_boundary(lambda t: 0.5 * curvature * t**2, targets, torch.full_like(curvature, 1e-3))
    expected = torch.sqrt(2 * targets / curvature)
    torch.testing.assert_close(t, expected, rtol=1e-12, atol=0)


def test_the_answer_keeps_the_dtype_and_shape_of_start():
    start = torch.full((2, 3), 0.01, dtype=torch.float32)
    t = bisection_boundary(lambda t: t, 0.25, start, n_bisect=30)
    assert t.dtype == torch.float32 and t.shape == (2, 3)
    assert torch.allclose(t, torch.full((2, 3), 0.25), rtol=1e-6)


def test_a_line_that_never_reaches_the_target_runs_out_of_doublings():
    t = bisection_boundary(lambda t: torch.zeros_like(t), 1.0, torch.ones(1, dtype=torch.float64), max_doublings=10)
    assert t.item() == 2.0**10  # bracketed nowhere: lo and hi both end at the last upper end
    assert math.isfinite(t.item())
