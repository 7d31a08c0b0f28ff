"""The brute-force boundary: double an upper end until the divergence reaches ε, then bisect.

This is the study's own way of finding `t_emp`, and the reference that the tests and benchmarks hold
`empirical_boundary` and `layer_boundary` (safeguarded Newton) against. It only asks for a divergence
it can evaluate along many lines at once, so the same routine serves the head (dense logits), any layer
(full-context forward passes) and any precision (the dtype of `start`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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
    lo, hi = torch.zeros_like(start), start.clone()
    for _ in range(max_doublings):
        below = divergence(hi) < target
        if not below.any():
            break
        lo, hi = torch.where(below, hi, lo), torch.where(below, 2 * hi, hi)
    for _ in range(n_bisect):
        mid = (lo + hi) / 2
        below = divergence(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2
