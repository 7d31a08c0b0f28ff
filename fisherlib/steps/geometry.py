"""The geometry of the Fisher pullback over sampled positions (notebook 02) and sweep sanity checks (03)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.boundary import kl_along_line
from ..core.fisher import curvature, fisher_eigh, fisher_pullback

PAIR_MASS_BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def _logits(W: torch.Tensor, b: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """Return float64 logits `[P, V]` for `h [P, d]`."""
    z = h.to(W.device).double() @ W.double().T
    return z if b is None else z + b.double()


def fisher_spectra(W, b, h, top_k: int, n_eig: int = 10, position_ids=None) -> pd.DataFrame:
    """Return the top `n_eig` eigenvalues of `F_k` per position, long form.

    Columns: position, rank (1..n_eig), eigval, share (eigval / trace F_k).
    """
    p = torch.softmax(_logits(W, b, h), -1)
    eigvals, _ = fisher_eigh(W, p, top_k)
    n_eig = min(n_eig, eigvals.shape[1])
    total = eigvals.sum(-1, keepdim=True)
    share = torch.where(total > 0, eigvals / torch.where(total > 0, total, 1.0), 0.0)
    P = eigvals.shape[0]
    ids = np.arange(P) if position_ids is None else np.asarray(position_ids)
    return pd.DataFrame(
        dict(
            position=np.repeat(ids, n_eig),
            rank=np.tile(np.arange(1, n_eig + 1), P),
            eigval=eigvals[:, :n_eig].reshape(-1).cpu().numpy(),
            share=share[:, :n_eig].reshape(-1).cpu().numpy(),
        )
    )


NEAR_BINARY_PAIR_MASS = 0.9
NEAR_BINARY_DEFINITION = "near-binary: the top two tokens hold p_a + p_b >= 0.9 and the runner-up holds most of the rest, p_b >= 0.5 (1 - p_a)"


def near_binary(positions: pd.DataFrame, pair_mass: float = NEAR_BINARY_PAIR_MASS) -> np.ndarray:
    """Return a boolean mask `[P]`: positions in the regime where `F ≈ p_a p_b (w_a − w_b)(w_a − w_b)ᵀ`.

    Near-binary means the top two tokens hold at least `pair_mass` of the probability and the
    runner-up holds most of the rest (`p_b ≥ ½ (1 − p_a)`), so that the pair dominates `F`.
    """
    p_a = positions["p_top1"].to_numpy(dtype=float)
    p_b = positions["p_top2"].to_numpy(dtype=float)
    return (p_a + p_b >= pair_mass) & (p_b >= 0.5 * (1.0 - p_a))


def rank_one_summary(positions: pd.DataFrame) -> dict[str, float]:
    """Return the share of near-binary positions and, among them, the median and count of |cos(top eigvec, w_b − w_a)|."""
    mask = near_binary(positions)
    cosines = positions["cos_top_eig_pair"].to_numpy(dtype=float)[mask]
    return dict(
        share_near_binary=float(mask.mean()) if len(mask) else float("nan"),
        n_near_binary=int(mask.sum()),
        median_cos_near_binary=float(np.median(cosines)) if len(cosines) else float("nan"),
    )


def rank_one_regime(positions: pd.DataFrame, bins=PAIR_MASS_BINS) -> pd.DataFrame:
    """Return |cos(top eigenvector of F_k, w_b − w_a)| binned by the top-two mass `p_a + p_b`.

    As `p_a + p_b → 1` the pullback tends to `p_a p_b (w_a − w_b)(w_a − w_b)ᵀ` (docs/method.md §2), so the
    cosine should tend to 1. Columns: pair_mass bin, n, median and 10th percentile of the cosine,
    and, the same on every row, `share_near_binary` and `median_cos_near_binary` over the whole
    sample (`NEAR_BINARY_DEFINITION`).
    """
    pair_mass = positions["p_top1"] + positions["p_top2"]
    binned = pd.cut(pair_mass, bins=list(bins), include_lowest=True)
    grouped = positions.groupby(binned, observed=True)["cos_top_eig_pair"]
    table = pd.DataFrame(
        dict(
            n=grouped.size(),
            median_cos=grouped.median(),
            p10_cos=grouped.quantile(0.1),
        )
    ).reset_index(names="pair_mass")
    table["pair_mass"] = table["pair_mass"].astype(str)
    summary = rank_one_summary(positions)
    table["share_near_binary"] = summary["share_near_binary"]
    # NaN (no near-binary position) would be refused by save_table; 0 reads as "no alignment shown".
    table["median_cos_near_binary"] = np.nan_to_num(summary["median_cos_near_binary"], nan=0.0)
    table["n_near_binary"] = summary["n_near_binary"]
    return table


def topk_versus_full(W, b, h, top_k: int, max_positions: int = 200, position_ids=None) -> pd.DataFrame:
    """Compare `F_k` with the full `F` at up to `max_positions` positions (dense `d × d` eigensolves).

    Columns: position, trace_ratio (tr F_k / tr F), top_eig_ratio (λ₁(F_k) / λ₁(F)), top_eig_cos
    (|cos| between their top eigenvectors), spectral_gap (λ₂/λ₁ of F).
    """
    P = min(h.shape[0], max_positions)
    ids = np.arange(h.shape[0]) if position_ids is None else np.asarray(position_ids)
    rows = []
    for start in range(0, P, 16):
        stop = min(start + 16, P)
        p = torch.softmax(_logits(W, b, h[start:stop]), -1)
        full_vals, full_vecs = torch.linalg.eigh(fisher_pullback(W, p))
        k_vals, k_vecs = fisher_eigh(W, p, top_k)
        for i in range(stop - start):
            lam_full = full_vals[i].flip(0).clamp_min(0)
            top_full = lam_full[0].item()
            rows.append(
                dict(
                    position=int(ids[start + i]),
                    trace_ratio=float(k_vals[i].sum() / lam_full.sum()) if lam_full.sum() > 0 else 1.0,
                    top_eig_ratio=float(k_vals[i, 0] / top_full) if top_full > 0 else 1.0,
                    top_eig_cos=float((full_vecs[i, :, -1] @ k_vecs[i, :, 0]).abs()),
                    spectral_gap=float(lam_full[1] / top_full) if top_full > 0 else 0.0,
                )
            )
    return pd.DataFrame(rows)


def kl_profiles(W, b, h, directions, t_grid) -> pd.DataFrame:
    """Return the exact KL and its quadratic prediction along `directions [D, d]` at one position `h [d]`.

    Columns: direction, t, kl (exact forward KL), quadratic (½ t² uᵀFu).
    """
    z = _logits(W, b, h[None])
    U = directions.to(W.device).double()
    A = (U @ W.double().T)[None]  # [1, D, V]
    t = torch.as_tensor(t_grid, dtype=torch.float64, device=W.device)
    kl = kl_along_line(z, A, t)[0]
    p = torch.softmax(z, -1)
    curv = curvature(p, A)[0]
    D = U.shape[0]
    return pd.DataFrame(
        dict(
            direction=np.repeat(np.arange(D), len(t)),
            t=np.tile(t.cpu().numpy(), D),
            kl=kl.reshape(-1).cpu().numpy(),
            quadratic=(0.5 * t[None] ** 2 * curv[:, None]).reshape(-1).cpu().numpy(),
        )
    )


def verify_boundaries(
    W, b, h, measurements: pd.DataFrame, top_k: int, divergence: str = "forward", n_check: int = 200, seed: int = 0
) -> pd.DataFrame:
    """Recompute the divergence at `t_emp` from scratch (dense logits `W(h + t u) + b`) on a random subset of rows.

    Needs the directions, so it rebuilds them with `direction_sweep` for the positions checked.
    Returns one row per check: position, direction, eps, kl_at_t_emp, rel_error.
    """
    from .sweep import direction_sweep

    finite = measurements[~measurements["censored"]]
    picked = finite.sample(n=min(n_check, len(finite)), random_state=seed)
    rows = []
    W64 = W.double()
    for position, group in picked.groupby("position"):
        h_i = h[int(position)].to(W.device).double()
        z = _logits(W, b, h_i[None])
        p = torch.softmax(z, -1)
        sweep_seed = int(group["seed"].iloc[0])
        U, _ = direction_sweep(W64, h_i[None], p, seed=sweep_seed, top_k=top_k, position_ids=[int(position)], **_sweep_shape(measurements))
        for row in group.itertuples():
            u = U[0, int(row.direction)]
            logits_t = W64 @ (h_i + row.t_emp * u) + (0 if b is None else b.double())
            log_p = torch.log_softmax(z[0], -1)
            log_q = torch.log_softmax(logits_t, -1)
            if divergence == "forward":
                kl = float((log_p.exp() * (log_p - log_q)).sum())
            else:
                kl = float((log_q.exp() * (log_q - log_p)).sum())
            rows.append(dict(position=int(position), direction=int(row.direction), eps=row.eps, kl_at_t_emp=kl, rel_error=abs(kl / row.eps - 1)))
    return pd.DataFrame(rows)


def _sweep_shape(measurements: pd.DataFrame) -> dict:
    """Return the `direction_sweep` settings that produced `measurements` (counted from its rows)."""
    one = measurements[
        (measurements["position"] == measurements["position"].iloc[0])
        & (measurements["eps"] == measurements["eps"].iloc[0])
        & (measurements["seed"] == measurements["seed"].iloc[0])
    ]
    counts = one["cls"].value_counts()
    return dict(n_random=int(counts.get("random", 0)), n_control=int(counts.get("control", 0)))


def median_spectrum_by_stratum(spectra: pd.DataFrame) -> pd.DataFrame:
    """Return the median eigenvalue share per rank (rows) and effective-rank quintile (columns)."""
    table = spectra.pivot_table(index="rank", columns="stratum", values="share", aggfunc="median")
    table.columns = [f"quintile {s}" for s in table.columns]
    return table.reset_index()


def rank_summary(positions: pd.DataFrame) -> pd.DataFrame:
    """Return median and 90th percentile of both effective ranks per domain, and overall."""
    rows = []
    for domain, group in [*positions.groupby("domain"), ("all", positions)]:
        rows.append(
            dict(
                domain=domain,
                positions=len(group),
                entropy_rank_median=group["eff_rank"].median(),
                entropy_rank_p90=group["eff_rank"].quantile(0.9),
                participation_median=group["participation"].median(),
                participation_p90=group["participation"].quantile(0.9),
                rank_below_1_5=(group["eff_rank"] < 1.5).mean(),
            )
        )
    return pd.DataFrame(rows)
