"""The brute-force boundary: double an upper end until the divergence reaches ε, then bisect.

This is the study's own way of finding `t_emp`, and the reference that the tests and benchmarks hold
`empirical_boundary` and `layer_boundary` (safeguarded Newton) against. It only asks for a divergence
it can evaluate along many lines at once, so the same routine serves the head (dense logits), any layer
(full-context forward passes) and any precision (the dtype of `start`). `doubling_bisection` is the same
search on one line of plain floats (a steering coefficient α), stopped at a relative bracket width.
`sqrt_secant` is the secant step on `sqrt(2D)` that the first-crossing searches refine their brackets with.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch


def doubling_bracket(
    level: Callable[[torch.Tensor], torch.Tensor],
    goal: float | torch.Tensor,
    start: torch.Tensor,
    n_bisect: int | None = 60,
    max_doublings: int | None = 60,
    rtol: float | None = None,
    cap: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the bracket `(lo, hi)` of `level(t) = goal` per line, shaped like `start`.

    `[0, start]` (at most `cap`) with the upper end doubled (at most `max_doublings` times, None: no limit) while
    `level(hi) < goal`, then halved: `n_bisect` times, or with `rtol` until `hi − lo ≤ rtol · hi` on every
    line (a line within it is no longer evaluated). A line whose level is still below `goal` at `cap`
    returns `(cap, inf)`. A NaN level counts as reached (not below `goal`).
    """
    lo, hi = torch.zeros_like(start), torch.clamp(start, max=cap)
    capped = torch.zeros_like(start, dtype=torch.bool)
    for _ in range(max_doublings) if max_doublings is not None else itertools.count():
        below = level(hi) < goal
        if math.isfinite(cap):
            capped |= below & (hi >= cap)
            below &= ~capped
        if not below.any():
            break
        lo, hi = torch.where(below, hi, lo), torch.where(below, torch.clamp(2 * hi, max=cap), hi)
    for _ in range(n_bisect) if rtol is None else itertools.count():
        active = ~capped if rtol is None else ~capped & (hi - lo > rtol * hi)
        if rtol is not None and not active.any():
            break
        mid = (lo + hi) / 2
        below = level(mid) < goal
        lo, hi = torch.where(active & below, mid, lo), torch.where(active & ~below, mid, hi)
    return torch.where(capped, hi, lo), torch.where(capped, math.inf, hi)


def bisection_boundary(
    divergence: Callable[[torch.Tensor], torch.Tensor],
    target: float | torch.Tensor,
    start: torch.Tensor,
    n_bisect: int = 60,
    max_doublings: int = 60,
) -> torch.Tensor:
    """Return the distance at which `divergence` first reaches `target`, per line.

    Args:
        divergence: maps distances `t` (the shape of `start`) to the divergence at `t` along each line.
        target: ε, a number or a tensor broadcasting to `start`.
        start: the first upper end per line (e.g. `torch.full((P, D), 1e-3)`); its shape, dtype and
            device are those of the answer.
        n_bisect: bisection steps once every line is bracketed (each halves the bracket).
        max_doublings: the most doublings of the upper end; lines already bracketed keep theirs.

    Returns:
        The midpoint of the final bracket, shaped like `start`.
    """
    lo, hi = doubling_bracket(divergence, target, start, n_bisect=n_bisect, max_doublings=max_doublings)
    return (lo + hi) / 2


def doubling_bisection(level: Callable[[float], float], goal: float, start: float, rtol: float, cap: float = math.inf) -> tuple[float, float]:
    """Return the bracket `(lo, hi)` of `level(α) = goal` for a function of one float: `[0, α]` with α doubled from
    `start` until `level(α) ≥ goal`, then halved until `hi − lo ≤ rtol · hi`; `hi` is `inf` when `level` stays below
    `goal` up to `cap` (`doubling_bracket` on one line, `level` called with plain floats)."""
    lo, hi = doubling_bracket(
        lambda alpha: torch.tensor([level(float(alpha[0]))], dtype=torch.float64),
        goal,
        torch.tensor([float(start)], dtype=torch.float64),
        max_doublings=None,
        rtol=rtol,
        cap=cap,
    )
    return float(lo[0]), float(hi[0])


def sqrt_secant(lo: float, lo_value: float, hi: float, hi_value: float, eps: float) -> float:
    """Return where the secant of `sqrt(2D)` through `(lo, D_lo)` and `(hi, D_hi)` reaches `sqrt(2ε)`; the midpoint
    where `sqrt(2D)` does not rise from `lo` to `hi`. `sqrt(2D)` is close to linear in `t` (slope `sqrt(uᵀFu)`)."""
    g_lo, g_hi = math.sqrt(2 * lo_value), math.sqrt(2 * hi_value)
    if not g_hi > g_lo:
        return 0.5 * (lo + hi)
    return lo + (math.sqrt(2 * eps) - g_lo) / (g_hi - g_lo) * (hi - lo)
