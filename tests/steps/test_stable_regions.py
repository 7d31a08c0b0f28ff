"""Notebook 07's stable regions (`fisherlib.steps.stable_regions`): exact slices, Fisher ellipses, closed contours."""

import numpy as np
import pytest
import torch

import fisherlib as fl
from fisherlib.steps import stable_regions as sr


def _head(V=50, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g)
    b = 0.1 * torch.randn(V, generator=g)
    h = 1.5 * torch.randn(d, generator=g)
    u1, u2 = torch.nn.functional.normalize(torch.randn(2, d, generator=g, dtype=torch.float64), dim=-1)
    return W, b, h, u1, u2


def test_kl_slice_is_zero_at_h_and_matches_kl_along_line():
    W, b, h, u1, u2 = _head()
    x, y, kl = sr.kl_slice(W, b, h, u1, u2, extent=2.0, n_grid=41, memory_budget=4096)  # tiny budget: many chunks
    centre = 20
    assert x[centre] == 0 and y[centre] == 0 and kl[centre, centre] == pytest.approx(0, abs=1e-14)
    z = (W.double() @ h.double() + b.double())[None]
    along_x = fl.kl_along_line(z, (W.double() @ u1)[None, None], torch.as_tensor(x))[0, 0].numpy()
    along_y = fl.kl_along_line(z, (W.double() @ u2)[None, None], torch.as_tensor(y))[0, 0].numpy()
    np.testing.assert_allclose(kl[centre, :], along_x, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(kl[:, centre], along_y, rtol=1e-9, atol=1e-13)
    _, _, reverse = sr.kl_slice(W, b, h, u1, u2, extent=2.0, n_grid=41, divergence="reverse")
    along_reverse = fl.kl_along_line(z, (W.double() @ u1)[None, None], torch.as_tensor(x), divergence="reverse")
    along_reverse = along_reverse[0, 0].numpy()
    np.testing.assert_allclose(reverse[centre, :], along_reverse, rtol=1e-9, atol=1e-13)


def test_fisher_ellipse_points_lie_on_the_quadratic_level_set():
    W, b, h, u1, u2 = _head()
    p = torch.softmax(W.double() @ h.double() + b.double(), -1)
    F = fl.fisher_pullback(W, p[None])[0]
    F2 = sr.restrict_to_plane(F, u1, u2)
    np.testing.assert_allclose(sr.plane_fisher(W, b, h, u1, u2), F2, rtol=1e-9, atol=1e-12)
    F_k = fl.fisher_pullback(W, p[None], top_k=7)[0]
    F2_k = sr.restrict_to_plane(F_k, u1, u2)
    np.testing.assert_allclose(sr.plane_fisher(W, b, h, u1, u2, top_k=7), F2_k, rtol=1e-9, atol=1e-12)
    for eps in (0.01, 1.0):
        points = sr.fisher_ellipse(F, u1, u2, eps, n_points=64)
        np.testing.assert_allclose(0.5 * np.einsum("ni,ij,nj->n", points, F2, points), eps, rtol=1e-10)
    # At small ε the true KL on the ellipse is ε to second order.
    points = sr.fisher_ellipse(F, u1, u2, 1e-4, n_points=16)
    z = W.double() @ h.double() + b.double()
    for x, y in points:
        q = torch.log_softmax(z + W.double() @ (x * u1 + y * u2), -1)
        kl = float((p * (torch.log(p) - q)).sum())
        assert kl == pytest.approx(1e-4, rel=0.05)


def test_stable_region_slices_and_figures():
    import matplotlib

    matplotlib.use("Agg")
    from fisherlib.report import plots

    W, b, h, *_ = _head(V=40, d=12)
    slices = sr.stable_region_slices(W, b, h, eps_levels=(0.01, 0.1), top_k=6, n_grid=31)
    assert len(slices) == 2
    for plane in slices:
        assert plane.kl.shape == (31, 31) and np.isfinite(plane.kl).all()
        assert set(plane.ellipses) == {0.01, 0.1}
        assert abs(plane.x).max() >= abs(plane.ellipses[0.1][:, 0]).max()  # the largest ellipse fits
    fig = plots.plot_stable_regions([("a position", slices)])
    assert len(fig.axes) == 2
    matplotlib.pyplot.close("all")


def test_slices_grow_until_the_largest_contour_closes_and_axes_compare_with_the_ellipse():
    W, b, h, *_ = _head(V=40, d=12, seed=3)
    slices = sr.stable_region_slices(W, b, h, eps_levels=(0.1, 1.0), top_k=6, n_grid=41)
    for plane in slices:
        assert plane.closed
        border = np.r_[plane.kl[0], plane.kl[-1], plane.kl[:, 0], plane.kl[:, -1]]
        assert border.min() >= 1.0
    axes = sr.axis_boundaries(W, b, h, slices, title="p")
    assert len(axes) == 2 * 4 * 2 and set(axes.axis) == {"+u1", "−u1", "+u2", "−u2"}
    small = axes[axes.eps == 0.1]
    assert ((small.ratio > 0.5) & (small.ratio < 2)).all()
    # t_ellipse is where ½ t² uᵀFu = ε along the axis.
    F2 = slices[0].fisher_2x2
    row = axes[(axes.axis == "+u1") & (axes.eps == 1.0)].iloc[0]
    assert row.t_ellipse == pytest.approx(np.sqrt(2 / F2[0, 0]))
