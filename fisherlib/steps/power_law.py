"""The power law of the divergence by direction class (Ferreira da Silva & Heimersheim 2026).

They fit the output change against the perturbation size as `D ∝ t^p` and find `p ≈ 2` for random
and PCA directions but `p > 2` for contrastive, MELBO and SAE-decoder directions: small pushes along
feature directions are absorbed (a plateau), then the divergence rises steeply.

The sweep holds, per direction, the first crossing `t_emp(ε)` at every ε of the grid, so `D(t_emp) = ε`
and the **local exponent** between two consecutive thresholds `ε₁ < ε₂` is

    p = (log ε₂ − log ε₁) / (log t_emp(ε₂) − log t_emp(ε₁)),

exact for `D = c t^p` whatever `c`. A quadratic form (the closed form's model) gives `p = 2`; a plateau
followed by a steep rise gives `p > 2`. The pairs of consecutive ε are grouped into ε bands (`small`,
`medium`, `large`: the grid's pairs split into thirds, in order) and each class's median exponent is
reported per band with a bootstrap CI over the resampling unit.

Conventions (as `fisherlib.steps.stats`): a pair whose boundary is censored at either ε (`t_emp = inf`)
is dropped and counted (`n_dropped`: the exponent is not measured there); a pair whose boundary did not
move (`t_emp(ε₂) ≤ t_emp(ε₁)`, a jump of the divergence) has `p = inf`, kept in medians as larger than
every finite exponent and counted in `n_plateau`.

Our contrastive directions are the token-pair directions `w_b − w_a` (`structured`) and their tangent
versions; random and eigenvector directions are the controls. In the layer study (`layer_study`), the
activation differences `actdiff` are the contrastive class; random and covariance the controls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.directions import POOL_CONTRASTIVE, PREDICTED_CLASSES, pool_members, report_order
from .stats import _require_columns, _stratum_seed, bootstrap_median_ci, count_units, unit_keys

QUADRATIC_EXPONENT = 2.0
BAND_NAMES = {1: ("all",), 2: ("small", "large"), 3: ("small", "medium", "large")}
SWEEP_KEYS = ("seed", "position", "direction")
LAYER_KEYS = ("layer", "position", "direction")
# Direction groups: name -> the classes pooled in it.
SWEEP_GROUPS: Mapping[str, tuple[str, ...]] = {
    POOL_CONTRASTIVE: pool_members(POOL_CONTRASTIVE),
    **{name: (name,) for name in report_order(PREDICTED_CLASSES)},
}
LAYER_GROUPS: Mapping[str, tuple[str, ...]] = {
    "actdiff": ("actdiff",),
    "random": ("random",),
    "covariance": ("covariance",),
    "eigvec": ("eigvec",),
}
CONTRASTIVE = {"sweep": POOL_CONTRASTIVE, "layer": "actdiff"}


def eps_bands(eps_values: Sequence[float], n_bands: int = 3) -> pd.DataFrame:
    """Return the grid's consecutive pairs `(eps_lo, eps_hi)` with their band (`small`, `medium`, `large`).

    The pairs, in order, are split into `min(n_bands, pairs)` runs of near-equal length. Columns:
    eps_lo, eps_hi, band, band_lo (the band's smallest ε), band_hi (its largest).
    """
    grid = sorted({float(e) for e in eps_values})
    if len(grid) < 2:
        raise ValueError(f"a local exponent needs at least two ε; the grid has {grid}")
    pairs = list(zip(grid[:-1], grid[1:]))
    n = min(n_bands, len(pairs), 3)
    rows = []
    for name, chunk in zip(BAND_NAMES[n], np.array_split(np.arange(len(pairs)), n)):
        lo, hi = pairs[chunk[0]][0], pairs[chunk[-1]][1]
        rows += [dict(eps_lo=pairs[i][0], eps_hi=pairs[i][1], band=name, band_lo=lo, band_hi=hi) for i in chunk]
    return pd.DataFrame(rows)


def local_exponents(
    measurements: pd.DataFrame,
    keys: Sequence[str] = SWEEP_KEYS,
    column: str = "t_emp",
    n_bands: int = 3,
    carry: Sequence[str] = ("cls", "eig_rank", "sign", "domain", "doc_id"),
) -> pd.DataFrame:
    """Return one row per direction and pair of consecutive ε: the local exponent `p = Δlog ε / Δlog t`.

    `keys` identify a direction (`SWEEP_KEYS` for the sweep, `LAYER_KEYS` for the layer study); the
    `carry` columns present are kept. Columns: keys, carried columns, eps_lo, eps_hi, band, band_lo,
    band_hi, t_lo, t_hi, p, usable (False where either boundary is censored: p is then 0 and the row
    is not used), plateau (p = inf: the boundary did not move).
    """
    keys = list(keys)
    _require_columns(measurements, [*keys, "eps", column], "measurements")
    carried = [c for c in carry if c in measurements.columns and c not in keys]
    frame = measurements[[*keys, *carried, "eps", column]].sort_values([*keys, "eps"], kind="stable")
    following = frame.groupby(keys, sort=False)[["eps", column]].shift(-1)
    has_next = following["eps"].notna().to_numpy()
    lo, hi = frame[has_next].reset_index(drop=True), following[has_next].reset_index(drop=True)
    t_lo, t_hi = lo[column].to_numpy(float), hi[column].to_numpy(float)
    e_lo, e_hi = lo["eps"].to_numpy(float), hi["eps"].to_numpy(float)
    usable = np.isfinite(t_lo) & np.isfinite(t_hi) & (t_lo > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dlog_t = np.log(t_hi / t_lo)
        p = np.where(dlog_t > 0, np.log(e_hi / e_lo) / np.where(dlog_t > 0, dlog_t, 1.0), np.inf)
    p = np.where(usable, p, 0.0)
    out = lo[[*keys, *carried]].copy()
    out["eps_lo"], out["eps_hi"], out["t_lo"], out["t_hi"] = e_lo, e_hi, np.where(usable, t_lo, 0.0), np.where(usable, t_hi, 0.0)
    out["p"], out["usable"], out["plateau"] = p, usable, usable & np.isinf(p)
    bands = eps_bands(measurements["eps"].unique(), n_bands)
    out = out.merge(bands, on=["eps_lo", "eps_hi"], how="left", validate="many_to_one")
    if out["band"].isna().any():  # a direction measured on part of the grid only: pairs of non-consecutive ε
        out = out[out["band"].notna()].reset_index(drop=True)
    return out


def _group_rows(frame: pd.DataFrame, groups: Mapping[str, tuple[str, ...]]):
    cls = frame["cls"].astype(str).to_numpy()
    for name, members in groups.items():
        yield name, frame[np.isin(cls, list(members))]


def exponents_by_class(
    exponents: pd.DataFrame,
    groups: Mapping[str, tuple[str, ...]] = SWEEP_GROUPS,
    by: Sequence[str] = (),
    unit: str = "position",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Return the median local exponent per ε band and direction group (and per `by`, e.g. `layer`).

    CI: percentile bootstrap over clusters of `unit` (positions or documents). Rows with no usable
    pair are left out. Columns: *by, band, eps_lo, eps_hi, cls, median_p, ci_lo, ci_hi, n, n_positions,
    resampled, n_units, n_plateau, n_dropped.
    """
    by = list(by)
    _require_columns(exponents, [*by, "band", "band_lo", "band_hi", "cls", "p", "usable", "position"], "exponents")
    rows = []
    for key, part in exponents.groupby([*by, "band"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for name, chosen in _group_rows(part, groups):
            if chosen.empty:
                continue
            usable = chosen[chosen["usable"].to_numpy(bool)]
            if usable.empty:
                continue
            values = usable["p"].to_numpy(float)
            keys = unit_keys(usable, unit)
            median, lo, hi = bootstrap_median_ci(values, n_boot=n_boot, seed=_stratum_seed(seed, *key, name), level=level, groups=usable[keys])
            position_keys = [k for k in ("seed", "layer", "position") if k in usable.columns and k not in by]
            rows.append(
                {
                    **dict(zip([*by, "band"], key)),
                    "eps_lo": float(usable["band_lo"].iloc[0]),
                    "eps_hi": float(usable["band_hi"].iloc[0]),
                    "cls": name,
                    "median_p": median,
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "n": int(values.size),
                    "n_positions": int(usable[position_keys].drop_duplicates().shape[0]),
                    "resampled": unit,
                    "n_units": count_units(usable, unit),
                    "n_plateau": int(np.isinf(values).sum()),
                    "n_dropped": int(len(chosen) - len(usable)),
                }
            )
    columns = [*by, "band", "eps_lo", "eps_hi", "cls", "median_p", "ci_lo", "ci_hi", "n", "n_positions", "resampled",
               "n_units", "n_plateau", "n_dropped"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    order = {name: i for i, name in enumerate(BAND_NAMES[3] + BAND_NAMES[1])}
    return table.sort_values([*by, "band"], key=_sort_key(order), kind="stable").reset_index(drop=True)


def _sort_key(band_order: Mapping[str, int]):
    def key(column: pd.Series) -> pd.Series:
        if column.name == "band":
            return column.map(band_order)
        if column.name == "layer":  # block boundaries by depth, `head` last
            return column.map(lambda v: np.inf if str(v) == "head" else float(v))
        return column

    return key


def layer_exponents(measurements: pd.DataFrame, positions: pd.DataFrame, seed: int = 0, n_bands: int = 3) -> pd.DataFrame:
    """Return `local_exponents` of the layer study's measurements, with each position's document and `seed`.

    `positions` (from `run_layer_study`) gives each measured position its `domain` and `doc_id`, for
    `unit="document"`; the layer study measures one seed's positions (`seed`).
    """
    exponents = local_exponents(measurements, keys=LAYER_KEYS, n_bands=n_bands)
    documents = [c for c in ("domain", "doc_id") if c in positions.columns]
    if documents:
        exponents = exponents.merge(positions[["position", *documents]].drop_duplicates("position"), on="position", how="left")
    exponents.insert(0, "seed", int(seed))
    return exponents
