"""Synthetic sweeps with the measurement schema, measured by the real core on a random head (shared by the step and report tests;
the `sweep` fixture in tests/conftest.py is `two_seed_sweep()`)."""

import numpy as np
import pandas as pd
import torch

import fisherlib as fl
from fisherlib.data.sampling import position_statistics

EPS = (0.01, 0.1, 1.0)


def synthetic_sweep(seed=0, n_positions=24, V=60, d=16, top_k=8, n_random=6, n_control=3):
    """Return (positions, measurements) with the sweep's schema, measured by the real core on a random head."""
    W = torch.randn(V, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    g = torch.Generator().manual_seed(100 + seed)
    scales = torch.linspace(0.3, 2.0, n_positions, dtype=torch.float64)[torch.randperm(n_positions, generator=g)]
    h = scales[:, None] * torch.randn(n_positions, d, generator=g, dtype=torch.float64)
    z = h @ W.T
    p = torch.softmax(z, -1)
    stats = position_statistics(W.float(), None, h.float(), top_k)
    positions = pd.DataFrame({k: v.numpy() for k, v in stats.items() if v.dim() == 1})
    positions.insert(0, "position", np.arange(n_positions))
    positions.insert(0, "seed", seed)
    # Documents: positions come three to a document (the same document ids under every seed).
    positions["domain"] = np.where((np.arange(n_positions) // 3) % 2, "code", "docs")
    positions["doc_id"] = [f"doc{p // 3}" for p in range(n_positions)]
    U, table = fl.direction_sweep(W, h, p, n_random=n_random, n_control=n_control, seed=seed, top_k=top_k)
    A = torch.einsum("vd,pnd->pnv", W, U)
    curv_full, curv_topk = fl.curvature(p, A), fl.curvature(p, A, top_k=top_k)
    kappas = fl.cumulants(p, A)
    t_pred, t_pred_full = fl.predicted_boundary(curv_topk, EPS), fl.predicted_boundary(curv_full, EPS)
    t_cumulant, t_emp = fl.cumulant_boundary(kappas, EPS), fl.empirical_boundary(z, A, EPS)
    frames = []
    for e_i, eps in enumerate(EPS):
        frame = table.copy()
        frame.insert(0, "seed", seed)
        frame["eps"] = eps
        frame["curv_full"] = curv_full.reshape(-1).numpy()
        frame["curv_topk"] = curv_topk.reshape(-1).numpy()
        frame["kappa3"] = kappas[..., 1].reshape(-1).numpy()
        frame["kappa4"] = kappas[..., 2].reshape(-1).numpy()
        frame["t_pred"] = t_pred[..., e_i].reshape(-1).numpy()
        frame["t_pred_full"] = t_pred_full[..., e_i].reshape(-1).numpy()
        frame["t_cumulant"] = t_cumulant[..., e_i].reshape(-1).numpy()
        frame["t_emp"] = t_emp[..., e_i].reshape(-1).numpy()
        censored = ~np.isfinite(frame["t_emp"].to_numpy())
        frame["rho"] = np.where(censored, np.inf, 0.5 * frame["t_emp"] ** 2 * frame["curv_topk"] / eps)
        frame["rho_full"] = np.where(censored, np.inf, 0.5 * frame["t_emp"] ** 2 * frame["curv_full"] / eps)
        frame["censored"] = censored
        frames.append(frame)
    return positions, pd.concat(frames, ignore_index=True)


def two_seed_sweep():
    parts = [synthetic_sweep(seed) for seed in (0, 1)]
    return pd.concat([p for p, _ in parts], ignore_index=True), pd.concat([m for _, m in parts], ignore_index=True)


def no_nan(frame):
    assert not frame.select_dtypes("number").isna().any().any()
