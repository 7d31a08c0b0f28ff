"""Shared statistics of the study's steps: selection, resampling units and the cluster bootstrap.

Every step module (`exactness`, `direction_classes`, `calibration`, `stratifiers`) works on the two
DataFrames of `fisherlib.run.measurements.load_sweep`, concatenated over seeds:

- `positions`: one row per (seed, position), with the position-level statistics (domain, doc_id,
  entropy, max_prob, eff_rank, trace_f, ...).
- `measurements`: long form, one row per (seed, position, direction, ε), with `cls`, `eig_rank`,
  `sign`, curvatures, cumulants, `t_pred`, `t_pred_full`, `t_cumulant`, `t_emp`, `rho`, `rho_full`
  and `censored`.

Conventions shared by every function:

- **The resampling unit.** The ~50 directions of one position share its distribution `p`, and the
  positions of one document share its context, so neither measurements nor positions are
  independent. Bootstraps and cross-validation folds resample whole clusters: `unit="position"`
  clusters by (seed, position); `unit="document"` by (domain, doc_id), the document a position was
  drawn from (the same document drawn under two seeds is one cluster). Document clustering needs the
  document columns on the measurements: `attach_documents(measurements, positions)` adds them. Every
  table with a CI says which unit it resampled (`resampled`) and how many units there were (`n_units`).
- A censored measurement (`t_emp = inf`, so `ρ = inf`) is kept in medians as larger than every finite
  value: its boundary lies beyond the cap, which is what "larger" means. Tables count them in
  `n_censored`.
- A statistic that needs finite `t_pred` and `t_emp` (rank correlations, calibration, log ρ) drops
  the rows where either is infinite and says how many in a `dropped` column.
- Every result is deterministic: bootstraps and folds take a `seed`.
- No NaN ever reaches a table: a quantity that is undefined is flagged, with the convention used.

Direction groups (the `cls` column of the results) are the classes of docs/method.md §7 (one table,
`fisherlib.core.directions.DIRECTION_CLASSES`, gives their names, signs and pools) plus
`"eigvec rank 1"` (the top eigenvector of `F_k`, both signs) and `"all"` (the four classes with a
finite `F_k` prediction: eigvec, structured, tangent, random).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from ..core.directions import CLASSES, POOL_PREDICTED, PREDICTED_CLASSES, SIGNED_CLASSES, report_order  # noqa: F401  (SIGNED_CLASSES: re-exported to the steps)

logger = logging.getLogger("fisherlib")

POSITION_KEYS = ["seed", "position"]
TOP_EIGVEC = "eigvec rank 1"
ALL_PREDICTED = POOL_PREDICTED  # the pooled group of PREDICTED_CLASSES
# Table 2's rows: the predicted classes in the write-up's order, the top eigenvector, then the rest (control).
TABLE2_GROUPS = (*report_order(PREDICTED_CLASSES), TOP_EIGVEC, *(c for c in CLASSES if c not in PREDICTED_CLASSES))
PREDICTORS = ("t_pred", "t_pred_full", "t_cumulant")
STRATIFIERS = ("entropy", "max_prob", "eff_rank")
WITHIN_TOLERANCE = 0.5  # "within 50%": |t / t_emp − 1| ≤ 0.5
MAD_TO_SD = 1.4826  # scales a median absolute deviation to the standard deviation of a normal
DOCUMENT_KEYS = ["domain", "doc_id"]
UNITS = {"position": POSITION_KEYS, "document": DOCUMENT_KEYS}

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


# --- resampling units ----------------------------------------------------------------------------


def attach_documents(measurements: pd.DataFrame, positions: pd.DataFrame) -> pd.DataFrame:
    """Return `measurements` with the `domain` and `doc_id` of each row's position (from `positions`).

    Needed for `unit="document"`. Measurements that already carry both columns are returned unchanged.
    """
    if set(DOCUMENT_KEYS) <= set(measurements.columns):
        return measurements
    _require_columns(positions, POSITION_KEYS + DOCUMENT_KEYS, "positions")
    documents = positions[POSITION_KEYS + DOCUMENT_KEYS].drop_duplicates(POSITION_KEYS)
    merged = measurements.merge(documents, on=POSITION_KEYS, how="left", validate="many_to_one")
    if merged[DOCUMENT_KEYS].isna().any().any():
        raise KeyError("positions lacks the document of some measured positions")
    return merged


def check_unit(unit: str) -> str:
    """Return `unit` if it is a resampling unit (`position` or `document`), else raise ValueError."""
    if unit not in UNITS:
        raise ValueError(f"resampling unit must be one of {sorted(UNITS)}, not {unit!r}")
    return unit


def unit_keys(frame: pd.DataFrame, unit: str) -> list[str]:
    """Return the columns that identify a cluster of `unit` in `frame`, checking that they exist."""
    keys = UNITS[check_unit(unit)]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise KeyError(f"resampling by {unit} needs columns {missing}: call attach_documents(measurements, positions) first")
    return list(keys)


def unit_codes(frame: pd.DataFrame, unit: str) -> np.ndarray:
    """Return an integer cluster code per row of `frame` for resampling unit `unit`."""
    return frame.groupby(unit_keys(frame, unit), sort=False).ngroup().to_numpy()


def count_units(frame: pd.DataFrame, unit: str) -> int:
    """Return how many clusters of `unit` (positions or documents) `frame` holds."""
    return int(frame[unit_keys(frame, unit)].drop_duplicates().shape[0])


_n_units = count_units


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


def bootstrap_median_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None) -> tuple[float, float, float]:
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


def _median_row(frame: pd.DataFrame, column: str, n_boot: int, seed: int, level: float, unit: str = "position") -> dict:
    """Return median, CI (clusters of `unit` resampled), n, n_positions, n_units and n_censored of `frame[column]`."""
    values = frame[column].to_numpy(float)
    keys = unit_keys(frame, unit)
    median, lo, hi = bootstrap_median_ci(values, n_boot=n_boot, seed=seed, level=level, groups=frame[keys])
    return {
        f"median_{column}": median,
        "ci_lo": lo,
        "ci_hi": hi,
        "n": int(values.size),
        "n_positions": _n_positions(frame),
        "resampled": unit,
        "n_units": _n_units(frame, unit),
        "n_censored": int(np.isinf(values).sum()),
    }


def _drop_nan(frame: pd.DataFrame, column: str, what: str) -> tuple[pd.DataFrame, int]:
    """Drop rows whose `column` is NaN (a measurement bug upstream), with a warning and a count."""
    bad = frame[column].isna().to_numpy()
    if bad.any():
        logger.warning("%s: %d rows with NaN %s dropped", what, int(bad.sum()), column)
    return frame[~bad], int(bad.sum())


def _order(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    return frame[first + [c for c in frame.columns if c not in first]]


# --- scoring a predictor against t_emp -----------------------------------------------------------------


def relative_errors(t, t_emp) -> np.ndarray:
    """Return `|t / t_emp − 1|`: an infinite prediction for a finite boundary is an infinite error."""
    t, t_emp = np.asarray(t, dtype=float), np.asarray(t_emp, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.abs(t / t_emp - 1)
    return np.where(np.isinf(t), np.inf, error)


def score(t, t_emp) -> dict:
    """Return within_50 (`|t/t_emp − 1| ≤ 0.5`), within_10pct, within_1pct and the median relative error.

    Rows of no prediction give zeros and n = 0; callers choose the rows (the same for every predictor).
    """
    error = relative_errors(t, t_emp)
    if error.size == 0:
        return {"within_50": 0.0, "within_10pct": 0.0, "within_1pct": 0.0, "median_abs_rel_error": 0.0, "n": 0}
    return {
        "within_50": float(np.mean(error <= WITHIN_TOLERANCE)),
        "within_10pct": float(np.mean(error <= 0.1)),
        "within_1pct": float(np.mean(error <= 0.01)),
        "median_abs_rel_error": sample_median(error),
        "n": int(error.size),
    }
