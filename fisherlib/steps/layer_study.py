"""Notebook 08: the study's measurements at every layer, with the Fisher metric pulled back to `r_ℓ`.

At each layer ℓ (`fisherlib.layers`), for a subset of the sampled positions, four classes of unit
directions are measured at every ε of the grid:

- `eigvec`: the top eigenvectors of `G_ℓ = J_ℓᵀ F J_ℓ`, both signs, `+` oriented toward swapping the two
  most probable tokens (`a_b − a_a ≥ 0` for the logit velocity `a`), as the study orients those of `F_k`;
- `random`: uniform random unit vectors (Gaussian, normalised), seeded per position;
- `covariance`: Gaussian vectors with the covariance of `r_ℓ` over all sampled positions, normalised
  (Lee & Heimersheim's baseline: perturbations shaped like the activations themselves);
- `actdiff`: `r_ℓ(j) − r_ℓ(i)` toward other sampled positions `j` of other documents, normalised
  (Heimersheim & Mendel's "sensitive directions").

Per direction: `curv = uᵀG_ℓu = Var_p[a]`, `curv_topk` (the study's top-k truncation), `t_pred =
sqrt(2ε / curv)`, the exact `t_emp` (first crossing) and `ρ = ½ t_emp² curv / ε` (`rho_topk` with the
truncated curvature). Censored lines (`t_emp = inf`) are kept, with `ρ = inf`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from ..core.directions import position_generator
from ..layers.engine import HEAD
from ..layers.passes import Prefilled
from ..layers.pullback import layer_boundary, layer_curvature, layer_fisher_eigh

logger = logging.getLogger("fisherlib")

LAYER_CLASSES = ("eigvec", "random", "covariance", "actdiff")
COLUMNS = (
    "layer", "position", "direction", "cls", "eig_rank", "sign", "eps", "eigval", "curv", "curv_topk",
    "t_pred", "t_emp", "rho", "rho_topk", "censored", "nonmonotone",
)  # fmt: skip
_EIGEN_TOL = 1e-3  # Ritz residual relative to λ₁: the curvature along the returned vector is exact anyway


def layer_label(layer) -> str:
    """Return a layer as the tables spell it: `"0"`, `"1"`, …, `"head"`."""
    return HEAD if layer == HEAD else str(int(layer))


def layer_sort_key(label) -> float:
    """Sort block boundaries by depth, `head` last."""
    return math.inf if str(label) == HEAD else float(label)


def choose_positions(table: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    """Return `n` row indices of the sample (all when `n` is 0 or too large), spread over domains and strata.

    Rows are taken round-robin over the (domain, stratum) cells, each cell in a seeded random order, so
    the subset keeps the sample's balance.
    """
    if n <= 0 or n >= len(table):
        return np.arange(len(table))
    rng = np.random.default_rng(seed)
    keys = ["domain", "stratum"] if {"domain", "stratum"} <= set(table.columns) else []
    cells = [rng.permutation(idx) for _, idx in table.groupby(keys).indices.items()] if keys else [rng.permutation(len(table))]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for cell in cells:
            if depth < len(cell) and len(chosen) < n:
                chosen.append(int(cell[depth]))
        depth += 1
    return np.sort(np.asarray(chosen))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def layer_directions(
    eigvecs: torch.Tensor,
    eig_gap: torch.Tensor,
    residuals: torch.Tensor,
    rows: np.ndarray,
    doc_ids: np.ndarray,
    position_ids: np.ndarray,
    n_per_class: int,
    seed: int,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Return unit directions `U [P, D, d]` (float64) and one table row per (position, direction).

    `eigvecs [P, k, d]` of `G_ℓ` with `eig_gap [P, k]` (`a_b − a_a` along each, for the sign convention);
    `residuals [N, d]` at this layer for all N sampled positions (covariance and activation differences),
    `rows [P]` the measured positions among them, `doc_ids [N]`, `position_ids [N]`.
    """
    P, k, d = eigvecs.shape
    residuals = residuals.double()
    # + pushes toward swapping the top two tokens: a_b − a_a ≥ 0.
    oriented = eigvecs.double() * torch.where(eig_gap < 0, -1.0, 1.0)[..., None]
    centred = residuals - residuals.mean(0)
    covariance = centred.T @ centred / max(1, len(residuals) - 1)
    values, vectors = torch.linalg.eigh(covariance)
    root = vectors * values.clamp_min(0).sqrt()  # x = root g has covariance Σ
    all_rows = np.arange(len(residuals))
    directions, table = [], []
    for i, row in enumerate(rows):
        sweep = []
        for rank in range(k):
            for sign in (1, -1):
                sweep.append((sign * oriented[i, rank], dict(cls="eigvec", eig_rank=rank + 1, sign=sign)))
        generator = position_generator(seed, int(position_ids[row]))
        gaussian = torch.randn(2 * n_per_class, d, generator=generator, dtype=torch.float64)
        for v in _unit(gaussian[:n_per_class]):
            sweep.append((v, dict(cls="random", eig_rank=-1, sign=1)))
        for v in _unit(gaussian[n_per_class:] @ root.T):
            sweep.append((v, dict(cls="covariance", eig_rank=-1, sign=1)))
        others = all_rows[doc_ids != doc_ids[row]]
        if len(others) < n_per_class:  # too few other documents: any other position will do
            others = all_rows[all_rows != row]
        rng = np.random.default_rng([seed, int(position_ids[row])])
        for j in rng.choice(others, size=n_per_class, replace=len(others) < n_per_class):
            sweep.append((_unit(residuals[j] - residuals[row]), dict(cls="actdiff", eig_rank=-1, sign=1)))
        directions.append(torch.stack([v for v, _ in sweep]))
        table += [dict(position=int(position_ids[row]), direction=j, **meta) for j, (_, meta) in enumerate(sweep)]
    return torch.stack(directions), pd.DataFrame(table)


def measure_layer(
    model,
    prefilled: Prefilled,
    layer,
    residuals: torch.Tensor,
    rows: np.ndarray,
    doc_ids: np.ndarray,
    position_ids: np.ndarray,
    eps_grid,
    n_eig: int = 2,
    n_per_class: int = 3,
    top_k: int = 64,
    seed: int = 0,
    divergence: str = "forward",
    rtol: float = 1e-4,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Return the long-form measurements (`COLUMNS`) of one layer for the positions of `prefilled`."""
    width = residuals.shape[-1]
    eigvals, eigvecs = torch.zeros(len(prefilled), 0, dtype=torch.float64), torch.zeros(len(prefilled), 0, width, dtype=torch.float64)
    if n_eig > 0:
        eigvals, eigvecs = layer_fisher_eigh(
            model, prefilled, layer, k=n_eig, tol=_EIGEN_TOL, seed=seed, batch_size=batch_size, position_ids=position_ids[rows]
        )  # fmt: skip
    eig_gap = layer_curvature(model, prefilled, layer, eigvecs, batch_size=batch_size)["top2_gap"]
    U, table = layer_directions(eigvecs, eig_gap, residuals, rows, doc_ids, position_ids, n_per_class, seed)
    lines = layer_curvature(model, prefilled, layer, U, top_k=top_k, batch_size=batch_size)
    curv, curv_topk = lines["curv"], lines["curv_topk"]
    t_emp, info = layer_boundary(
        model, prefilled, layer, U, eps_grid, divergence=divergence, rtol=rtol, batch_size=batch_size, return_info=True
    )  # fmt: skip
    eps = torch.as_tensor(eps_grid, dtype=torch.float64)
    finite = torch.isfinite(t_emp)
    t_safe = torch.where(finite, t_emp, torch.zeros_like(t_emp))

    def rho(c):
        value = 0.5 * t_safe**2 * c[..., None] / eps
        return torch.where(finite, value, torch.full_like(value, math.inf))

    positive = curv[..., None] > 0
    t_pred = torch.where(positive, torch.sqrt(2 * eps / torch.where(positive, curv[..., None], 1.0)), torch.full_like(t_emp, math.inf))
    eigval = torch.zeros(U.shape[:2], dtype=torch.float64)
    if n_eig > 0:
        eigval[:, : 2 * n_eig] = eigvals.double().repeat_interleave(2, dim=1)
    columns = dict(
        eps=eps.expand_as(t_emp), eigval=eigval[..., None].expand_as(t_emp), curv=curv[..., None].expand_as(t_emp),
        curv_topk=curv_topk[..., None].expand_as(t_emp), t_pred=t_pred, t_emp=t_emp, rho=rho(curv), rho_topk=rho(curv_topk),
        censored=~finite, nonmonotone=info["nonmonotone"][..., None].expand_as(t_emp),
    )  # fmt: skip
    table = table.loc[table.index.repeat(len(eps))].reset_index(drop=True)
    for name, values in columns.items():
        table[name] = values.reshape(-1).numpy()
    table.insert(0, "layer", layer_label(layer))
    return table[list(COLUMNS)]


# --- tables -----------------------------------------------------------------------------------------


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    order = sorted(frame["layer"].unique(), key=layer_sort_key)
    frame = frame.copy()
    frame["layer"] = pd.Categorical(frame["layer"].astype(str), categories=[str(x) for x in order], ordered=True)
    return frame.sort_values([c for c in ("layer", "cls", "eps") if c in frame.columns], kind="stable").reset_index(drop=True)


def _median_ci(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    from .stats import bootstrap_median_ci

    return bootstrap_median_ci(values, n_boot=n_boot, seed=seed, groups=groups)


def table1_by_layer(measurements: pd.DataFrame, eps: float, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Return Table 1 per layer: median ρ along the top eigenvector of `G_ℓ` (both signs) at `eps`.

    Columns: layer, eps, median_rho, ci_lo, ci_hi (percentile bootstrap resampling positions), n,
    n_censored, median_rho_topk (ρ with the top-k truncated curvature, same lines).
    """
    rows = []
    top = measurements[(measurements["cls"] == "eigvec") & (measurements["eig_rank"] == 1) & np.isclose(measurements["eps"], eps)]
    for layer, group in top.groupby("layer", sort=False):
        median, lo, hi = _median_ci(group["rho"].to_numpy(float), group["position"].to_numpy(), n_boot, seed)
        rows.append(dict(
            layer=layer, eps=float(eps), median_rho=median, ci_lo=lo, ci_hi=hi, n=len(group),
            n_censored=int(group["censored"].sum()), median_rho_topk=float(np.median(group["rho_topk"].to_numpy(float))),
        ))  # fmt: skip
    return _ordered(pd.DataFrame(rows))


def rho_by_layer(measurements: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Return median ρ per layer, class and ε with a bootstrap 95% CI over positions.

    Columns: layer, cls, eps, median_rho, ci_lo, ci_hi, median_rho_topk, n, n_censored.
    """
    rows = []
    for (layer, cls, eps), group in measurements.groupby(["layer", "cls", "eps"], sort=False):
        median, lo, hi = _median_ci(group["rho"].to_numpy(float), group["position"].to_numpy(), n_boot, seed)
        rows.append(dict(
            layer=layer, cls=cls, eps=float(eps), median_rho=median, ci_lo=lo, ci_hi=hi,
            median_rho_topk=float(np.median(group["rho_topk"].to_numpy(float))), n=len(group),
            n_censored=int(group["censored"].sum()),
        ))  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["cls"] = pd.Categorical(frame["cls"], categories=[c for c in LAYER_CLASSES if c in set(frame["cls"])])
    return _ordered(frame)


def spearman_by_layer(measurements: pd.DataFrame, min_directions: int = 3) -> pd.DataFrame:
    """Return per layer and ε the spread over positions of Spearman(t_pred, t_emp) across the position's directions.

    Directions with an infinite `t_pred` or `t_emp` are dropped (counted in `dropped`); a position with
    fewer than `min_directions` left, or a constant variable, is undefined (counted, not scored).
    Columns: layer, eps, n_positions, n_undefined, median, q25, q75, min, max, dropped.
    """
    rows = []
    for (layer, eps), group in measurements.groupby(["layer", "eps"], sort=False):
        usable = np.isfinite(group["t_pred"].to_numpy(float)) & np.isfinite(group["t_emp"].to_numpy(float))
        values, undefined = [], 0
        for _, part in group[usable].groupby("position"):
            x, y = part["t_pred"].rank().to_numpy(), part["t_emp"].rank().to_numpy()
            if len(part) < min_directions or x.std() == 0 or y.std() == 0:
                undefined += 1
                continue
            values.append(float(np.corrcoef(x, y)[0, 1]))
        n_positions = group["position"].nunique()
        undefined += n_positions - len(values) - undefined
        stats = np.quantile(values, [0.5, 0.25, 0.75, 0, 1]) if values else np.zeros(5)
        rows.append(dict(
            layer=layer, eps=float(eps), n_positions=n_positions, n_undefined=undefined, median=stats[0], q25=stats[1],
            q75=stats[2], min=stats[3], max=stats[4], dropped=int((~usable).sum()),
        ))  # fmt: skip
    return _ordered(pd.DataFrame(rows))


def exactness_frontier(by_layer: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Return per layer and class the largest ε up to which the quadratic is exact within `tolerance`.

    "Exact up to ε" means `|median ρ − 1| ≤ tolerance` at that ε and at every smaller ε of the grid;
    `eps_exact` is 0 where even the smallest ε fails. `worst_eps` is the smallest ε where the median
    leaves the band (inf if never), `rho_there` the median there.
    Columns: layer, cls, eps_exact, worst_eps, rho_there, rho_smallest_eps.
    """
    rows = []
    for (layer, cls), group in by_layer.groupby(["layer", "cls"], sort=False, observed=True):
        group = group.sort_values("eps")
        inside = (group["median_rho"] - 1).abs().to_numpy() <= tolerance
        failing = np.flatnonzero(~inside)
        first_fail = int(failing[0]) if failing.size else len(group)
        rows.append(dict(
            layer=layer, cls=cls, tolerance=tolerance,
            eps_exact=float(group["eps"].iloc[first_fail - 1]) if first_fail > 0 else 0.0,
            worst_eps=float(group["eps"].iloc[first_fail]) if failing.size else math.inf,
            rho_there=float(group["median_rho"].iloc[first_fail]) if failing.size else float(group["median_rho"].iloc[-1]),
            rho_smallest_eps=float(group["median_rho"].iloc[0]),
        ))  # fmt: skip
    return _ordered(pd.DataFrame(rows))


def nonmonotone_by_layer(measurements: pd.DataFrame) -> pd.DataFrame:
    """Return per layer and class the share of lines whose divergence fell before it reached the largest ε."""
    lines = measurements.drop_duplicates(["layer", "position", "direction"])
    frame = lines.groupby(["layer", "cls"], sort=False, observed=True)["nonmonotone"].agg(["mean", "size"]).reset_index()
    return _ordered(frame.rename(columns={"mean": "share_nonmonotone", "size": "n_lines"}))
