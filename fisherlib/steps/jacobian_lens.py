"""An averaged Jacobian lens against the per-position pullback ("Verbalizable representations form a global workspace", 2026).

Their lens is one Jacobian `J̄_ℓ = E[∂h_final/∂r_ℓ]` averaged over a corpus. With it, the metric at a
position is `Ḡ_ℓ = J̄_ℓᵀ F J̄_ℓ` (F the position's own Fisher), one cheap matrix instead of a JVP per
direction and position. Since the logits are `z = W h`, averaging the logit velocities of the basis,
`Ā = E[∂z/∂r_ℓ] = W J̄_ℓ`, is the same lens seen through the unembedding, and `uᵀḠu = Var_p[u Ā]`.

The positions are split into folds (by index, `n_folds`); a position's lens is averaged over the other
folds only, so no position is tested on a lens that saw it. Per position: the angle between the top
eigenvectors of `Ḡ_ℓ` and `G_ℓ`; per direction (the layer study's random directions, regenerated from
their seed): `t_pred` with either metric against the measured `t_emp`. Table 1 with the lens: the exact
boundary along `±` the top eigenvector of `Ḡ_ℓ`, read with the lens's curvature `uᵀḠu` (what the lens
alone predicts) and with the true `uᵀGu`, beside the layer study's Table 1 along `G_ℓ`'s own.
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
                 batch_size: int = 16, return_lens_metric: bool = False):  # fmt: skip
    """Return `(rows, G)` at `layer`: one row per (position, random direction) and the dense `G_ℓ [P, d, d]`.

    One pass of `d` JVPs per position: each position's `G` and `p` are kept, the basis velocities only
    summed per fold, so memory is `P d² + n_folds d V`, never `P d V`. Row columns: layer, position,
    rank (the direction's order among the position's random ones), curv (G), curv_lens (Ḡ), angle_deg.
    With `return_lens_metric`, `(rows, G, Ḡ)`: the held-out lens metric `Ḡ_ℓ [P, d, d]` too (float64).
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
    return (rows, G, G_bar) if return_lens_metric else (rows, G)


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


# --- Table 1 along the lens's top eigenvector ---------------------------------------------------------

LENS_TOP_COLUMNS = ("layer", "position", "sign", "eps", "curv", "curv_lens", "t_emp", "rho", "rho_lens", "censored")


def lens_top_eigvec_directions(model, prefilled, layer, G_bar: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Return `U [P, 2, d]` (float64): `+` and `−` the top eigenvector of each position's `Ḡ_ℓ [P, d, d]`.

    `+` is oriented as the layer study orients `G_ℓ`'s eigenvectors: toward swapping the two most
    probable tokens (`a_b − a_a ≥ 0` for the true logit velocity `a = J_ℓ u`), so the `sign` column
    means the same in both tables.
    """
    from ..layers.pullback import layer_curvature

    top = torch.linalg.eigh(G_bar.double()).eigenvectors[..., -1]
    gap = layer_curvature(model, prefilled, layer, top[:, None, :], batch_size=batch_size)["top2_gap"][:, 0]
    top = top * torch.where(gap < 0, -1.0, 1.0).to(top.dtype)[:, None]
    return torch.stack([top, -top], dim=1)


def measure_lens_top_eigvec(model, prefilled, layer, G: torch.Tensor, G_bar: torch.Tensor, position_ids, eps_grid,
                            divergence: str = "forward", rtol: float = 1e-4, batch_size: int = 16) -> pd.DataFrame:  # fmt: skip
    """Return one row per (position, sign, ε) along `±` the top eigenvector of the held-out lens metric `Ḡ_ℓ`.

    `G, G_bar [P, d, d]` are `measure_lens`'s (`return_lens_metric`) for the positions of `prefilled`;
    `t_emp` is the exact first crossing through the real network (`layer_boundary`, to `rtol`), so the
    lens only chooses the direction and, in `rho_lens = ½ t_emp² uᵀḠu / ε`, predicts its curvature;
    `rho` uses the true `uᵀGu`. Censored lines keep `t_emp = ρ = inf`. Columns: `LENS_TOP_COLUMNS`.
    """
    from ..layers.pullback import layer_boundary
    from .layer_study import layer_label

    U = lens_top_eigvec_directions(model, prefilled, layer, G_bar, batch_size=batch_size)
    t_emp = layer_boundary(model, prefilled, layer, U, eps_grid, divergence=divergence, rtol=rtol, batch_size=batch_size).numpy()
    eps = np.asarray(eps_grid, dtype=float).reshape(-1)
    curv, curv_lens = curvatures(G, U), curvatures(G_bar, U)  # [P, 2]
    finite = np.isfinite(t_emp)  # [P, 2, E]
    t_safe = np.where(finite, t_emp, 0.0)

    def rho(c: np.ndarray) -> np.ndarray:
        return np.where(finite, 0.5 * t_safe**2 * c[..., None] / eps, np.inf)

    P, E = len(position_ids), eps.size
    return pd.DataFrame(
        {
            "layer": layer_label(layer),
            "position": np.repeat(np.asarray(position_ids), 2 * E),
            "sign": np.tile(np.repeat([1, -1], E), P),
            "eps": np.tile(eps, 2 * P),
            "curv": np.repeat(curv.reshape(-1), E),
            "curv_lens": np.repeat(curv_lens.reshape(-1), E),
            "t_emp": t_emp.reshape(-1),
            "rho": rho(curv).reshape(-1),
            "rho_lens": rho(curv_lens).reshape(-1),
            "censored": ~finite.reshape(-1),
        }
    )[list(LENS_TOP_COLUMNS)]


def lens_table1(lines: pd.DataFrame, measurements: pd.DataFrame, eps: float, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Return Table 1 per layer along the lens's top eigenvector (both signs) at `eps`, beside the layer study's.

    `lines` are `measure_lens_top_eigvec`'s rows, `measurements` the layer study's. Per layer:
    `median_rho_lens` [`ci_lo_lens`, `ci_hi_lens`] with the lens's curvature `uᵀḠu` (what a reader of
    the lens alone predicts), `median_rho_true` [`ci_lo_true`, `ci_hi_true`] with `uᵀGu` on the same
    lines (percentile bootstrap resampling positions, as `layer_study.table1_by_layer`), `n_positions`,
    `n` lines and `n_censored`; then the layer study's Table 1 median along `G_ℓ`'s own top eigenvector,
    over all its positions (`table1_median_rho`) and over the lens's positions only (`table1_median_rho_same`).
    """
    from .layer_study import layer_sort_key
    from .stats import bootstrap_median_ci

    at = lines[np.isclose(lines["eps"], eps)]
    if at.empty:
        raise ValueError(f"no lens lines at ε = {eps:g} (measured at ε = {sorted(set(lines['eps']))})")
    top = measurements[(measurements["cls"] == "eigvec") & (measurements["eig_rank"] == 1) & np.isclose(measurements["eps"], eps)]
    rows = []
    for layer, part in at.groupby("layer", sort=False):
        positions = part["position"].to_numpy()
        own = top[top["layer"].astype(str) == str(layer)]
        same = own[own["position"].isin(positions)]
        if same.empty:
            raise ValueError(f"the layer study has no top eigenvector at layer {layer}, ε = {eps:g}, on the lens's positions")
        row = dict(layer=str(layer), eps=float(eps), n_positions=int(part["position"].nunique()), n=len(part),
                   n_censored=int(part["censored"].sum()))  # fmt: skip
        for name, column in (("lens", "rho_lens"), ("true", "rho")):
            median, lo, hi = bootstrap_median_ci(part[column].to_numpy(float), n_boot=n_boot, seed=seed, groups=positions)
            row.update({f"median_rho_{name}": median, f"ci_lo_{name}": lo, f"ci_hi_{name}": hi})
        row["table1_median_rho"] = sample_median(own["rho"])
        row["table1_median_rho_same"] = sample_median(same["rho"])
        rows.append(row)
    return pd.DataFrame(sorted(rows, key=lambda row: layer_sort_key(row["layer"])))
