"""Effective dimension of the pulled-back metric per layer (FishBack, arXiv 2605.17231).

FishBack reports that on GPT-2 the Fisher metric pulled back to the residual stream differs from the
Euclidean one by more than 97% in relative spectral norm and that its effective dimension is 2–17% of
`d`. Per layer and position, from the full spectrum `λ₁ ≥ … ≥ λ_d ≥ 0` of `G_ℓ = J_ℓᵀ F J_ℓ`
(formed densely from `d` JVPs per position: `fisherlib.layers.pullback.layer_fisher_matrix`, or
`jacobian_lens.measure_lens`, which `fisherlib.run.measurements.run_layer_spectra` uses):

- the effective rank, both definitions of `fisherlib.core.fisher.effective_rank`: `exp(H(λ/Σλ))`
  (`eff_rank`) and the participation ratio `(Σλ)²/Σλ²` (`participation`), and each as a share of `d`;
- `rel_spectral = ‖G/‖G‖₂ − I‖₂ = 1 − λ_d/λ₁`: the spectral-norm difference of the two metrics, each
  normalised to unit spectral norm (1 when G is singular, 0 when it is a multiple of the identity);
- `rel_spectral_best = min_c ‖G − cI‖₂ / ‖G‖₂ = (λ₁ − λ_d) / (2λ₁)`, the best multiple of the
  identity (c = (λ₁ + λ_d)/2); at most ½ by construction, so FishBack's 97% cannot be read on it;
- `rel_frobenius_best = min_c ‖G − cI‖_F / ‖G‖_F = sqrt(1 − participation/d)` (c = mean λ).

A zero metric (no curvature) has effective rank 0 and differences 1 (`rel_spectral_best` ½).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.fisher import effective_rank
from .stats import sample_median

SPECTRUM_COLUMNS = (
    "layer", "position", "d", "lambda_max", "lambda_min", "eff_rank", "participation", "eff_rank_share",
    "participation_share", "rel_spectral", "rel_spectral_best", "rel_frobenius_best",
)  # fmt: skip


def spectrum_summary(eigvals) -> pd.DataFrame:
    """Return one row per spectrum of `eigvals [P, d]` (any order; negatives from rounding clipped to 0).

    Columns: d, lambda_max, lambda_min, eff_rank, participation, eff_rank_share, participation_share,
    rel_spectral, rel_spectral_best, rel_frobenius_best (see the module's docstring).
    """
    lam = torch.as_tensor(np.asarray(eigvals, dtype=float)).clamp_min(0)
    if lam.dim() != 2 or lam.shape[1] == 0:
        raise ValueError(f"eigvals must be [P, d] with d ≥ 1, got {tuple(lam.shape)}")
    d = lam.shape[1]
    top, bottom = lam.max(1).values.numpy(), lam.min(1).values.numpy()
    entropy = effective_rank(lam, "entropy").numpy()
    participation = effective_rank(lam, "participation").numpy()
    positive = top > 0
    safe = np.where(positive, top, 1.0)
    return pd.DataFrame(
        {
            "d": d,
            "lambda_max": top,
            "lambda_min": bottom,
            "eff_rank": entropy,
            "participation": participation,
            "eff_rank_share": entropy / d,
            "participation_share": participation / d,
            "rel_spectral": np.where(positive, 1 - bottom / safe, 1.0),
            "rel_spectral_best": np.where(positive, (top - bottom) / (2 * safe), 0.5),
            "rel_frobenius_best": np.where(positive, np.sqrt(np.clip(1 - participation / d, 0, 1)), 1.0),
        }
    )


def effective_dimension_by_layer(spectra: pd.DataFrame) -> pd.DataFrame:
    """Return per layer the medians (and quartiles of the shares) over positions of `measure_spectra`'s columns.

    Columns: layer, d, n_positions, eff_rank, eff_rank_share, eff_rank_share_q25, eff_rank_share_q75,
    participation, participation_share, rel_spectral, rel_spectral_best, rel_frobenius_best.
    """
    rows = []
    for layer, part in spectra.groupby("layer", sort=False):
        share = part["eff_rank_share"].to_numpy(float)
        row = {"layer": str(layer), "d": int(part["d"].iloc[0]), "n_positions": int(part["position"].nunique())}
        for column in ("eff_rank", "eff_rank_share"):
            row[column] = sample_median(part[column])
        row["eff_rank_share_q25"], row["eff_rank_share_q75"] = (float(q) for q in np.quantile(share, [0.25, 0.75]))
        for column in ("participation", "participation_share", "rel_spectral", "rel_spectral_best", "rel_frobenius_best"):
            row[column] = sample_median(part[column])
        rows.append(row)
    return pd.DataFrame(rows)
