"""Notebook 05: direction classes (Table 2) and per-position rank agreement (Spearman).

Pure functions over the sweep's `measurements` and `positions` (see `fisherlib.steps.stats` for the
conventions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .exactness import rho_by_eps
from .stats import POSITION_KEYS, PREDICTED_CLASSES, TABLE2_GROUPS, _require_columns, at_eps

# The write-up's sign pattern at ε = 1 (Table 2): which side of 1 each class's median ρ lies on.
WRITE_UP_SIDES = {"structured": 1, "tangent": 1, "random": -1, "eigvec": -1}


def median_rho_by_class(
    measurements: pd.DataFrame,
    eps: float,
    groups: Sequence[str] = TABLE2_GROUPS,
    column: str = "rho",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "position",
    with_full: bool = False,
) -> pd.DataFrame:
    """Table 2: median ρ at one ε per direction class, all seeds, signs and positions pooled.

    Rows: structured, tangent, random, eigvec (ranks 1–7 pooled), then `eigvec rank 1` and the negative
    `control` (whose `uᵀF_k u ≈ 0` makes ρ ≈ 0 by construction). Columns: cls, eps, median_<column>,
    ci_lo, ci_hi (clusters of `unit` resampled), n, n_positions, resampled, n_units, n_censored. With
    `with_full`, also `median_rho_full`, `ci_lo_full`, `ci_hi_full`: the same statistic with the
    full F, whose sign pattern can differ from F_k's where truncation pulls ρ below 1.
    """
    table = rho_by_eps(measurements, cls=list(groups), column=column, eps=[eps], n_boot=n_boot, seed=seed, level=level, unit=unit)
    if not with_full:
        return table
    full = rho_by_eps(measurements, cls=list(groups), column="rho_full", eps=[eps], n_boot=n_boot, seed=seed, level=level, unit=unit)
    full = full[["cls", "median_rho_full", "ci_lo", "ci_hi"]].rename(columns={"ci_lo": "ci_lo_full", "ci_hi": "ci_hi_full"})
    merged = table.merge(full, on="cls", how="left")
    for name in ("median_rho_full", "ci_lo_full", "ci_hi_full"):
        merged[name] = merged[name].fillna(0.0)  # a group without ρ_full rows (none in practice)
    return merged


def sign_pattern(table2: pd.DataFrame, column: str = "median_rho", sides: dict[str, int] = WRITE_UP_SIDES) -> pd.DataFrame:
    """Return, per class of `sides`, its median (`column`), its side of 1 (+1, −1, 0) and whether it matches.

    Columns: cls, median, side, expected, agrees. Classes missing from `table2` are left out.
    """
    indexed = table2.set_index("cls")
    rows = []
    for cls, expected in sides.items():
        if cls not in indexed.index:
            continue
        value = float(indexed.loc[cls, column])
        side = int(np.sign(value - 1))
        rows.append({"cls": cls, "median": value, "side": side, "expected": expected, "agrees": side == expected})
    return pd.DataFrame(rows, columns=["cls", "median", "side", "expected", "agrees"])


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
    totals = sums.groupby(POSITION_KEYS, sort=True).agg(xy=("xy", "sum"), xx=("xx", "sum"), yy=("yy", "sum"), n=("xy", "size"))
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
            frame = at[POSITION_KEYS + ["t_emp"]].merge(positions[POSITION_KEYS + [predictor]], on=POSITION_KEYS, how="left", validate="many_to_one")
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
