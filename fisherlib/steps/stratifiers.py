"""Notebook 07: which property of a position predicts whether the closed form works there (docs/method.md §11).

The write-up pre-registered three stratifiers: predictive entropy, max probability and effective
Fisher rank. Each is cut into quantile bins over the positions; a good stratifier leaves little
variance of log ρ inside its bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .stats import (
    MAD_TO_SD,
    POSITION_KEYS,
    STRATIFIERS,
    TOP_EIGVEC,
    _n_positions,
    _order,
    _require_columns,
    at_eps,
    select_group,
)

TIE_RATIO = 1.05  # a stratifier "wins" only if the runner-up's spread is at least 5% larger


def _stratifier_frame(measurements, positions, eps, stratifiers, cls, column):
    """Return the usable rows of the selection with log ρ and the stratifiers merged in, and the dropped count."""
    _require_columns(positions, ["seed", "position", *stratifiers], "positions")
    chosen = select_group(at_eps(measurements, eps), cls)
    values = chosen[column].to_numpy(float)
    usable = np.isfinite(values) & (values > 0)
    frame = chosen[usable][POSITION_KEYS + [column]].copy()
    frame["log_rho"] = np.log(frame[column].to_numpy(float))
    frame = frame.merge(positions[POSITION_KEYS + list(stratifiers)], on=POSITION_KEYS, how="left", validate="many_to_one")
    if frame[list(stratifiers)].isna().any().any():
        raise KeyError("positions lacks stratifier values for some measured positions")
    return frame, int((~usable).sum())


def _quantile_bins(values: pd.Series, n_bins: int) -> np.ndarray:
    """Return a bin 0..n_bins−1 per position: quantile bins of equal counts, ties broken by order."""
    ranks = values.rank(method="first").to_numpy()
    return np.minimum(((ranks - 1) * n_bins / len(ranks)).astype(int), n_bins - 1)


def stratifier_cells(
    measurements: pd.DataFrame,
    positions: pd.DataFrame,
    eps: float,
    stratifiers: Sequence[str] = STRATIFIERS,
    n_bins: int = 5,
    cls: str = TOP_EIGVEC,
    column: str = "rho",
) -> pd.DataFrame:
    """Return log ρ per quantile bin of each position-level stratifier.

    The selection is the rows of direction group `cls` at `eps` with a finite positive ρ. Each
    stratifier is cut into `n_bins` equal-count bins over the selected positions (each position
    counted once; ties broken by order). Columns: cls, eps, stratifier, bin (0 = lowest), lo, hi (the
    stratifier's range in the bin), n, n_positions, mean_log_rho, var_log_rho (ddof 1; 0 for one
    row), mad_log_rho (1.4826 × the median absolute deviation: the SD for a normal, robust to a few
    extreme positions), median_rho, dropped (selection rows with infinite or zero ρ).
    """
    frame, dropped = _stratifier_frame(measurements, positions, eps, stratifiers, cls, column)
    unique_positions = frame[POSITION_KEYS + list(stratifiers)].drop_duplicates(POSITION_KEYS)
    rows = []
    for stratifier in stratifiers:
        if len(unique_positions) < n_bins:
            raise ValueError(f"{len(unique_positions)} positions cannot fill {n_bins} bins")
        bins = unique_positions[POSITION_KEYS].assign(bin=_quantile_bins(unique_positions[stratifier], n_bins))
        binned = frame.merge(bins, on=POSITION_KEYS, how="left")
        for b, cell in binned.groupby("bin", sort=True):
            log_rho = cell["log_rho"].to_numpy(float)
            rows.append(
                {
                    "cls": cls,
                    "eps": float(eps),
                    "stratifier": stratifier,
                    "bin": int(b),
                    "lo": float(cell[stratifier].min()),
                    "hi": float(cell[stratifier].max()),
                    "n": int(log_rho.size),
                    "n_positions": _n_positions(cell),
                    "mean_log_rho": float(log_rho.mean()),
                    "var_log_rho": float(log_rho.var(ddof=1)) if log_rho.size > 1 else 0.0,
                    "mad_log_rho": float(MAD_TO_SD * np.median(np.abs(log_rho - np.median(log_rho)))),
                    "median_rho": float(np.exp(np.median(log_rho))),
                    "dropped": dropped,
                }
            )
    return pd.DataFrame(rows)


def stratifier_variance(
    measurements: pd.DataFrame,
    positions: pd.DataFrame,
    eps: float,
    stratifiers: Sequence[str] = STRATIFIERS,
    n_bins: int = 5,
    cls: str = TOP_EIGVEC,
    column: str = "rho",
) -> pd.DataFrame:
    """Return the pooled within-cell variance of log ρ for each stratifier, and its ratio to the best.

    Cells are the quantile bins of `stratifier_cells`. The pooled within-cell variance is
    `Σ_b (n_b − 1) s_b² / Σ_b (n_b − 1)` (cells weighted by size, as in a one-way ANOVA); the smaller,
    the better the stratifier separates positions where the closed form is exact from those where it
    is not. `explained` is `1 − within / total` (total: the variance of log ρ over the selection);
    `ratio_to_best` divides by the smallest within-cell variance. The selection (`cls`, `eps`) is a
    parameter because the write-up does not say which measurements it used: the notebook reports the
    top eigenvector at the small ε and all predicted classes at ε = 1.

    The variance is what docs/method.md §11 compares, but a few near-deterministic positions (p_top1 ≈ 1, where
    even a small ε is not small) can dominate it; `robust_within_var` pools the squared scaled MADs
    (`Σ n_b mad_b² / Σ n_b`) instead, with its own `robust_ratio_to_best`, to show whether the ranking
    of the stratifiers depends on those tails.

    Columns: cls, eps, stratifier, n_bins, within_var, total_var, explained, ratio_to_best, best,
    robust_within_var, robust_ratio_to_best, n, n_positions, dropped.
    """
    cells = stratifier_cells(measurements, positions, eps, stratifiers, n_bins, cls, column)
    frame, dropped = _stratifier_frame(measurements, positions, eps, stratifiers, cls, column)
    total = float(frame["log_rho"].var(ddof=1)) if len(frame) > 1 else 0.0
    rows = []
    for stratifier, part in cells.groupby("stratifier", sort=False):
        degrees = (part["n"] - 1).clip(lower=0)
        within = float((degrees * part["var_log_rho"]).sum() / degrees.sum()) if degrees.sum() > 0 else 0.0
        rows.append(
            {
                "cls": cls,
                "eps": float(eps),
                "stratifier": stratifier,
                "n_bins": int(n_bins),
                "within_var": within,
                "robust_within_var": float((part["n"] * part["mad_log_rho"] ** 2).sum() / part["n"].sum()),
                "total_var": total,
                "explained": 1 - within / total if total > 0 else 0.0,
                "n": int(part["n"].sum()),
                "n_positions": _n_positions(frame),
                "dropped": dropped,
            }
        )
    result = pd.DataFrame(rows)
    result["ratio_to_best"] = _ratio_to_best(result["within_var"])
    result["best"] = result["within_var"] == result["within_var"].min()
    result["robust_ratio_to_best"] = _ratio_to_best(result["robust_within_var"])
    first = ["cls", "eps", "stratifier", "n_bins", "within_var", "total_var", "explained", "ratio_to_best", "best",
             "robust_within_var", "robust_ratio_to_best"]  # fmt: skip
    return _order(result, first)


def _ratio_to_best(spread: pd.Series) -> np.ndarray:
    """Return spread / min(spread); a zero minimum gives 1 for the zeros and inf for the others."""
    best = spread.min()
    if best > 0:
        return (spread / best).to_numpy()
    return np.where(spread > 0, np.inf, 1.0)
