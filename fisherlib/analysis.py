"""The statistics behind the study's tables (SPEC §6): pure functions over a sweep's two DataFrames.

Inputs are the tables of `fisherlib.measure.load_sweep`, concatenated over seeds:

- `positions`: one row per (seed, position), with the position-level statistics (entropy, max_prob,
  eff_rank, trace_f, ...).
- `measurements`: long form, one row per (seed, position, direction, ε), with `cls`, `eig_rank`,
  `sign`, curvatures, cumulants, `t_pred`, `t_pred_full`, `t_cumulant`, `t_emp`, `rho`, `rho_full`
  and `censored`.

Conventions shared by every function:

- A position is the pair (seed, position); bootstraps resample positions, not measurements, because
  the ~50 directions of one position share its distribution `p` and are not independent.
- A censored measurement (`t_emp = inf`, so `ρ = inf`) is kept in medians as larger than every finite
  value: its boundary lies beyond the cap, which is what "larger" means. Tables count them in
  `n_censored`.
- A statistic that needs finite `t_pred` and `t_emp` (rank correlations, calibration, log ρ) drops
  the rows where either is infinite and says how many in a `dropped` column.
- Every result is deterministic: bootstraps and folds take a `seed`.
- No NaN ever reaches a table: a quantity that is undefined is flagged, with the convention used.

Direction groups (the `cls` column of the results) are the five classes of SPEC §5 plus
`"eigvec rank 1"` (the top eigenvector of `F_k`, both signs) and `"all"` (the four classes with a
finite `F_k` prediction: eigvec, structured, tangent, random).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger("fisherlib")

POSITION_KEYS = ["seed", "position"]
PREDICTED_CLASSES = ("eigvec", "structured", "tangent", "random")  # classes whose uᵀF_k u is not ≈ 0
SIGNED_CLASSES = ("eigvec", "structured", "tangent")  # measured as +u and −u
TOP_EIGVEC = "eigvec rank 1"
ALL_PREDICTED = "all"
TABLE2_GROUPS = ("structured", "tangent", "random", "eigvec", TOP_EIGVEC, "control")
PREDICTORS = ("t_pred", "t_pred_full", "t_cumulant")
STRATIFIERS = ("entropy", "max_prob", "eff_rank")
WITHIN_TOLERANCE = 0.5  # "within 50%": |t / t_emp − 1| ≤ 0.5
MAD_TO_SD = 1.4826  # scales a median absolute deviation to the standard deviation of a normal

# Elements of the (replicates × values) work arrays a bootstrap holds at once (int64: 32 MiB).
_BOOTSTRAP_BLOCK = 1 << 22


# --- selection -----------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} lacks columns {missing}; it has {list(frame.columns)}")


def at_eps(measurements: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Return the measurements at threshold `eps` (matched to relative 1e-9), or say which ε exist."""
    _require_columns(measurements, ["eps"], "measurements")
    chosen = measurements[np.isclose(measurements["eps"].to_numpy(float), float(eps), rtol=1e-9, atol=0)]
    if chosen.empty:
        available = sorted(measurements["eps"].unique().tolist())
        raise ValueError(f"no measurements at eps={eps}; the sweep has eps in {available}")
    return chosen


def group_mask(measurements: pd.DataFrame, group: str) -> np.ndarray:
    """Return a boolean mask of the rows in direction group `group` (a class, `eigvec rank 1` or `all`)."""
    cls = measurements["cls"].astype(str).to_numpy()
    if group == TOP_EIGVEC:
        return (cls == "eigvec") & (measurements["eig_rank"].to_numpy() == 1)
    if group == ALL_PREDICTED:
        return np.isin(cls, PREDICTED_CLASSES)
    return cls == group


def select_group(measurements: pd.DataFrame, group: str) -> pd.DataFrame:
    """Return the rows of direction group `group` (a class, `eigvec rank 1` or `all`)."""
    return measurements[group_mask(measurements, group)]


def _eps_values(measurements: pd.DataFrame, eps) -> list[float]:
    if eps is None:
        return sorted(float(e) for e in measurements["eps"].unique())
    if np.isscalar(eps):
        return [float(eps)]
    return [float(e) for e in eps]


def _as_groups(groups, default: Sequence[str]) -> list[str]:
    if groups is None:
        return list(default)
    return [groups] if isinstance(groups, str) else list(groups)


def _position_codes(frame: pd.DataFrame) -> np.ndarray:
    """Return an integer code per row identifying its (seed, position)."""
    return frame.groupby(POSITION_KEYS, sort=False).ngroup().to_numpy()


def _n_positions(frame: pd.DataFrame) -> int:
    return int(frame[POSITION_KEYS].drop_duplicates().shape[0])


# --- bootstrap -----------------------------------------------------------------------------------


def _group_codes(groups, n: int) -> np.ndarray:
    """Return integer cluster codes `[n]` from None (each value its own cluster), an array or a DataFrame."""
    if groups is None:
        return np.arange(n)
    if isinstance(groups, pd.DataFrame):
        codes = groups.groupby(list(groups.columns), sort=False).ngroup().to_numpy()
    else:
        codes = pd.factorize(np.asarray(groups))[0]
    if codes.shape[0] != n:
        raise ValueError(f"groups has {codes.shape[0]} entries for {n} values")
    return codes


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return (a + b) / 2 where a ≤ b, with inf kept (a finite value beside inf gives inf, not NaN)."""
    return np.where(a == b, a, a / 2 + b / 2)


def _percentile(sorted_values: np.ndarray, q: float) -> float:
    """Return the linearly interpolated `q`-quantile of sorted values; unlike numpy, inf-safe."""
    position = q * (sorted_values.size - 1)
    lower, upper = math.floor(position), math.ceil(position)
    a, b = sorted_values[lower], sorted_values[upper]
    if a == b or position == lower:
        return float(a)
    return float(a + (b - a) * (position - lower))


def sample_median(values) -> float:
    """Return the median of `values`, inf-safe (the mean of the two middle values; inf beside x is inf)."""
    values = np.sort(np.asarray(values, dtype=float))
    if values.size == 0:
        raise ValueError("the median of no values is undefined")
    n = values.size
    return float(_midpoint(values[(n - 1) // 2], values[n // 2]))


def bootstrap_medians(values, groups=None, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Return `n_boot` bootstrap replicates `[n_boot]` of the median of `values`.

    With `groups` (an array `[n]` or a DataFrame of key columns), whole clusters are resampled: a
    replicate draws as many clusters as there are, with replacement, and takes the median of all their
    values (each value weighted by how often its cluster was drawn). Without, each value is a cluster.
    Infinite values (censored boundaries) are allowed and rank above every finite one.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("cannot bootstrap the median of no values")
    if np.isnan(values).any():
        raise ValueError("values hold NaN; censored values must be inf, undefined ones dropped and counted")
    codes = _group_codes(groups, values.size)
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_codes = values[order], codes[order]
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    boundaries = _block_boundaries(values.size, n_groups)
    prefix = _prefix_counts(sorted_codes, n_groups, boundaries)
    replicates = np.empty(n_boot)
    per_chunk = max(1, _BOOTSTRAP_BLOCK // max(n_groups, np.diff(boundaries).max()))
    for start in range(0, n_boot, per_chunk):
        m = min(per_chunk, n_boot - start)
        draws = rng.integers(0, n_groups, size=(m, n_groups))
        counts = np.bincount((draws + n_groups * np.arange(m)[:, None]).ravel(), minlength=m * n_groups)
        counts = counts.reshape(m, n_groups)
        replicates[start : start + m] = weighted_medians(sorted_values, sorted_codes, counts, boundaries, prefix)
    return replicates


def _block_boundaries(n: int, n_groups: int) -> np.ndarray:
    """Return block boundaries `[K + 1]` over `n` sorted values: about √n blocks, fewer for many clusters."""
    n_blocks = max(1, min(int(math.sqrt(n)), _BOOTSTRAP_BLOCK // (8 * n_groups), n))
    return np.unique(np.linspace(0, n, n_blocks + 1).round().astype(np.int64))


def _prefix_counts(sorted_codes: np.ndarray, n_groups: int, boundaries: np.ndarray) -> np.ndarray:
    """Return `[n_groups, K + 1]`: how many of each cluster's values lie before each block boundary."""
    block_of = np.searchsorted(boundaries, np.arange(sorted_codes.size), side="right") - 1
    per_block = np.zeros((n_groups, boundaries.size), dtype=float)
    np.add.at(per_block, (sorted_codes, block_of + 1), 1.0)
    return np.cumsum(per_block, axis=1)


def weighted_medians(sorted_values, sorted_codes, counts, boundaries=None, prefix=None) -> np.ndarray:
    """Return the median `[m]` of each resample given cluster draw counts `[m, n_groups]`.

    Resample r holds `counts[r, g]` copies of every value of cluster g. Its median (the mean of the
    two middle elements of the expanded, sorted sample) is found without expanding it: a matrix
    product gives how many expanded elements precede each block boundary of the sorted values, then a
    cumulative sum inside the one block that holds each middle element finishes the search. Exact.
    """
    sorted_values = np.asarray(sorted_values, dtype=float)
    counts = np.asarray(counts)
    n, n_groups = sorted_values.size, counts.shape[1]
    if boundaries is None:
        boundaries = _block_boundaries(n, n_groups)
    if prefix is None:
        prefix = _prefix_counts(sorted_codes, n_groups, boundaries)
    before = counts.astype(float) @ prefix  # [m, K + 1]: expanded elements before each boundary (exact integers)
    total = before[:, -1]
    block_size = int(np.diff(boundaries).max())
    offsets = np.arange(block_size)

    def element(rank: np.ndarray) -> np.ndarray:
        block = (before <= rank[:, None]).sum(1) - 1  # the block whose span of expanded ranks holds `rank`
        first = boundaries[block]
        index = first[:, None] + offsets  # [m, block_size]
        inside = index < boundaries[block + 1][:, None]
        index = np.minimum(index, n - 1)
        weights = np.where(inside, np.take_along_axis(counts, sorted_codes[index], axis=1), 0)
        cumulative = before[np.arange(len(block)), block][:, None] + np.cumsum(weights, axis=1)
        return sorted_values[first + (cumulative <= rank[:, None]).sum(1)]

    return _midpoint(element((total - 1) // 2), element(total // 2))


def percentile_interval(replicates, level: float = 0.95) -> tuple[float, float]:
    """Return the percentile interval `(lo, hi)` at `level` of bootstrap replicates (inf-safe)."""
    if not 0 < level < 1:
        raise ValueError("level must lie strictly between 0 and 1")
    ordered = np.sort(np.asarray(replicates, dtype=float))
    alpha = (1 - level) / 2
    return _percentile(ordered, alpha), _percentile(ordered, 1 - alpha)


def bootstrap_median_ci(
    values, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None
) -> tuple[float, float, float]:
    """Return `(median, lo, hi)`: the sample median and its percentile-bootstrap interval at `level`.

    `groups` resamples clusters (say, positions) instead of single values; see `bootstrap_medians`.
    """
    replicates = bootstrap_medians(values, groups=groups, n_boot=n_boot, seed=seed)
    lo, hi = percentile_interval(replicates, level)
    return sample_median(values), lo, hi


def _stratum_seed(seed: int, *key) -> int:
    """Return a seed for one stratum, so strata get independent but reproducible bootstrap streams."""
    return int(np.random.SeedSequence([int(seed)] + [_stable_int(k) for k in key]).generate_state(1)[0])


def _stable_int(key) -> int:
    """Return a process-independent integer for a key (Python salts `hash` of strings per process)."""
    if isinstance(key, (int, np.integer)):
        return int(key) % (2**32)
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:4], "little")


def _median_row(frame: pd.DataFrame, column: str, n_boot: int, seed: int, level: float) -> dict:
    """Return median, CI (positions resampled), n, n_positions and n_censored of `frame[column]`."""
    values = frame[column].to_numpy(float)
    median, lo, hi = bootstrap_median_ci(values, n_boot=n_boot, seed=seed, level=level, groups=frame[POSITION_KEYS])
    return {
        f"median_{column}": median,
        "ci_lo": lo,
        "ci_hi": hi,
        "n": int(values.size),
        "n_positions": _n_positions(frame),
        "n_censored": int(np.isinf(values).sum()),
    }


def _drop_nan(frame: pd.DataFrame, column: str, what: str) -> tuple[pd.DataFrame, int]:
    """Drop rows whose `column` is NaN (a measurement bug upstream), with a warning and a count."""
    bad = frame[column].isna().to_numpy()
    if bad.any():
        logger.warning("%s: %d rows with NaN %s dropped", what, int(bad.sum()), column)
    return frame[~bad], int(bad.sum())


# --- Table 1 and the exactness of the closed form --------------------------------------------------


def top_eigvec_exactness(
    measurements: pd.DataFrame,
    eps: float,
    by_seed: bool = True,
    sign: int | None = None,
    column: str = "rho",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Table 1: median ρ on the top eigenvector of `F_k` at one ε, with a bootstrap CI.

    Both signs `±u` of the top eigenvector are pooled (`sign=None`; pass +1 or −1 to keep one), so a
    position contributes two measurements and the bootstrap resamples positions. With `by_seed`, one
    row per seed and an `all seeds` row whose median is the mean of the per-seed medians (as the
    write-up reports Qwen), its CI from a bootstrap stratified by seed (positions resampled within each
    seed, per-seed medians averaged), and `seed_min`/`seed_max` the range of the per-seed medians.
    Without, a single `pooled` row: the median of all measurements, positions of every seed resampled
    together (`seed_min`/`seed_max` still give the range of the per-seed medians).

    Columns: seeds (str), eps, median_<column>, ci_lo, ci_hi, seed_min, seed_max, n_seeds, n,
    n_positions, n_censored.
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
        row = _median_row(chosen, column, n_boot, seed, level)
        per_seed_medians = [sample_median(part[column]) for _, part in chosen.groupby("seed", sort=True)]
        row.update(
            seeds="pooled",
            eps=float(eps),
            seed_min=min(per_seed_medians),
            seed_max=max(per_seed_medians),
            n_seeds=len(per_seed_medians),
        )
        return _order(pd.DataFrame([row]), ["seeds", "eps", stat, "ci_lo", "ci_hi", "seed_min", "seed_max", "n_seeds"])
    rows, replicate_sets = [], []
    for seed_value, per_seed in chosen.groupby("seed", sort=True):
        stream = _stratum_seed(seed, int(seed_value))
        values = per_seed[column].to_numpy(float)
        replicates = bootstrap_medians(values, groups=per_seed[POSITION_KEYS], n_boot=n_boot, seed=stream)
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
            "n_censored": sum(r["n_censored"] for r in rows),
        }
    )
    return pd.DataFrame(rows)


def _order(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    return frame[first + [c for c in frame.columns if c not in first]]


def rho_by_eig_rank(
    measurements: pd.DataFrame,
    eps: float,
    ranks: Iterable[int] = range(1, 8),
    column: str = "rho",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Return median ρ of the `eigvec` class per eigenvector rank at one ε, both signs and all seeds pooled.

    Columns: eig_rank, eps, median_<column>, ci_lo, ci_hi, n, n_positions, n_censored. Ranks without
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
        row.update(_median_row(per_rank, column, n_boot, _stratum_seed(seed, int(rank)), level))
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
) -> pd.DataFrame:
    """Return median ρ against ε per direction group: `cls` a group name, a list, or None for `TABLE2_GROUPS`.

    Columns: cls, eps, median_<column>, ci_lo, ci_hi, n, n_positions, n_censored. A (group, ε) without
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
            row.update(_median_row(chosen, column, n_boot, _stratum_seed(seed, group, int(round(e * 1e9))), level))
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
        for group in _as_groups(cls, (TOP_EIGVEC, "eigvec", "structured", "tangent", "random")):
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
    columns = ["cls", "eps", "median_rho", "median_rho_full", "median_curv_ratio", "median_abs_log_rho",
               "median_abs_log_rho_full", "median_abs_log_curv_ratio", "truncation_share", "n", "dropped"]
    return pd.DataFrame(rows, columns=columns)


# --- higher order: cumulants ------------------------------------------------------------------------


def cumulant_terms(measurements: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Return the measurements at `eps` with the terms of the quartic correction to ρ (SPEC §3).

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
    """Return, per ε and direction group, how well the skewness term explains `ρ_full − 1` (SPEC §3).

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
        for group in _as_groups(cls, (TOP_EIGVEC, "eigvec", "structured", "tangent", "random")):
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


def predictor_accuracy(
    measurements: pd.DataFrame, eps=None, cls=None, predictors: Sequence[str] = PREDICTORS
) -> pd.DataFrame:
    """Return how close each closed-form predictor lands to `t_emp`, per ε, direction group and predictor.

    Predictors: `t_pred` (quadratic, F_k), `t_pred_full` (quadratic, F), `t_cumulant` (quartic Taylor
    root). Rows where the predictor or `t_emp` is infinite are dropped and counted (`t_cumulant` is
    infinite where the quartic has no root). Columns: eps, cls, predictor, median_abs_rel_error
    (median `|t/t_emp − 1|`), within_1pct, within_10pct, within_50, n, dropped.
    """
    rows = []
    for e in _eps_values(measurements, eps):
        at = at_eps(measurements, e)
        for group in _as_groups(cls, (TOP_EIGVEC, "eigvec", "structured", "tangent", "random")):
            chosen = select_group(at, group)
            if chosen.empty:
                continue
            t_emp = chosen["t_emp"].to_numpy(float)
            for predictor in predictors:
                t = chosen[predictor].to_numpy(float)
                usable = np.isfinite(t) & np.isfinite(t_emp) & (t_emp > 0)
                error = np.abs(t[usable] / t_emp[usable] - 1)
                rows.append(
                    {
                        "eps": e,
                        "cls": group,
                        "predictor": predictor,
                        "median_abs_rel_error": float(np.median(error)) if error.size else 0.0,
                        "within_1pct": float(np.mean(error <= 0.01)) if error.size else 0.0,
                        "within_10pct": float(np.mean(error <= 0.1)) if error.size else 0.0,
                        "within_50": float(np.mean(error <= WITHIN_TOLERANCE)) if error.size else 0.0,
                        "n": int(usable.sum()),
                        "dropped": int((~usable).sum()),
                    }
                )
    return pd.DataFrame(rows)


# --- Table 2 ----------------------------------------------------------------------------------------


def median_rho_by_class(
    measurements: pd.DataFrame,
    eps: float,
    groups: Sequence[str] = TABLE2_GROUPS,
    column: str = "rho",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Table 2: median ρ at one ε per direction class, all seeds, signs and positions pooled.

    Rows: structured, tangent, random, eigvec (ranks 1–7 pooled), then `eigvec rank 1` and the negative
    `control` (whose `uᵀF_k u ≈ 0` makes ρ ≈ 0 by construction). Columns: cls, eps, median_<column>,
    ci_lo, ci_hi (positions resampled), n, n_positions, n_censored.
    """
    return rho_by_eps(measurements, cls=list(groups), column=column, eps=[eps], n_boot=n_boot, seed=seed, level=level)


# --- per-position rank correlation ------------------------------------------------------------------

CONSTANT_NOTE = "one value per position: no rank information across directions; 0 by convention"
UNDEFINED_NOTE = "fewer than {k} finite directions or a constant predictor; 0 by convention"


def _grouped_spearman(frame: pd.DataFrame, x: str, y: str, min_directions: int) -> pd.DataFrame:
    """Return per (seed, position): Spearman of `x` against `y`, n and whether it is defined.

    Spearman is the Pearson correlation of average ranks within each position (scipy's definition);
    it is undefined where either variable is constant or fewer than `min_directions` rows exist.
    """
    grouped = frame.groupby(POSITION_KEYS, sort=True)
    ranks = pd.DataFrame({"rx": grouped[x].rank(method="average"), "ry": grouped[y].rank(method="average")})
    ranks[POSITION_KEYS] = frame[POSITION_KEYS]
    means = ranks.groupby(POSITION_KEYS)[["rx", "ry"]].transform("mean")
    dx, dy = ranks["rx"] - means["rx"], ranks["ry"] - means["ry"]
    sums = pd.DataFrame({"xy": dx * dy, "xx": dx * dx, "yy": dy * dy})
    sums[POSITION_KEYS] = frame[POSITION_KEYS]
    totals = sums.groupby(POSITION_KEYS, sort=True).agg(
        xy=("xy", "sum"), xx=("xx", "sum"), yy=("yy", "sum"), n=("xy", "size")
    )
    # Rank deviations are exact multiples of 1/2, so a constant variable gives exactly 0, not rounding.
    defined = (totals["xx"] > 0) & (totals["yy"] > 0) & (totals["n"] >= min_directions)
    denominator = np.sqrt(totals["xx"] * totals["yy"]).where(defined, 1.0)
    totals["spearman"] = (totals["xy"] / denominator).where(defined, 0.0).clip(-1, 1)
    totals["defined"] = defined
    return totals[["spearman", "n", "defined"]].reset_index()


def per_position_spearman(
    measurements: pd.DataFrame,
    positions: pd.DataFrame,
    eps: float,
    predictors: Sequence[str] = ("t_pred",),
    baselines: Sequence[str] = ("entropy", "max_prob", "trace_f"),
    classes: Sequence[str] = PREDICTED_CLASSES,
    min_directions: int = 3,
) -> pd.DataFrame:
    """Return, per position and predictor, the Spearman correlation with `t_emp` across the sweep at `eps`.

    Directions are those of `classes` (by default every class with a finite `F_k` prediction; the
    control class has `t_pred = inf` by construction). Per predictor, directions where it or `t_emp`
    is infinite are dropped and counted in `dropped`. The baselines are position-level statistics from
    `positions` (entropy, max probability, trace of F): any boundary predicted from them is one value
    for every direction of a position, so their Spearman is undefined and scored 0 (`defined` False,
    with the reason in `note`). The same convention flags a predictor with fewer than
    `min_directions` usable directions.

    Columns: seed, position, eps, predictor, spearman, n_directions, dropped, defined, note.
    """
    _require_columns(measurements, ["seed", "position", "cls", "t_emp", *predictors], "measurements")
    _require_columns(positions, ["seed", "position", *baselines], "positions")
    at = at_eps(measurements, eps)
    at = at[np.isin(at["cls"].astype(str).to_numpy(), list(classes))]
    all_positions = at[POSITION_KEYS].drop_duplicates().sort_values(POSITION_KEYS).reset_index(drop=True)
    parts = []
    for predictor in list(predictors) + list(baselines):
        if predictor in baselines:
            frame = at[POSITION_KEYS + ["t_emp"]].merge(
                positions[POSITION_KEYS + [predictor]], on=POSITION_KEYS, how="left", validate="many_to_one"
            )
            if frame[predictor].isna().any():
                raise KeyError(f"positions lacks {predictor} for some measured positions")
        else:
            frame = at[POSITION_KEYS + ["t_emp", predictor]]
        usable = np.isfinite(frame[predictor].to_numpy(float)) & np.isfinite(frame["t_emp"].to_numpy(float))
        dropped = (~pd.Series(usable, index=frame.index)).groupby([frame["seed"], frame["position"]]).sum()
        dropped.index.names = POSITION_KEYS
        correlations = _grouped_spearman(frame[usable], predictor, "t_emp", min_directions)
        result = all_positions.merge(correlations, on=POSITION_KEYS, how="left")
        result = result.merge(dropped.rename("dropped").reset_index(), on=POSITION_KEYS, how="left")
        result["n"] = result["n"].fillna(0).astype(int)
        result["defined"] = result["defined"].fillna(False).astype(bool)
        result["spearman"] = result["spearman"].fillna(0.0)
        result["dropped"] = result["dropped"].fillna(0).astype(int)
        note = CONSTANT_NOTE if predictor in baselines else UNDEFINED_NOTE.format(k=min_directions)
        result["note"] = np.where(result["defined"], "", note)
        result["predictor"] = predictor
        result["eps"] = float(eps)
        parts.append(result.rename(columns={"n": "n_directions"}))
    columns = ["seed", "position", "eps", "predictor", "spearman", "n_directions", "dropped", "defined", "note"]
    return pd.concat(parts, ignore_index=True)[columns]


def spearman_summary(per_position: pd.DataFrame) -> pd.DataFrame:
    """Summarise `per_position_spearman` per predictor, per seed and over all seeds.

    Statistics are over positions whose Spearman is defined; where none is (the constant baselines),
    they are 0 by convention and `note` says why. Columns: predictor, eps, seeds, n_positions,
    n_undefined, median, q25, q75, min, max, dropped (directions with an infinite value), note.
    """
    rows = []
    for (predictor, eps), frame in per_position.groupby(["predictor", "eps"], sort=False):
        seeds = [(str(s), part) for s, part in frame.groupby("seed", sort=True)]
        if len(seeds) > 1:
            seeds.append(("all seeds", frame))
        for label, part in seeds:
            defined = part[part["defined"]]["spearman"].to_numpy(float)
            stats = np.quantile(defined, [0.5, 0.25, 0.75]) if defined.size else np.zeros(3)
            notes = part.loc[~part["defined"], "note"]
            rows.append(
                {
                    "predictor": predictor,
                    "eps": float(eps),
                    "seeds": label,
                    "n_positions": int(len(part)),
                    "n_undefined": int((~part["defined"]).sum()),
                    "median": float(stats[0]),
                    "q25": float(stats[1]),
                    "q75": float(stats[2]),
                    "min": float(defined.min()) if defined.size else 0.0,
                    "max": float(defined.max()) if defined.size else 0.0,
                    "dropped": int(part["dropped"].sum()),
                    "note": notes.iloc[0] if len(notes) else "",
                }
            )
    return pd.DataFrame(rows)


# --- isotonic calibration ---------------------------------------------------------------------------


def position_folds(frame: pd.DataFrame, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Return a fold id `[rows]` per row such that all rows of one (seed, position) share a fold.

    sklearn's `GroupKFold` over (seed, position) groups, shuffled with `seed` where the installed
    sklearn supports it (≥ 1.6), else in its deterministic balanced order.
    """
    from sklearn.model_selection import GroupKFold

    groups = _position_codes(frame)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} positions cannot be split into {n_splits} folds; lower n_splits")
    try:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    except TypeError:
        splitter = GroupKFold(n_splits=n_splits)
    folds = np.empty(len(frame), dtype=int)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(frame)), groups=groups)):
        folds[test] = fold
    return folds


def _fit_predict(train_x, train_y, test_x, log_space: bool) -> np.ndarray:
    """Fit `t_emp` on `t_pred` by isotonic regression and predict; in log space both axes are logs."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip", increasing=True)
    if log_space:
        model.fit(np.log(train_x), np.log(train_y))
        return np.exp(model.predict(np.log(test_x)))
    model.fit(train_x, train_y)
    return model.predict(test_x)


def _finite_calibration_rows(frame: pd.DataFrame) -> np.ndarray:
    t_pred, t_emp = frame["t_pred"].to_numpy(float), frame["t_emp"].to_numpy(float)
    return np.isfinite(t_pred) & np.isfinite(t_emp) & (t_pred > 0) & (t_emp > 0)


def calibrated_predictions(
    measurements: pd.DataFrame,
    eps: float,
    n_splits: int = 5,
    seed: int = 0,
    classes: Sequence[str] = PREDICTED_CLASSES,
    log_space: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Return the usable rows at `eps` with out-of-fold calibrated predictions, and the dropped count.

    Added columns: fold, t_cal_pooled (one isotonic fit of `t_emp` on `t_pred` over all classes),
    t_cal_per_class (one fit per class). Each row's prediction comes from calibrators fitted on the
    other folds, whose positions are disjoint from its own. Rows with infinite `t_pred` or `t_emp`
    are dropped (the returned count).
    """
    at = at_eps(measurements, eps)
    at = at[np.isin(at["cls"].astype(str).to_numpy(), list(classes))]
    usable = _finite_calibration_rows(at)
    frame = at[usable].copy()
    frame["cls"] = frame["cls"].astype(str)
    frame["fold"] = position_folds(frame, n_splits=n_splits, seed=seed)
    pooled = np.empty(len(frame))
    per_class = np.empty(len(frame))
    t_pred, t_emp = frame["t_pred"].to_numpy(float), frame["t_emp"].to_numpy(float)
    cls, folds = frame["cls"].to_numpy(), frame["fold"].to_numpy()
    for fold in range(n_splits):
        test, train = folds == fold, folds != fold
        pooled[test] = _fit_predict(t_pred[train], t_emp[train], t_pred[test], log_space)
        for name in classes:
            test_c, train_c = test & (cls == name), train & (cls == name)
            if not test_c.any():
                continue
            if not train_c.any():
                raise ValueError(f"class {name} has no training rows outside fold {fold}; too few positions")
            per_class[test_c] = _fit_predict(t_pred[train_c], t_emp[train_c], t_pred[test_c], log_space)
    frame["t_cal_pooled"] = pooled
    frame["t_cal_per_class"] = per_class
    return frame, int((~usable).sum())


def _within(t: np.ndarray, t_emp: np.ndarray) -> np.ndarray:
    return np.abs(t / t_emp - 1) <= WITHIN_TOLERANCE


def calibrate_isotonic_cv(
    measurements: pd.DataFrame,
    n_splits: int = 5,
    per_class: bool = True,
    seed: int = 0,
    eps=None,
    classes: Sequence[str] = PREDICTED_CLASSES,
    log_space: bool = True,
) -> pd.DataFrame:
    """Return the fraction of measurements within 50% of `t_emp`, raw and isotonic-calibrated, by ε and class.

    At each ε, isotonic regressions (sklearn, increasing, clipped outside the training range) map
    `t_pred` to `t_emp`: one pooled over `classes`, and with `per_class` one per class. They are scored
    out of fold by `n_splits`-fold cross-validation grouped by (seed, position), so no position is in
    both the training and the test part. With `log_space` (the default) the fit is of `log t_emp` on
    `log t_pred`: least squares on logs weighs relative errors alike, which is what "within 50%"
    measures, and a fit on raw values would be dominated by the longest boundaries.

    Long form, one row per (eps, cls, method); cls is `all` or a class, method is `raw`,
    `calibrated_pooled` or `calibrated_per_class` (the latter evaluated on `all` too). Columns: eps,
    cls, method, within_50, median_abs_rel_error, n, dropped (rows with infinite `t_pred` or `t_emp`).
    """
    rows = []
    for e in _eps_values(measurements, eps):
        frame, _ = calibrated_predictions(
            measurements, e, n_splits=n_splits, seed=seed, classes=classes, log_space=log_space
        )
        at = at_eps(measurements, e)
        at_cls = at["cls"].astype(str).to_numpy()
        finite = _finite_calibration_rows(at)
        methods = {"raw": "t_pred", "calibrated_pooled": "t_cal_pooled"}
        if per_class:
            methods["calibrated_per_class"] = "t_cal_per_class"
        for group in [ALL_PREDICTED, *classes]:
            in_group = np.isin(at_cls, list(classes)) if group == ALL_PREDICTED else at_cls == group
            part = frame if group == ALL_PREDICTED else frame[frame["cls"] == group]
            dropped = int((in_group & ~finite).sum())
            t_emp = part["t_emp"].to_numpy(float)
            for method, column in methods.items():
                error = np.abs(part[column].to_numpy(float) / t_emp - 1)
                rows.append(
                    {
                        "eps": e,
                        "cls": group,
                        "method": method,
                        "within_50": float(np.mean(error <= WITHIN_TOLERANCE)) if error.size else 0.0,
                        "median_abs_rel_error": float(np.median(error)) if error.size else 0.0,
                        "n": int(len(part)),
                        "dropped": dropped,
                    }
                )
    return pd.DataFrame(rows)


def isotonic_curve(
    measurements: pd.DataFrame,
    eps: float,
    classes: Sequence[str] = PREDICTED_CLASSES,
    per_class: bool = True,
    n_grid: int = 200,
    log_space: bool = True,
) -> pd.DataFrame:
    """Return isotonic calibration curves `t_pred → t_cal` at `eps`, fitted on all usable rows (no CV).

    For drawing, not scoring (`calibrate_isotonic_cv` scores). One curve pooled over `classes`
    (cls `all`) and, with `per_class`, one per class, each on a log-spaced grid spanning its `t_pred`.
    Columns: cls, eps, t_pred, t_cal.
    """
    at = at_eps(measurements, eps)
    at = at[np.isin(at["cls"].astype(str).to_numpy(), list(classes))]
    at = at[_finite_calibration_rows(at)]
    rows = []
    for group in [ALL_PREDICTED, *(classes if per_class else [])]:
        part = at if group == ALL_PREDICTED else at[at["cls"].astype(str) == group]
        if part.empty:
            continue
        x, y = part["t_pred"].to_numpy(float), part["t_emp"].to_numpy(float)
        grid = np.geomspace(x.min(), x.max(), n_grid) if x.min() < x.max() else x[:1]
        t_cal = _fit_predict(x, y, grid, log_space)
        rows.append(pd.DataFrame({"cls": group, "eps": float(eps), "t_pred": grid, "t_cal": t_cal}))
    return pd.concat(rows, ignore_index=True)


# --- stratifiers ------------------------------------------------------------------------------------


def _stratifier_frame(measurements, positions, eps, stratifiers, cls, column):
    """Return the usable rows of the selection with log ρ and the stratifiers merged in, and the dropped count."""
    _require_columns(positions, ["seed", "position", *stratifiers], "positions")
    chosen = select_group(at_eps(measurements, eps), cls)
    values = chosen[column].to_numpy(float)
    usable = np.isfinite(values) & (values > 0)
    frame = chosen[usable][POSITION_KEYS + [column]].copy()
    frame["log_rho"] = np.log(frame[column].to_numpy(float))
    frame = frame.merge(
        positions[POSITION_KEYS + list(stratifiers)], on=POSITION_KEYS, how="left", validate="many_to_one"
    )
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

    The variance is what SPEC §6.5 asks for, but a few near-deterministic positions (p_top1 ≈ 1, where
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


# --- stable regions ---------------------------------------------------------------------------------

DEFAULT_SLICE_BUDGET = 1 << 28  # bytes of float64 [points, V] logits alive at once in `kl_slice`


def _as_double(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _extents(extent) -> tuple[float, float]:
    if np.isscalar(extent):
        return float(extent), float(extent)
    x_extent, y_extent = extent
    return float(x_extent), float(y_extent)


def kl_slice(
    W,
    b,
    h,
    u1,
    u2,
    extent,
    n_grid: int = 161,
    divergence: str = "forward",
    memory_budget: int = DEFAULT_SLICE_BUDGET,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return `(x [n], y [n], kl [n, n])`: the exact divergence on the plane `h + x u1 + y u2`.

    `kl[i, j]` is `KL(p ‖ softmax(W(h + x_j u1 + y_i u2) + b))` (rows y, columns x: matplotlib's
    contour layout), with `x, y` spanning `[−extent, extent]` (`extent` a number or an `(x, y)` pair)
    in residual-stream units. Computed densely in float64 through `log_softmax`: the logits move by
    `x Wu1 + y Wu2`, so W is applied only twice. Grid points are processed in chunks so that no more
    than `memory_budget` bytes of `[points, V]` work arrays are alive. `divergence="reverse"` gives
    `KL(q ‖ p)`.
    """
    if divergence not in ("forward", "reverse"):
        raise ValueError(f"divergence must be 'forward' or 'reverse', not {divergence!r}")
    W64, h64 = _as_double(W), _as_double(h).reshape(-1)
    z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
    a1, a2 = W64 @ _as_double(u1).reshape(-1), W64 @ _as_double(u2).reshape(-1)
    log_p = torch.log_softmax(z, -1)
    p = log_p.exp()
    x_extent, y_extent = _extents(extent)
    # Symmetric by construction, with an exact 0 in the middle when n_grid is odd (the point h itself).
    unit = (2 * torch.arange(n_grid, dtype=torch.float64) - (n_grid - 1)) / max(n_grid - 1, 1)
    x, y = x_extent * unit, y_extent * unit
    xs, ys = x.repeat(n_grid), y.repeat_interleave(n_grid)  # row-major: y outer, x inner
    kl = torch.empty(n_grid * n_grid, dtype=torch.float64)
    per_chunk = max(1, memory_budget // (8 * 3 * z.numel()))
    for start in range(0, kl.numel(), per_chunk):
        stop = min(start + per_chunk, kl.numel())
        log_q = torch.log_softmax(z + xs[start:stop, None] * a1 + ys[start:stop, None] * a2, -1)
        if divergence == "forward":
            kl[start:stop] = (p * (log_p - log_q)).sum(-1)
        else:
            kl[start:stop] = (log_q.exp() * (log_q - log_p)).sum(-1)
    return x.numpy(), y.numpy(), kl.clamp_min(0).reshape(n_grid, n_grid).numpy()


def restrict_to_plane(F, u1, u2) -> np.ndarray:
    """Return the 2×2 restriction `F₂ = Uᵀ F U` of `F [d, d]` to the plane spanned by `U = [u1 u2]`."""
    U = torch.stack([_as_double(u1).reshape(-1), _as_double(u2).reshape(-1)], 1)
    F2 = U.T @ _as_double(F) @ U
    return ((F2 + F2.T) / 2).numpy()


def plane_fisher(W, b, h, u1, u2, top_k: int | None = None) -> np.ndarray:
    """Return `F₂ = Uᵀ F U` (2×2) without forming `F`: the covariance of `(Wu1, Wu2)` under `p`.

    With `top_k`, the study's truncation `F_k` (top-k tokens, probabilities not renormalised).
    """
    W64, h64 = _as_double(W), _as_double(h).reshape(-1)
    z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
    p = torch.softmax(z, -1)
    a = torch.stack([W64 @ _as_double(u1).reshape(-1), W64 @ _as_double(u2).reshape(-1)], 1)  # [V, 2]
    if top_k is not None:
        p, ids = torch.topk(p, min(int(top_k), p.numel()))
        a = a[ids]
    mean = p @ a
    F2 = (a * p[:, None]).T @ a - torch.outer(mean, mean)
    return ((F2 + F2.T) / 2).numpy()


def ellipse_points(F2, eps: float, n_points: int = 200) -> np.ndarray:
    """Return `[n_points, 2]` points of `{x : ½ xᵀ F₂ x = ε}` for a positive-definite 2×2 `F₂`.

    The semi-axes lie along F₂'s eigenvectors with lengths `sqrt(2ε/λ)`.
    """
    F2 = np.asarray(F2, dtype=float)
    eigvals, eigvecs = np.linalg.eigh((F2 + F2.T) / 2)
    if eigvals.min() <= 0:
        from .errors import DegenerateInputError

        raise DegenerateInputError(
            f"the plane's Fisher restriction has eigenvalues {eigvals}: the level set is unbounded"
        )
    theta = np.linspace(0, 2 * np.pi, n_points)
    circle = np.stack([np.cos(theta), np.sin(theta)], 1)
    return (circle * np.sqrt(2 * eps / eigvals)) @ eigvecs.T


def fisher_ellipse(F, u1, u2, eps: float, n_points: int = 200) -> np.ndarray:
    """Return `[n_points, 2]` plane coordinates `(x, y)` with `½ (xu1 + yu2)ᵀ F (xu1 + yu2) = ε`."""
    return ellipse_points(restrict_to_plane(F, u1, u2), eps, n_points)


@dataclass
class PlaneSlice:
    """The true divergence on one plane through `h` and the ellipses that the Fisher form predicts.

    Attributes:
        title: what the plane is (for figure panels).
        x_label, y_label: the directions `u1`, `u2` spanning it.
        x, y: grid offsets `[n]` along `u1`, `u2` in residual-stream units.
        kl: `[n, n]` exact divergence, rows along y.
        eps_levels: the thresholds drawn.
        ellipses: ε → `[n_points, 2]` points of `½ xᵀF₂x = ε` (full F).
        ellipses_topk: the same for the study's `F_k`.
        fisher_2x2, fisher_topk_2x2: F₂ and its top-k counterpart.
    """

    title: str
    x_label: str
    y_label: str
    x: np.ndarray
    y: np.ndarray
    kl: np.ndarray
    eps_levels: tuple[float, ...]
    ellipses: dict[float, np.ndarray] = field(default_factory=dict)
    ellipses_topk: dict[float, np.ndarray] = field(default_factory=dict)
    fisher_2x2: np.ndarray | None = None
    fisher_topk_2x2: np.ndarray | None = None


def stable_region_slices(
    W,
    b,
    h,
    eps_levels: Sequence[float],
    top_k: int = 64,
    n_grid: int = 161,
    seed: int = 0,
    margin: float = 1.5,
    n_points: int = 240,
) -> list[PlaneSlice]:
    """Return two slices through `h` (SPEC §6.6): F_k's top two eigenvectors, and the top one with a random direction.

    The random direction is a seeded Gaussian with its component along the top eigenvector removed,
    so the axes are orthogonal. Each plane's extent along each axis is `margin` times the reach of
    the largest-ε full-F ellipse, so every drawn level fits. Ellipses come from the full F (the exact
    second-order form) and from F_k (the study's truncation).
    """
    from .fisher import fisher_eigh

    W64, h64 = _as_double(W), _as_double(h).reshape(-1)
    z = W64 @ h64 + (_as_double(b) if b is not None else 0.0)
    p = torch.softmax(z, -1)
    _, eigvecs = fisher_eigh(W64, p[None], top_k)
    top, second = eigvecs[0, :, 0], eigvecs[0, :, 1]
    generator = torch.Generator().manual_seed(int(seed))
    random = torch.randn(h64.numel(), generator=generator, dtype=torch.float64)
    random = random - (random @ top) * top
    random = random / random.norm()
    eps_levels = tuple(float(e) for e in sorted(eps_levels))
    slices = []
    for title, y_label, u2 in (
        ("top two eigenvectors of $F_k$", "eigenvector 2", second),
        ("top eigenvector and a random direction", "random ⊥ eigenvector 1", random),
    ):
        fisher_2x2 = plane_fisher(W64, b, h64, top, u2)
        fisher_topk_2x2 = plane_fisher(W64, b, h64, top, u2, top_k=top_k)
        ellipses = {e: ellipse_points(fisher_2x2, e, n_points) for e in eps_levels}
        try:
            ellipses_topk = {e: ellipse_points(fisher_topk_2x2, e, n_points) for e in eps_levels}
        except ValueError:  # F_k can be singular in this plane (a direction orthogonal to W_K)
            ellipses_topk = {}
        reach = np.abs(ellipses[eps_levels[-1]]).max(0) * margin
        x, y, kl = kl_slice(W64, b, h64, top, u2, (reach[0], reach[1]), n_grid)
        slices.append(
            PlaneSlice(
                title, "eigenvector 1", y_label, x, y, kl, eps_levels,
                ellipses, ellipses_topk, fisher_2x2, fisher_topk_2x2,
            )  # fmt: skip
        )
    return slices


def representative_positions(
    positions: pd.DataFrame, by: str = "entropy", quantiles: Sequence[float] = (0.1, 0.9), seed: int | None = None
) -> pd.DataFrame:
    """Return the positions whose `by` is nearest to each of its `quantiles` (one row each, in order).

    With `seed`, only that seed's positions are considered. Adds a `quantile` column.
    """
    pool = positions if seed is None else positions[positions["seed"] == seed]
    if pool.empty:
        raise ValueError(f"no positions for seed {seed}")
    values = pool[by].to_numpy(float)
    rows = []
    for q in quantiles:
        target = np.quantile(values, q)
        rows.append(pool.iloc[[int(np.argmin(np.abs(values - target)))]].assign(quantile=float(q)))
    return pd.concat(rows, ignore_index=True)


def contour_levels(eps_grid: Sequence[float], low: float, high: float, n_levels: int = 3) -> list[float]:
    """Return `n_levels` thresholds of `eps_grid` in `[low, high]`, as evenly spaced in log ε as the grid allows."""
    candidates = sorted(e for e in eps_grid if low <= e <= high)
    if len(candidates) <= n_levels:
        return candidates
    targets = np.geomspace(candidates[0], candidates[-1], n_levels)
    log_candidates = np.log(candidates)
    return sorted({candidates[int(np.argmin(np.abs(log_candidates - np.log(t))))] for t in targets})


def sample_row(table: pd.DataFrame, position: int) -> int:
    """Return the row number of `position` in a sample's table (the row of its residual in `sample.h`)."""
    rows = np.flatnonzero(table["position"].to_numpy() == int(position))
    if rows.size != 1:
        raise KeyError(f"position {position} appears {rows.size} times in the sample table")
    return int(rows[0])
