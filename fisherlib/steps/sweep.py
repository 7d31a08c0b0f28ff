"""The direction sweep over sampled positions: every boundary, predicted and empirical, in one long table."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from ..core import checks
from ..core.boundary import DEFAULT_MEMORY_BUDGET, _check_divergence, empirical_boundary, resolve_memory_budget
from ..core.directions import class_names, sweep_directions
from ..core.errors import InputError
from ..core.fisher import _ROW_CHUNK, cumulant_boundary, cumulants, curvature, predicted_boundary
from ..io.progress import progress_bar
from ..models.loading import run_with_oom_backoff

logger = logging.getLogger("fisherlib")

MEASUREMENT_COLUMNS = (
    "seed", "position", "direction", "cls", "eig_rank", "sign", "token_i", "token_j", "eigval", "eps",
    "curv_full", "curv_topk", "kappa3", "kappa4", "t_pred", "t_pred_full", "t_cumulant", "t_emp",
    "rho", "rho_full", "censored",
)  # fmt: skip


def direction_sweep(W, h, p, *args, **kwargs) -> tuple[torch.Tensor, pd.DataFrame]:
    """Return `fisherlib.core.directions.sweep_directions`' unit directions `[P, D, d]` and their labels as a table.

    One row per (position, direction): position, direction, cls (categorical, in the order of `DIRECTION_CLASSES`),
    eig_rank, sign, token_i, token_j, eigval. Arguments as `sweep_directions`.
    """
    directions, labels = sweep_directions(W, h, p, *args, **kwargs)
    table = pd.DataFrame(labels)
    table["cls"] = pd.Categorical(table["cls"], categories=class_names())
    return directions, table


def measure_boundaries(
    W: torch.Tensor,
    b: torch.Tensor | None,
    h: torch.Tensor,
    eps_grid,
    top_k: int = 64,
    n_random: int = 20,
    n_control: int = 8,
    seed: int = 0,
    divergence: str = "forward",
    position_ids=None,
    t_max: float | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = True,
) -> pd.DataFrame:
    """Return the long-form measurement table for residuals `h [P, d]` under the head `W [V, d]`, `b [V]`.

    One row per position × direction × ε, with the columns of `MEASUREMENT_COLUMNS` (docs/method.md §1–§7):
    curvatures `uᵀFu` and `uᵀF_k u`, cumulants κ₃ and κ₄ of `a = W u` under `p`, the closed forms
    (`t_pred` from `F_k`, `t_pred_full` from `F`, `t_cumulant` from the quartic Taylor series), the
    exact `t_emp` and `ρ = ½ t_emp² uᵀF_k u / ε` (and `rho_full`). Censored rows (`t_emp = inf`:
    zero curvature, a reverse-KL bound below ε, or beyond `t_max`) are kept, with `rho = inf`.
    Positions are processed in chunks so that the float64 `[chunk, D, V]` velocities stay within
    `memory_budget`; each position's random directions depend only on `(seed, position id)`.

    Inputs as in `fisherlib.core.fisher`: tensors or numpy arrays (converted with `torch.as_tensor`; `b`
    onto W's device, `h` may live elsewhere and is moved a chunk at a time). Raises InputError (a
    ValueError) before any work for another type or dtype, shapes that do not match (`W [V, d]`,
    `b [V]`, `h [P, d]`), NaN or inf, an ε that is not positive and finite, `top_k` outside `[1, V]`,
    an unknown divergence, `position_ids` that are not `P` values, or a non-positive `memory_budget`
    (None: a quarter of the free memory of W's device, see `boundary.resolve_memory_budget`).
    """
    W = checks.tensor("W", W, "[V, d]", device=checks.device_of(h))
    b = None if b is None else checks.tensor("b", b, "[V]", device=W.device)
    h = checks.tensor("h", h, "[P, d]")
    checks.check_shapes(("W", W, "[V, d]"), ("b", b, "[V]"), ("h", h, "[P, d]"))
    checks.check_same_device(("W", W), ("b", b))
    eps = checks.check_eps(eps_grid, W.device)
    top_k = checks.check_top_k(top_k, W.shape[0])
    _check_divergence(divergence)
    memory_budget = resolve_memory_budget(W.device, memory_budget)
    P = h.shape[0]
    position_ids = np.arange(P) if position_ids is None else np.asarray(position_ids)
    if position_ids.shape != (P,):
        raise InputError(f"position_ids must be P = {P} values, one per position, got shape {position_ids.shape}")
    b64 = None if b is None else b.double()
    chunk = positions_per_chunk(W.shape[0], n_random, n_control, memory_budget)
    bar = progress_bar(total=P, desc="direction sweep", unit="pos", disable=not progress)

    def measure_chunk(rows: list[int]) -> pd.DataFrame:
        h_chunk = h[rows].to(W.device).double()
        z = _times_rows(h_chunk, W)
        if b64 is not None:
            z = z + b64
        p = torch.softmax(z, -1)
        U, table = direction_sweep(
            W, h_chunk, p, n_random=n_random, n_control=n_control, seed=seed, top_k=top_k,
            position_ids=position_ids[rows],
        )  # fmt: skip
        A = _times_rows(U, W)  # logit velocities [chunk, D, V], float64
        curv_full = curvature(p, A)
        curv_topk = curvature(p, A, top_k=top_k)
        kappas = cumulants(p, A)
        t_emp = empirical_boundary(z, A, eps, divergence=divergence, t_max=t_max, memory_budget=memory_budget)
        columns = _boundary_columns(eps, curv_full, curv_topk, kappas, t_emp)
        table = table.loc[table.index.repeat(len(eps))].reset_index(drop=True)
        for name, values in columns.items():
            table[name] = values.reshape(-1).cpu().numpy()
        bar.update(len(rows))
        return table

    # Out of GPU memory on a chunk: retried with half as many positions (and the smaller size kept).
    tables = run_with_oom_backoff(measure_chunk, list(range(P)), chunk)
    bar.close()
    measurements = pd.concat(tables, ignore_index=True)
    measurements.insert(0, "seed", int(seed))
    return measurements[list(MEASUREMENT_COLUMNS)]


MAX_POSITIONS_PER_CHUNK = 64


def positions_per_chunk(vocab: int, n_random: int, n_control: int, memory_budget: int | None = DEFAULT_MEMORY_BUDGET) -> int:
    """Return how many positions `measure_boundaries` measures at once: its batches, which a shard keeps whole.

    As many as four float64 `[positions, directions, V]` arrays fit in `memory_budget`, and at most
    `MAX_POSITIONS_PER_CHUNK`: a small head (tiny's 512 tokens) would otherwise take the whole sample in one
    batch, which no second process could share.
    """
    n_directions = 2 * (7 + 6 + 7) + n_random + n_control  # upper bound on the directions per position
    fit = resolve_memory_budget(None, memory_budget) // (4 * 8 * n_directions * vocab)
    return int(min(MAX_POSITIONS_PER_CHUNK, max(1, fit)))


def _times_rows(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Return `x @ Wᵀ` in float64 (`x [..., d]` float64, `W [V, d]`), converting `_ROW_CHUNK` rows of W at a time.

    A float64 copy of the whole head would cost 8·V·d bytes (2.5 GB for Qwen3-1.7B) on top of W.
    """
    out = torch.empty(*x.shape[:-1], W.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, W.shape[0], _ROW_CHUNK):
        out[..., start : start + _ROW_CHUNK] = x @ W[start : start + _ROW_CHUNK].double().T
    return out


def _boundary_columns(eps, curv_full, curv_topk, kappas, t_emp) -> dict[str, torch.Tensor]:
    """Return the per-(position, direction, ε) columns, each `[P, D, E]`."""
    shape = t_emp.shape

    def per_eps(x):
        return x[..., None].expand(shape)

    def rho(curv):
        finite = torch.isfinite(t_emp)
        value = 0.5 * torch.where(finite, t_emp, 0.0) ** 2 * curv[..., None] / eps
        return torch.where(finite, value, torch.full_like(value, float("inf")))

    return dict(
        eps=eps.expand(shape),
        curv_full=per_eps(curv_full),
        curv_topk=per_eps(curv_topk),
        kappa3=per_eps(kappas[..., 1]),
        kappa4=per_eps(kappas[..., 2]),
        t_pred=predicted_boundary(curv_topk, eps),
        t_pred_full=predicted_boundary(curv_full, eps),
        t_cumulant=cumulant_boundary(kappas, eps),
        t_emp=t_emp,
        rho=rho(curv_topk),
        rho_full=rho(curv_full),
        censored=~torch.isfinite(t_emp),
    )


def sweep_census(measurements: pd.DataFrame) -> pd.DataFrame:
    """Return, per class: directions per position, and the share of censored measurements per ε."""
    per_position = measurements.groupby(["seed", "position", "cls"], observed=True)["direction"].nunique()
    directions = per_position.groupby("cls", observed=True).median().rename("directions_per_position")
    censored = measurements.pivot_table(index="cls", columns="eps", values="censored", aggfunc="mean", observed=True)
    censored.columns = [f"censored at eps={e:g}" for e in censored.columns]
    return pd.concat([directions, censored], axis=1).reset_index(names="cls")
