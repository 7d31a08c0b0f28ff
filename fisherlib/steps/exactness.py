"""Notebook 04: how exact is the closed form? Table 1, ρ against rank and ε, truncation against Taylor, cumulants.

Pure functions over the sweep's `measurements` (see `fisherlib.steps.stats` for the conventions: groups,
censoring, resampling units).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .stats import (
    PREDICTED_CLASSES,
    SIGNED_CLASSES,
    TABLE2_GROUPS,
    TOP_EIGVEC,
    _as_groups,
    _drop_nan,
    _eps_values,
    _median_row,
    _n_positions,
    _n_units,
    _order,
    _require_columns,
    _stratum_seed,
    at_eps,
    bootstrap_medians,
    group_mask,
    percentile_interval,
    sample_median,
    score,
    select_group,
    unit_keys,
)

logger = logging.getLogger("fisherlib")

CLOSED_FORMS = ("t_pred", "t_pred_full", "t_quartic")
CLOSED_FORM_LABELS = {
    "t_pred": "t_pred (F_k)",
    "t_pred_full": "t_pred (full F)",
    "t_quartic": "quartic root (fallback t_pred full F)",
}
GROUPS_WITH_TOP = (TOP_EIGVEC, *PREDICTED_CLASSES)


def top_eigvec_exactness(
    measurements: pd.DataFrame,
    eps: float,
    by_seed: bool = True,
    sign: int | None = None,
    column: str = "rho",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "position",
) -> pd.DataFrame:
    """Table 1: median ρ on the top eigenvector of `F_k` at one ε, with a bootstrap CI.

    Both signs `±u` of the top eigenvector are pooled (`sign=None`; pass +1 or −1 to keep one), so a
    position contributes two measurements and the bootstrap resamples clusters of `unit` (`position`,
    or `document` after `stats.attach_documents`): a cluster's measurements move together. With `by_seed`, one
    row per seed and an `all seeds` row whose median is the mean of the per-seed medians (as the
    write-up reports Qwen), its CI from a bootstrap stratified by seed (units resampled within each
    seed, per-seed medians averaged), and `seed_min`/`seed_max` the range of the per-seed medians.
    Without, a single `pooled` row: the median of all measurements, units of every seed resampled
    together (`seed_min`/`seed_max` still give the range of the per-seed medians).

    Columns: seeds (str), eps, median_<column>, ci_lo, ci_hi, seed_min, seed_max, n_seeds, n,
    n_positions, resampled (the unit), n_units, n_censored.
    """
    _require_columns(measurements, ["seed", "position", "cls", "eig_rank", "sign", column], "measurements")
    chosen = select_group(at_eps(measurements, eps), TOP_EIGVEC)
    if sign is not None:
        chosen = chosen[chosen["sign"] == sign]
    if chosen.empty:
        raise ValueError(f"no top-eigenvector measurements at eps={eps}")
    chosen, _ = _drop_nan(chosen, column, "top_eigvec_exactness")
    stat = f"median_{column}"
    if not by_seed:
        row = _median_row(chosen, column, n_boot, seed, level, unit)
        per_seed_medians = [sample_median(part[column]) for _, part in chosen.groupby("seed", sort=True)]
        row.update(
            seeds="pooled",
            eps=float(eps),
            seed_min=min(per_seed_medians),
            seed_max=max(per_seed_medians),
            n_seeds=len(per_seed_medians),
        )
        return _order(pd.DataFrame([row]), ["seeds", "eps", stat, "ci_lo", "ci_hi", "seed_min", "seed_max", "n_seeds"])
    keys = unit_keys(chosen, unit)
    rows, replicate_sets = [], []
    for seed_value, per_seed in chosen.groupby("seed", sort=True):
        stream = _stratum_seed(seed, int(seed_value))
        values = per_seed[column].to_numpy(float)
        replicates = bootstrap_medians(values, groups=per_seed[keys], n_boot=n_boot, seed=stream)
        replicate_sets.append(replicates)
        median = sample_median(values)
        lo, hi = percentile_interval(replicates, level)
        rows.append(
            {
                "seeds": str(seed_value),
                "eps": float(eps),
                stat: median,
                "ci_lo": lo,
                "ci_hi": hi,
                "seed_min": median,
                "seed_max": median,
                "n_seeds": 1,
                "n": int(values.size),
                "n_positions": _n_positions(per_seed),
                "resampled": unit,
                "n_units": _n_units(per_seed, unit),
                "n_censored": int(np.isinf(values).sum()),
            }
        )
    per_seed_medians = np.array([r[stat] for r in rows])
    lo, hi = percentile_interval(np.mean(replicate_sets, axis=0), level)
    rows.append(
        {
            "seeds": "all seeds",
            "eps": float(eps),
            stat: float(per_seed_medians.mean()),
            "ci_lo": lo,
            "ci_hi": hi,
            "seed_min": float(per_seed_medians.min()),
            "seed_max": float(per_seed_medians.max()),
            "n_seeds": len(rows),
            "n": sum(r["n"] for r in rows),
            "n_positions": sum(r["n_positions"] for r in rows),
            "resampled": unit,
            "n_units": sum(r["n_units"] for r in rows),
            "n_censored": sum(r["n_censored"] for r in rows),
        }
    )
    return pd.DataFrame(rows)


def rho_by_eig_rank(
    measurements: pd.DataFrame,
    eps: float,
    ranks: Iterable[int] = range(1, 8),
    column: str = "rho",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "position",
) -> pd.DataFrame:
    """Return median ρ of the `eigvec` class per eigenvector rank at one ε, both signs and all seeds pooled.

    Columns: eig_rank, eps, median_<column>, ci_lo, ci_hi, n, n_positions, resampled, n_units,
    n_censored (the CI resamples clusters of `unit`, as in `top_eigvec_exactness`). Ranks without
    measurements (a model narrower than the rank) are left out.
    """
    chosen = at_eps(measurements, eps)
    chosen = chosen[chosen["cls"].astype(str) == "eigvec"]
    rows = []
    for rank in ranks:
        per_rank = chosen[chosen["eig_rank"] == rank]
        per_rank, _ = _drop_nan(per_rank, column, "rho_by_eig_rank")
        if per_rank.empty:
            continue
        row = {"eig_rank": int(rank), "eps": float(eps)}
        row.update(_median_row(per_rank, column, n_boot, _stratum_seed(seed, int(rank)), level, unit))
        rows.append(row)
    return pd.DataFrame(rows)


def rho_by_eps(
    measurements: pd.DataFrame,
    cls=None,
    column: str = "rho",
    eps=None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "position",
) -> pd.DataFrame:
    """Return median ρ against ε per direction group: `cls` a group name, a list, or None for `TABLE2_GROUPS`.

    Columns: cls, eps, median_<column>, ci_lo, ci_hi, n, n_positions, resampled, n_units, n_censored
    (the CI resamples clusters of `unit`). A (group, ε) without
    measurements is left out.
    """
    rows = []
    for e in _eps_values(measurements, eps):
        at = at_eps(measurements, e)
        for group in _as_groups(cls, TABLE2_GROUPS):
            chosen, _ = _drop_nan(select_group(at, group), column, "rho_by_eps")
            if chosen.empty:
                continue
            row = {"cls": group, "eps": e}
            row.update(_median_row(chosen, column, n_boot, _stratum_seed(seed, group, int(round(e * 1e9))), level, unit))
            rows.append(row)
    return pd.DataFrame(rows)


def rho_topk_vs_full(measurements: pd.DataFrame, eps=None, cls=None) -> pd.DataFrame:
    """Return ρ with the truncated `F_k` next to ρ with the full `F`, per direction group and ε.

    Both use the same `t_emp`, so `ρ / ρ_full = uᵀF_k u / uᵀF u` exactly and
    `log ρ = log ρ_full + log(uᵀF_k u / uᵀF u)`: the deviation of ρ from 1 splits into a Taylor part
    (`ρ_full`) and a truncation part (the curvature ratio). `truncation_share` is
    `median|log ratio| / (median|log ratio| + median|log ρ_full|)`: near 1 when truncating F, not the
    quadratic expansion, explains the deviation. Rows with a non-finite or zero ρ, ρ_full or
    curvature (censored lines, zero curvature) are dropped and counted in `dropped`; the control class
    is left out by default since its `uᵀF_k u ≈ 0` by construction.

    Columns: cls, eps, median_rho, median_rho_full, median_curv_ratio, median_abs_log_rho,
    median_abs_log_rho_full, median_abs_log_curv_ratio, truncation_share, n, dropped.
    """
    _require_columns(measurements, ["rho", "rho_full", "curv_topk", "curv_full"], "measurements")
    rows = []
    for e in _eps_values(measurements, eps):
        at = at_eps(measurements, e)
        for group in _as_groups(cls, GROUPS_WITH_TOP):
            chosen = select_group(at, group)
            if chosen.empty:
                continue
            rho = chosen["rho"].to_numpy(float)
            rho_full = chosen["rho_full"].to_numpy(float)
            curv_full = chosen["curv_full"].to_numpy(float)
            ratio = chosen["curv_topk"].to_numpy(float) / np.where(curv_full > 0, curv_full, np.nan)
            usable = np.isfinite(rho) & np.isfinite(rho_full) & np.isfinite(ratio)
            usable &= (rho > 0) & (rho_full > 0) & (ratio > 0)
            row = {"cls": group, "eps": e, "n": int(usable.sum()), "dropped": int((~usable).sum())}
            if usable.any():
                log_ratio, log_full = np.abs(np.log(ratio[usable])), np.abs(np.log(rho_full[usable]))
                taylor, truncation = float(np.median(log_full)), float(np.median(log_ratio))
                row.update(
                    median_rho=float(np.median(rho[usable])),
                    median_rho_full=float(np.median(rho_full[usable])),
                    median_curv_ratio=float(np.median(ratio[usable])),
                    median_abs_log_rho=float(np.median(np.abs(np.log(rho[usable])))),
                    median_abs_log_rho_full=taylor,
                    median_abs_log_curv_ratio=truncation,
                    truncation_share=truncation / (truncation + taylor) if truncation + taylor > 0 else 0.0,
                )
                rows.append(row)
            else:
                logger.warning("rho_topk_vs_full: no usable rows for %s at eps=%g (%d dropped)", group, e, len(chosen))
    columns = [
        "cls",
        "eps",
        "median_rho",
        "median_rho_full",
        "median_curv_ratio",
        "median_abs_log_rho",
        "median_abs_log_rho_full",
        "median_abs_log_curv_ratio",
        "truncation_share",
        "n",
        "dropped",
    ]
    return pd.DataFrame(rows, columns=columns)


# --- higher order: cumulants ------------------------------------------------------------------------


def cumulant_terms(measurements: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Return the measurements at `eps` with the terms of the quartic correction to ρ (docs/method.md §5).

    For the forward KL, `ρ_full ≈ 1 / (1 + κ₃t/(3κ₂) + κ₄t²/(12κ₂))` with κₙ the cumulants of
    `a = Wu` under the full `p` (so κ₂ = uᵀFu, and the comparison is with `ρ_full`, not the truncated ρ). The
    terms are evaluated at `t = t_pred_full`, the second-order boundary, so nothing uses `t_emp`.
    Added columns: skew_term `κ₃t/(3κ₂)`, kurt_term `κ₄t²/(12κ₂)`, rho_theory, usable (finite terms,
    κ₂ > 0 and a finite ρ_full). Rows are never dropped here; consumers filter on `usable`.
    """
    _require_columns(measurements, ["curv_full", "kappa3", "kappa4", "t_pred_full", "rho_full"], "measurements")
    frame = at_eps(measurements, eps).copy()
    k2 = frame["curv_full"].to_numpy(float)
    t = frame["t_pred_full"].to_numpy(float)
    positive = (k2 > 0) & np.isfinite(t)
    safe_k2 = np.where(positive, k2, 1.0)
    safe_t = np.where(positive, t, 0.0)
    skew = frame["kappa3"].to_numpy(float) * safe_t / (3 * safe_k2)
    kurt = frame["kappa4"].to_numpy(float) * safe_t**2 / (12 * safe_k2)
    denominator = 1 + skew + kurt
    frame["skew_term"] = skew
    frame["kurt_term"] = kurt
    frame["rho_theory"] = np.where(denominator > 0, 1 / np.where(denominator > 0, denominator, 1.0), np.inf)
    frame["usable"] = positive & np.isfinite(frame["rho_full"].to_numpy(float)) & np.isfinite(skew) & np.isfinite(kurt)
    return frame


def sign_pairs(measurements: pd.DataFrame, eps: float, column: str = "rho_full") -> pd.DataFrame:
    """Return one row per direction measured with both signs: `<column>` at `+u` and at `−u`.

    Directions are matched on (seed, position, cls, eig_rank, token_i, token_j); random and control
    directions have one sign and do not appear (`SIGNED_CLASSES`). Columns: seed, position, cls, eig_rank, token_i,
    token_j, plus, minus, opposite_sides (`(plus − 1)(minus − 1) < 0`), usable (both finite).
    """
    keys = ["seed", "position", "cls", "eig_rank", "token_i", "token_j"]
    frame = at_eps(measurements, eps)
    frame = frame.assign(cls=frame["cls"].astype(str))
    frame = frame[frame["cls"].isin(SIGNED_CLASSES)]
    plus = frame[frame["sign"] == 1][keys + [column]].rename(columns={column: "plus"})
    minus = frame[frame["sign"] == -1][keys + [column]].rename(columns={column: "minus"})
    pairs = plus.merge(minus, on=keys, how="inner", validate="one_to_one")
    pairs["usable"] = np.isfinite(pairs["plus"]) & np.isfinite(pairs["minus"])
    pairs["opposite_sides"] = (pairs["plus"] - 1) * (pairs["minus"] - 1) < 0
    return pairs


def cumulant_summary(measurements: pd.DataFrame, eps=None, cls=None, tolerance: float = 1e-4) -> pd.DataFrame:
    """Return, per ε and direction group, how well the skewness term explains `ρ_full − 1` (docs/method.md §5).

    `sign_agreement`: among usable rows with `|ρ_full − 1| > tolerance` and a nonzero skew term, the
    fraction where `ρ_full − 1` has the sign of `−κ₃` (the leading-order prediction).
    `median_abs_dev`: median `|ρ_full − 1|`; `median_abs_dev_quartic`: median `|ρ_full − ρ_theory|`,
    what is left after the cumulant correction. `opposite_sides`: among `±u` pairs with both
    `ρ_full` finite, the fraction on opposite sides of 1. Counts: n (usable rows), dropped, n_pairs.
    """
    rows = []
    for e in _eps_values(measurements, eps):
        terms = cumulant_terms(measurements, e)
        pairs = sign_pairs(measurements, e)
        for group in _as_groups(cls, GROUPS_WITH_TOP):
            mask = group_mask(terms, group)
            chosen = terms[mask]
            if chosen.empty:
                continue
            usable = chosen[chosen["usable"]]
            deviation = usable["rho_full"].to_numpy(float) - 1
            skew = usable["skew_term"].to_numpy(float)
            after_quartic = np.abs(usable["rho_full"].to_numpy(float) - usable["rho_theory"].to_numpy(float))
            decisive = (np.abs(deviation) > tolerance) & (skew != 0)
            agrees = np.sign(deviation[decisive]) == -np.sign(skew[decisive])
            group_pairs = pairs[group_mask(pairs, group) & pairs["usable"].to_numpy()]
            rows.append(
                {
                    "cls": group,
                    "eps": e,
                    "sign_agreement": float(agrees.mean()) if agrees.size else 0.0,
                    "n_decisive": int(decisive.sum()),
                    "median_abs_dev": float(np.median(np.abs(deviation))) if deviation.size else 0.0,
                    "median_abs_dev_quartic": float(np.median(after_quartic)) if after_quartic.size else 0.0,
                    "opposite_sides": float(group_pairs["opposite_sides"].mean()) if len(group_pairs) else 0.0,
                    "n_pairs": int(len(group_pairs)),
                    "n": int(len(usable)),
                    "dropped": int(len(chosen) - len(usable)),
                }
            )
    return pd.DataFrame(rows)


def quartic_with_fallback(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return `(t_quartic, fell_back)`: the quartic root `t_cumulant`, or `t_pred_full` where it has no positive root.

    The quartic `κ₂t²/2 + κ₃t³/6 + κ₄t⁴/24 = ε` has no positive root where negative skew and kurtosis
    bend it down before it reaches ε; there the second-order form with the full F is the natural
    fallback (the quartic's own leading term). Scoring only the rows with a root would drop exactly
    the rows where the quartic fails, so every comparison uses this fallback on every row.
    """
    t_cumulant = frame["t_cumulant"].to_numpy(float)
    fell_back = ~np.isfinite(t_cumulant)
    return np.where(fell_back, frame["t_pred_full"].to_numpy(float), t_cumulant), fell_back


def with_quartic(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with `t_quartic` (see `quartic_with_fallback`) and a boolean `quartic_fallback` column."""
    t_quartic, fell_back = quartic_with_fallback(frame)
    return frame.assign(t_quartic=t_quartic, quartic_fallback=fell_back)


def common_rows(frame: pd.DataFrame, columns: Sequence[str] = ("t_pred", "t_pred_full")) -> np.ndarray:
    """Return the rows every predictor is scored on: a finite positive `t_emp` and finite positive `columns`.

    One denominator for every predictor: a row that one predictor cannot score is dropped for all of
    them (and counted), so fractions compare like with like.
    """
    usable = np.isfinite(frame["t_emp"].to_numpy(float)) & (frame["t_emp"].to_numpy(float) > 0)
    for column in columns:
        values = frame[column].to_numpy(float)
        usable &= np.isfinite(values) & (values > 0)
    return usable


def predictor_accuracy(measurements: pd.DataFrame, eps=None, cls=None, predictors: Sequence[str] = CLOSED_FORMS) -> pd.DataFrame:
    """Return how close each closed-form predictor lands to `t_emp`, per ε, direction group and predictor.

    Predictors: `t_pred` (quadratic, F_k), `t_pred_full` (quadratic, F), `t_quartic` (the quartic
    Taylor root, falling back to `t_pred_full` where the quartic has no positive root; `n_fallback`
    counts those rows). Every predictor is scored on the same rows of each (ε, group): those with a
    finite `t_emp`, `t_pred` and `t_pred_full` (`common_rows`); the others are counted in `dropped`.

    Columns: eps, cls, predictor, median_abs_rel_error (median `|t/t_emp − 1|`), within_1pct,
    within_10pct, within_50, n, n_fallback, dropped.
    """
    rows = []
    for e in _eps_values(measurements, eps):
        at = with_quartic(at_eps(measurements, e))
        for group in _as_groups(cls, GROUPS_WITH_TOP):
            chosen = select_group(at, group)
            if chosen.empty:
                continue
            usable = common_rows(chosen)
            part = chosen[usable]
            t_emp = part["t_emp"].to_numpy(float)
            for predictor in predictors:
                row = {"eps": e, "cls": group, "predictor": predictor}
                row.update(score(part[predictor].to_numpy(float), t_emp))
                row["n_fallback"] = int(part["quartic_fallback"].sum()) if predictor == "t_quartic" else 0
                row["dropped"] = int((~usable).sum())
                rows.append(row)
    columns = ["eps", "cls", "predictor", "median_abs_rel_error", "within_1pct", "within_10pct", "within_50", "n",
               "n_fallback", "dropped"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
