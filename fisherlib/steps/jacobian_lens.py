"""An averaged Jacobian lens against the per-position pullback ("Verbalizable representations form a global workspace", 2026).

Their lens is one Jacobian `J̄_ℓ = E[∂h_final/∂r_ℓ]` averaged over a corpus. With it, the metric at a
position is `Ḡ_ℓ = J̄_ℓᵀ F J̄_ℓ` (F the position's own Fisher), one cheap matrix instead of a JVP per
direction and position. Since the logits are `z = W h`, averaging the logit velocities of the basis,
`Ā = E[∂z/∂r_ℓ] = W J̄_ℓ`, is the same lens seen through the unembedding, and `uᵀḠu = Var_p[u Ā]`.

The positions are split into folds (by index, `n_folds`); a position's lens is averaged over the other
folds only, so no position is tested on a lens that saw it. Per position: the angle between the top
eigenvectors of `Ḡ_ℓ` and `G_ℓ`; per direction (the layer study's random directions, regenerated from
their seed): `t_pred` with either metric against the measured `t_emp`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .stats import relative_errors, sample_median


def _covariance(A: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`A [P, d, V]`, `p [P, V]` -> `A diag(p) Aᵀ − (Ap)(Ap)ᵀ [P, d, d]`."""
    mean = torch.einsum("bdv,bv->bd", A, p)
    G = torch.einsum("bdv,bv,bev->bde", A, p, A) - mean[:, :, None] * mean[:, None, :]
    return 0.5 * (G + G.transpose(1, 2))


def held_out_lens(A: torch.Tensor, n_folds: int = 2) -> torch.Tensor:
    """Return per position the mean of `A [P, d, V]` over the positions of the other folds (`[P, d, V]`)."""
    P = A.shape[0]
    if P < 2:
        raise ValueError("a held-out lens needs at least two positions")
    n_folds = max(2, min(n_folds, P))
    folds = torch.arange(P) % n_folds
    lens = torch.empty_like(A)
    for fold in range(n_folds):
        inside = folds == fold
        lens[inside] = A[~inside].mean(0)
    return lens


def lens_metrics(A: torch.Tensor, p: torch.Tensor, n_folds: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return `(G [P, d, d], Ḡ [P, d, d], Ā [P, d, V])`: the per-position pullback and the held-out lens's."""
    A, p = A.double(), p.double()
    lens = held_out_lens(A, n_folds)
    return _covariance(A, p), _covariance(lens, p), lens


def top_eigvec_angles(G: torch.Tensor, G_bar: torch.Tensor) -> np.ndarray:
    """Return the angle in degrees `[P]` between the top eigenvectors of `G` and `Ḡ` (sign-free: 0–90°)."""
    top = torch.linalg.eigh(G).eigenvectors[..., -1]
    top_bar = torch.linalg.eigh(G_bar).eigenvectors[..., -1]
    cos = (top * top_bar).sum(-1).abs().clamp(max=1.0)
    return torch.rad2deg(torch.arccos(cos)).numpy()


def curvatures(G: torch.Tensor, U: torch.Tensor) -> np.ndarray:
    """Return `uᵀGu [P, D]` for directions `U [P, D, d]`."""
    return torch.einsum("pnd,pde,pne->pn", U.double(), G, U.double()).clamp_min(0).numpy()


def random_directions(position_ids, n_per_class: int, width: int, seed: int) -> torch.Tensor:
    """Regenerate the layer study's random directions `[P, n, d]` (`layer_study.layer_directions`'s seeding)."""
    from ..core.directions import position_generator

    out = []
    for position in position_ids:
        gaussian = torch.randn(2 * n_per_class, width, generator=position_generator(seed, int(position)), dtype=torch.float64)
        out.append(torch.nn.functional.normalize(gaussian[:n_per_class], dim=-1))
    return torch.stack(out)


def measure_lens(model, prefilled, layer, width: int, position_ids, n_per_class: int, seed: int = 0, n_folds: int = 2,
                 batch_size: int = 16) -> tuple[pd.DataFrame, torch.Tensor]:  # fmt: skip
    """Return `(rows, G)` at `layer`: one row per (position, random direction) and the dense `G_ℓ [P, d, d]`.

    One pass of `d` JVPs per position: each position's `G` and `p` are kept, the basis velocities only
    summed per fold, so memory is `P d² + n_folds d V`, never `P d V`. Row columns: layer, position,
    rank (the direction's order among the position's random ones), curv (G), curv_lens (Ḡ), angle_deg.
    """
    from ..layers.pullback import layer_velocity_chunks
    from .layer_study import layer_label

    P = len(position_ids)
    n_folds = max(2, min(n_folds, P))
    folds = torch.arange(P) % n_folds
    eye = torch.eye(width, dtype=torch.float64).expand(P, width, width)
    G, probabilities, sums = [], [], None
    for chunk, A, z in layer_velocity_chunks(model, prefilled, layer, eye, batch_size=batch_size):
        A, p = A.cpu(), torch.softmax(z.cpu().double(), -1)
        G.append(_covariance(A, p))
        probabilities.append(p)
        if sums is None:
            sums = torch.zeros(n_folds, width, A.shape[-1], dtype=torch.float64)
        sums.index_add_(0, folds[torch.as_tensor(chunk).cpu()], A)
    G, p = torch.cat(G), torch.cat(probabilities)
    counts = torch.bincount(folds, minlength=n_folds).double()
    held_out = (sums.sum(0) - sums) / (P - counts)[:, None, None]  # fold f's lens: the mean over the other folds
    G_bar = torch.cat([_covariance(held_out[folds[i : i + 1]], p[i : i + 1]) for i in range(P)])
    U = random_directions(position_ids, n_per_class, width, seed)
    curv, curv_lens, angles = curvatures(G, U), curvatures(G_bar, U), top_eigvec_angles(G, G_bar)
    rows = pd.DataFrame(
        {
            "layer": layer_label(layer),
            "position": np.repeat(np.asarray(position_ids), n_per_class),
            "rank": np.tile(np.arange(n_per_class), P),
            "curv": curv.reshape(-1),
            "curv_lens": curv_lens.reshape(-1),
            "angle_deg": np.repeat(angles, n_per_class),
        }
    )
    return rows, G


def lens_table(lens: pd.DataFrame, measurements: pd.DataFrame) -> pd.DataFrame:
    """Return per layer: the median top-eigenvector angle and the shares of t_pred within 10% / 50% of t_emp with G and Ḡ.

    `measurements` are the layer study's; its random directions are matched to `lens` by their order
    within each (layer, position), and `max_curv_mismatch` reports the largest relative difference of
    the two computations of `uᵀGu` (a check that they are the same directions). All ε of the grid pooled;
    censored boundaries count as misses. Columns: layer, n_positions, n, median_angle_deg, within_10_G,
    within_50_G, within_10_lens, within_50_lens, max_curv_mismatch.
    """
    random = measurements[measurements["cls"] == "random"].sort_values(["layer", "position", "direction", "eps"]).copy()
    random["rank"] = random.groupby(["layer", "position", "eps"]).cumcount()
    lens = lens.rename(columns={"curv": "curv_dense"})
    merged = random.merge(lens, on=["layer", "position", "rank"], how="inner", validate="many_to_one")
    rows = []
    for layer, part in merged.groupby("layer", sort=False):
        eps, t_emp = part["eps"].to_numpy(float), part["t_emp"].to_numpy(float)
        row = {"layer": str(layer), "n_positions": int(part["position"].nunique()), "n": int(len(part)),
               "median_angle_deg": sample_median(part.drop_duplicates("position")["angle_deg"])}  # fmt: skip
        for name, column in (("G", "curv_dense"), ("lens", "curv_lens")):
            curv = part[column].to_numpy(float)
            with np.errstate(divide="ignore"):
                t_pred = np.where(curv > 0, np.sqrt(2 * eps / np.where(curv > 0, curv, 1.0)), np.inf)
            error = relative_errors(t_pred, t_emp)
            error = np.where(np.isfinite(t_emp), error, np.inf)
            row[f"within_10_{name}"] = float(np.mean(error <= 0.1))
            row[f"within_50_{name}"] = float(np.mean(error <= 0.5))
        measured = part["curv"].to_numpy(float) if "curv" in part else part["curv_dense"].to_numpy(float)
        mismatch = np.abs(part["curv_dense"].to_numpy(float) - measured) / np.maximum(measured, 1e-300)
        row["max_curv_mismatch"] = float(mismatch.max())
        rows.append(row)
    return pd.DataFrame(rows)
