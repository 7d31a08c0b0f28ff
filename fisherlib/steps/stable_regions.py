"""Notebook 07: stable regions, the true divergence on 2-D slices through `h` against the Fisher ellipses.

The region `{h + x : KL(p ‖ softmax(W(h + x) + b)) ≤ ε}` is, to second order, the ellipsoid
`½ xᵀF x ≤ ε` with axes along F's eigenvectors and semi-axis lengths `sqrt(2ε/λ)` (docs/method.md §12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..core.errors import DegenerateInputError

DEFAULT_SLICE_BUDGET = 1 << 28  # bytes of float64 [points, V] logits alive at once in `kl_slice`


def _as_double(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _extents(extent) -> tuple[float, float]:
    if np.isscalar(extent):
        return float(extent), float(extent)
    x_extent, y_extent = extent
    return float(x_extent), float(y_extent)


def kl_slice(
    W,
    b,
    h,
    u1,
    u2,
    extent,
    n_grid: int = 161,
    divergence: str = "forward",
    memory_budget: int = DEFAULT_SLICE_BUDGET,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return `(x [n], y [n], kl [n, n])`: the exact divergence on the plane `h + x u1 + y u2`.

    `kl[i, j]` is `KL(p ‖ softmax(W(h + x_j u1 + y_i u2) + b))` (rows y, columns x: matplotlib's
    contour layout), with `x, y` spanning `[−extent, extent]` (`extent` a number or an `(x, y)` pair)
    in residual-stream units. Computed densely in float64 through `log_softmax`: the logits move by
    `x Wu1 + y Wu2`, so W is applied only twice. Grid points are processed in chunks so that no more
    than `memory_budget` bytes of `[points, V]` work arrays are alive. `divergence="reverse"` gives
    `KL(q ‖ p)`.
    """
    plane = _Plane(W, b, h, u1, u2, divergence)
    x, y = plane.axes(extent, n_grid)
    xs, ys = x.repeat(n_grid), y.repeat_interleave(n_grid)  # row-major: y outer, x inner
    kl = plane.kl(xs, ys, memory_budget)
    return x.numpy(), y.numpy(), kl.reshape(n_grid, n_grid).numpy()


class _Plane:
    """The exact divergence at points `h + x u1 + y u2` of one plane (logits `z + x Wu1 + y Wu2`, float64)."""

    def __init__(self, W, b, h, u1, u2, divergence: str = "forward") -> None:
        if divergence not in ("forward", "reverse"):
            raise ValueError(f"divergence must be 'forward' or 'reverse', not {divergence!r}")
        W64, h64 = _as_double(W), _as_double(h).reshape(-1)
        self.z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
        self.a1, self.a2 = W64 @ _as_double(u1).reshape(-1), W64 @ _as_double(u2).reshape(-1)
        self.log_p = torch.log_softmax(self.z, -1)
        self.p = self.log_p.exp()
        self.divergence = divergence

    @staticmethod
    def axes(extent, n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid's offsets `x [n]`, `y [n]`: symmetric, with an exact 0 in the middle when `n_grid` is odd."""
        x_extent, y_extent = _extents(extent)
        unit = (2 * torch.arange(n_grid, dtype=torch.float64) - (n_grid - 1)) / max(n_grid - 1, 1)
        return x_extent * unit, y_extent * unit

    def kl(self, xs: torch.Tensor, ys: torch.Tensor, memory_budget: int = DEFAULT_SLICE_BUDGET) -> torch.Tensor:
        """The divergence `[n]` at the points `(xs[i], ys[i])`, clamped at 0 (rounding below it)."""
        kl = torch.empty(len(xs), dtype=torch.float64)
        per_chunk = max(1, memory_budget // (8 * 3 * self.z.numel()))
        for start in range(0, kl.numel(), per_chunk):
            stop = min(start + per_chunk, kl.numel())
            log_q = torch.log_softmax(self.z + xs[start:stop, None] * self.a1 + ys[start:stop, None] * self.a2, -1)
            if self.divergence == "forward":
                kl[start:stop] = (self.p * (self.log_p - log_q)).sum(-1)
            else:
                kl[start:stop] = (log_q.exp() * (log_q - self.log_p)).sum(-1)
        return kl.clamp_min(0)

    def open_sides(self, extent, n_grid: int, level: float) -> tuple[bool, bool]:
        """Whether the contour `level` crosses the grid's left or right side (x), or its top or bottom (y).

        Reads the grid's border alone (the same points, the same values, as the full grid's border).
        """
        x, y = self.axes(extent, n_grid)
        sides_x = self.kl(torch.cat([x[:1].expand(n_grid), x[-1:].expand(n_grid)]), torch.cat([y, y]))
        sides_y = self.kl(torch.cat([x, x]), torch.cat([y[:1].expand(n_grid), y[-1:].expand(n_grid)]))
        return bool(sides_x.min() < level), bool(sides_y.min() < level)


def restrict_to_plane(F, u1, u2) -> np.ndarray:
    """Return the 2×2 restriction `F₂ = Uᵀ F U` of `F [d, d]` to the plane spanned by `U = [u1 u2]`."""
    U = torch.stack([_as_double(u1).reshape(-1), _as_double(u2).reshape(-1)], 1)
    F2 = U.T @ _as_double(F) @ U
    return ((F2 + F2.T) / 2).numpy()


def plane_fisher(W, b, h, u1, u2, top_k: int | None = None) -> np.ndarray:
    """Return `F₂ = Uᵀ F U` (2×2) without forming `F`: the covariance of `(Wu1, Wu2)` under `p`.

    With `top_k`, the study's truncation `F_k` (top-k tokens, probabilities not renormalised).
    """
    W64, h64 = _as_double(W), _as_double(h).reshape(-1)
    z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
    p = torch.softmax(z, -1)
    a = torch.stack([W64 @ _as_double(u1).reshape(-1), W64 @ _as_double(u2).reshape(-1)], 1)  # [V, 2]
    if top_k is not None:
        p, ids = torch.topk(p, min(int(top_k), p.numel()))
        a = a[ids]
    mean = p @ a
    F2 = (a * p[:, None]).T @ a - torch.outer(mean, mean)
    return ((F2 + F2.T) / 2).numpy()


def ellipse_points(F2, eps: float, n_points: int = 200) -> np.ndarray:
    """Return `[n_points, 2]` points of `{x : ½ xᵀ F₂ x = ε}` for a positive-definite 2×2 `F₂`.

    The semi-axes lie along F₂'s eigenvectors with lengths `sqrt(2ε/λ)`.
    """
    F2 = np.asarray(F2, dtype=float)
    eigvals, eigvecs = np.linalg.eigh((F2 + F2.T) / 2)
    if eigvals.min() <= 0:
        raise DegenerateInputError(f"the plane's Fisher restriction has eigenvalues {eigvals}: the level set is unbounded")
    theta = np.linspace(0, 2 * np.pi, n_points)
    circle = np.stack([np.cos(theta), np.sin(theta)], 1)
    return (circle * np.sqrt(2 * eps / eigvals)) @ eigvecs.T


def fisher_ellipse(F, u1, u2, eps: float, n_points: int = 200) -> np.ndarray:
    """Return `[n_points, 2]` plane coordinates `(x, y)` with `½ (xu1 + yu2)ᵀ F (xu1 + yu2) = ε`."""
    return ellipse_points(restrict_to_plane(F, u1, u2), eps, n_points)


@dataclass
class PlaneSlice:
    """The true divergence on one plane through `h` and the ellipses that the Fisher form predicts.

    Attributes:
        title: what the plane is (for figure panels).
        x_label, y_label: the directions `u1`, `u2` spanning it.
        x, y: grid offsets `[n]` along `u1`, `u2` in residual-stream units.
        kl: `[n, n]` exact divergence, rows along y.
        eps_levels: the thresholds drawn.
        ellipses: ε → `[n_points, 2]` points of `½ xᵀF₂x = ε` (full F).
        ellipses_topk: the same for the study's `F_k`.
        fisher_2x2, fisher_topk_2x2: F₂ and its top-k counterpart.
        u1, u2: the unit directions `[d]` spanning the plane.
        closed: whether every drawn level's true contour lies inside the grid (KL ≥ the largest ε on
            the whole border; the sublevel sets of KL are convex, so this is exact).
    """

    title: str
    x_label: str
    y_label: str
    x: np.ndarray
    y: np.ndarray
    kl: np.ndarray
    eps_levels: tuple[float, ...]
    ellipses: dict[float, np.ndarray] = field(default_factory=dict)
    ellipses_topk: dict[float, np.ndarray] = field(default_factory=dict)
    fisher_2x2: np.ndarray | None = None
    fisher_topk_2x2: np.ndarray | None = None
    u1: np.ndarray | None = None
    u2: np.ndarray | None = None
    closed: bool = True


def stable_region_slices(
    W,
    b,
    h,
    eps_levels: Sequence[float],
    top_k: int = 64,
    n_grid: int = 161,
    seed: int = 0,
    margin: float = 1.15,
    n_points: int = 240,
    max_growth: int = 8,
) -> list[PlaneSlice]:
    """Return two slices through `h` (docs/method.md §12): F_k's top two eigenvectors, and the top one with a random direction.

    The random direction is a seeded Gaussian with its component along the top eigenvector removed,
    so the axes are orthogonal. Each plane's extent along each axis starts at `margin` times the
    farther of the largest-ε full-F ellipse and the true boundary along that axis (both signs); the
    axis whose border the largest level's true contour still crosses grows by 1.5× (up to
    `max_growth` times) until the contour is closed inside the grid (`PlaneSlice.closed`). Ellipses come from the full F (the exact second-order form) and
    from F_k (the study's truncation).
    """
    from ..core.boundary import empirical_boundary
    from ..core.fisher import fisher_eigh

    W64, h64 = _as_double(W), _as_double(h).reshape(-1)
    z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
    p = torch.softmax(z, -1)
    _, eigvecs = fisher_eigh(W64, p[None], top_k)
    top, second = eigvecs[0, :, 0], eigvecs[0, :, 1]
    generator = torch.Generator().manual_seed(int(seed))
    random = torch.randn(h64.numel(), generator=generator, dtype=torch.float64)
    random = random - (random @ top) * top
    random = random / random.norm()
    eps_levels = tuple(float(e) for e in sorted(eps_levels))
    slices = []
    for title, y_label, u2 in (
        ("top two eigenvectors of $F_k$", "eigenvector 2", second),
        ("top eigenvector and a random direction", "random ⊥ eigenvector 1", random),
    ):
        fisher_2x2 = plane_fisher(W64, b, h64, top, u2)
        fisher_topk_2x2 = plane_fisher(W64, b, h64, top, u2, top_k=top_k)
        ellipses = {e: ellipse_points(fisher_2x2, e, n_points) for e in eps_levels}
        try:
            ellipses_topk = {e: ellipse_points(fisher_topk_2x2, e, n_points) for e in eps_levels}
        except ValueError:  # F_k can be singular in this plane (a direction orthogonal to W_K)
            ellipses_topk = {}
        axes = torch.stack([top, -top, u2, -u2])  # [4, d]
        t_true = empirical_boundary(z[None], (axes @ W64.T)[None], [eps_levels[-1]])[0, :, 0].numpy()
        t_true = np.where(np.isfinite(t_true), t_true, 0.0)
        reach = np.maximum(np.abs(ellipses[eps_levels[-1]]).max(0), [t_true[:2].max(), t_true[2:].max()]) * margin
        # The extent grows until the largest level's contour is closed: only the grid's border is read for
        # that, and the whole grid once, at the extent found.
        plane = _Plane(W64, b, h64, top, u2)
        for _ in range(max_growth + 1):
            open_x, open_y = plane.open_sides((reach[0], reach[1]), n_grid, eps_levels[-1])
            closed = not (open_x or open_y)
            if closed:
                break
            reach = reach * np.array([1.5 if open_x else 1.0, 1.5 if open_y else 1.0])
        else:
            reach = reach / np.array([1.5 if open_x else 1.0, 1.5 if open_y else 1.0])  # the last extent measured
        x, y, kl = kl_slice(W64, b, h64, top, u2, (reach[0], reach[1]), n_grid)
        slices.append(
            PlaneSlice(
                title,
                "eigenvector 1",
                y_label,
                x,
                y,
                kl,
                eps_levels,
                ellipses,
                ellipses_topk,
                fisher_2x2,
                fisher_topk_2x2,
                top.numpy(),
                u2.numpy(),
                bool(closed),
            )  # fmt: skip
        )
    return slices


def axis_boundaries(W, b, h, slices: Sequence[PlaneSlice], title: str = "") -> pd.DataFrame:
    """Return, along ±u1 and ±u2 of each slice, the true boundary against the full-F ellipse's, per drawn ε.

    `t_ellipse = sqrt(2ε / uᵀFu)` is where the ellipse crosses the axis (the closed form with the
    full F); `t_true` is the exact boundary (`empirical_boundary`). `ratio = t_true / t_ellipse`:
    above 1 the true region reaches farther than the ellipse. `reach_ratio` is the ellipse's
    semi-axis along u2 over that along u1 (how much longer the second axis is). Columns: title
    (`title` + the plane), eps, axis, t_ellipse, t_true, ratio, reach_ratio.
    """
    from ..core.boundary import empirical_boundary

    W64, h64 = _as_double(W), _as_double(h).reshape(-1)
    z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
    rows = []
    for plane in slices:
        u1, u2 = torch.as_tensor(plane.u1, dtype=torch.float64), torch.as_tensor(plane.u2, dtype=torch.float64)
        axes = {"+u1": u1, "−u1": -u1, "+u2": u2, "−u2": -u2}
        A = torch.stack(list(axes.values())) @ W64.T
        t_true = empirical_boundary(z[None], A[None], list(plane.eps_levels))[0].numpy()  # [4, E]
        F2 = np.asarray(plane.fisher_2x2, dtype=float)
        curvatures = {"+u1": F2[0, 0], "−u1": F2[0, 0], "+u2": F2[1, 1], "−u2": F2[1, 1]}
        reach_ratio = float(np.sqrt(F2[0, 0] / F2[1, 1])) if F2[1, 1] > 0 else float("inf")
        for a, name in enumerate(axes):
            for e, eps in enumerate(plane.eps_levels):
                t_ellipse = float(np.sqrt(2 * eps / curvatures[name])) if curvatures[name] > 0 else float("inf")
                rows.append(
                    {
                        "title": f"{title}{': ' if title else ''}{plane.title}",
                        "eps": float(eps),
                        "axis": name,
                        "t_ellipse": t_ellipse,
                        "t_true": float(t_true[a, e]),
                        "ratio": float(t_true[a, e] / t_ellipse),
                        "reach_ratio": reach_ratio,
                    }
                )
    return pd.DataFrame(rows)


def representative_positions(
    positions: pd.DataFrame, by: str = "entropy", quantiles: Sequence[float] = (0.1, 0.9), seed: int | None = None
) -> pd.DataFrame:
    """Return the positions whose `by` is nearest to each of its `quantiles` (one row each, in order).

    With `seed`, only that seed's positions are considered. Adds a `quantile` column.
    """
    pool = positions if seed is None else positions[positions["seed"] == seed]
    if pool.empty:
        raise ValueError(f"no positions for seed {seed}")
    values = pool[by].to_numpy(float)
    rows = []
    for q in quantiles:
        target = np.quantile(values, q)
        rows.append(pool.iloc[[int(np.argmin(np.abs(values - target)))]].assign(quantile=float(q)))
    return pd.concat(rows, ignore_index=True)


def contour_levels(eps_grid: Sequence[float], low: float, high: float, n_levels: int = 3) -> list[float]:
    """Return `n_levels` thresholds of `eps_grid` in `[low, high]`, as evenly spaced in log ε as the grid allows."""
    candidates = sorted(e for e in eps_grid if low <= e <= high)
    if len(candidates) <= n_levels:
        return candidates
    targets = np.geomspace(candidates[0], candidates[-1], n_levels)
    log_candidates = np.log(candidates)
    return sorted({candidates[int(np.argmin(np.abs(log_candidates - np.log(t))))] for t in targets})


def sample_row(table: pd.DataFrame, position: int) -> int:
    """Return the row number of `position` in a sample's table (the row of its residual in `sample.h`)."""
    rows = np.flatnonzero(table["position"].to_numpy() == int(position))
    if rows.size != 1:
        raise KeyError(f"position {position} appears {rows.size} times in the sample table")
    return int(rows[0])
