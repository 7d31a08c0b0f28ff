"""Notebook 06: isotonic calibration of `t_pred`, and every predictor of the boundary on one denominator.

At each ε, an isotonic regression maps `t_pred` to `t_emp` (docs/method.md §10). Two spaces:

- `linear` (the write-up's): least squares of `t_emp` on `t_pred`;
- `log`: least squares of `log t_emp` on `log t_pred`, which weighs a 2× error alike at every scale
  (what "within 50%" measures) instead of letting the longest boundaries dominate.

Calibrators are scored out of fold: K-fold cross-validation grouped by the resampling unit
(`position` or `document`, see `fisherlib.steps.stats`), so no cluster is in both the training and the test
part. All predictors are scored on the same rows (`exactness.common_rows`): the closed forms, the
quartic root with its fallback, and the calibrators of both spaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .exactness import CLOSED_FORM_LABELS, common_rows, with_quartic
from .stats import (
    ALL_PREDICTED,
    PREDICTED_CLASSES,
    TOP_EIGVEC,
    _eps_values,
    at_eps,
    check_unit,
    group_mask,
    score,
    unit_codes,
)

SPACES = ("linear", "log")
CALIBRATED = {  # predictor name -> (space, per class?)
    "iso_pooled_linear": ("linear", False),
    "iso_per_class_linear": ("linear", True),
    "iso_pooled_log": ("log", False),
    "iso_per_class_log": ("log", True),
}
PREDICTOR_LABELS = {
    **CLOSED_FORM_LABELS,
    "iso_pooled_linear": "isotonic, pooled, linear space",
    "iso_per_class_linear": "isotonic, per class, linear space",
    "iso_pooled_log": "isotonic, pooled, log space",
    "iso_per_class_log": "isotonic, per class, log space",
}
COMPARISON_GROUPS = (ALL_PREDICTED, TOP_EIGVEC, *PREDICTED_CLASSES)


def check_space(space: str) -> str:
    """Return `space` if it is `linear` or `log`, else raise ValueError."""
    if space not in SPACES:
        raise ValueError(f"calibration space must be one of {SPACES}, not {space!r}")
    return space


def unit_folds(frame: pd.DataFrame, n_splits: int = 5, seed: int = 0, unit: str = "position") -> np.ndarray:
    """Return a fold id `[rows]` per row such that all rows of one cluster of `unit` share a fold.

    sklearn's `GroupKFold` over the clusters, shuffled with `seed` where the installed sklearn supports
    it (≥ 1.6), else in its deterministic balanced order.
    """
    from sklearn.model_selection import GroupKFold

    groups = unit_codes(frame, unit)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} {unit}s cannot be split into {n_splits} folds; lower n_splits")
    try:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    except TypeError:
        splitter = GroupKFold(n_splits=n_splits)
    folds = np.empty(len(frame), dtype=int)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(frame)), groups=groups)):
        folds[test] = fold
    return folds


def position_folds(frame: pd.DataFrame, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Return folds grouped by (seed, position): `unit_folds` with `unit="position"`."""
    return unit_folds(frame, n_splits, seed, "position")


def _fit_predict(train_x, train_y, test_x, space: str) -> np.ndarray:
    """Fit `t_emp` on `t_pred` by isotonic regression and predict; in log space both axes are logs."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip", increasing=True)
    if check_space(space) == "log":
        model.fit(np.log(train_x), np.log(train_y))
        return np.exp(model.predict(np.log(test_x)))
    model.fit(train_x, train_y)
    return model.predict(test_x)


def _usable_rows(at: pd.DataFrame, classes: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Return (the usable rows of `classes`, the in-classes mask, the usable mask) over `at`'s rows."""
    in_classes = np.isin(at["cls"].astype(str).to_numpy(), list(classes))
    usable = in_classes & common_rows(at)
    frame = with_quartic(at[usable])
    return frame.assign(cls=frame["cls"].astype(str)), in_classes, usable


def out_of_fold_predictions(
    measurements: pd.DataFrame,
    eps: float,
    n_splits: int = 5,
    seed: int = 0,
    classes: Sequence[str] = PREDICTED_CLASSES,
    unit: str = "position",
    spaces: Sequence[str] = SPACES,
) -> tuple[pd.DataFrame, int]:
    """Return the usable rows at `eps` with every predictor's prediction, and the count of dropped rows.

    Usable rows: those of `classes` with finite positive `t_emp`, `t_pred` and `t_pred_full`. Added
    columns: `t_quartic`, `quartic_fallback` (see `exactness.quartic_with_fallback`), `fold`, and per
    space `iso_pooled_<space>` (one isotonic fit over all classes) and `iso_per_class_<space>` (one fit
    per class). Each row's calibrated prediction comes from calibrators fitted on the other folds,
    whose clusters of `unit` are disjoint from its own.
    """
    check_unit(unit)
    frame, in_classes, usable = _usable_rows(at_eps(measurements, eps), classes)
    frame["fold"] = unit_folds(frame, n_splits=n_splits, seed=seed, unit=unit)
    t_pred, t_emp = frame["t_pred"].to_numpy(float), frame["t_emp"].to_numpy(float)
    cls, folds = frame["cls"].to_numpy(), frame["fold"].to_numpy()
    for space in spaces:
        pooled, per_class = np.empty(len(frame)), np.empty(len(frame))
        for fold in range(n_splits):
            test, train = folds == fold, folds != fold
            pooled[test] = _fit_predict(t_pred[train], t_emp[train], t_pred[test], space)
            for name in classes:
                test_c, train_c = test & (cls == name), train & (cls == name)
                if not test_c.any():
                    continue
                if not train_c.any():
                    raise ValueError(f"class {name} has no training rows outside fold {fold}; too few {unit}s")
                per_class[test_c] = _fit_predict(t_pred[train_c], t_emp[train_c], t_pred[test_c], space)
        frame[f"iso_pooled_{space}"] = pooled
        frame[f"iso_per_class_{space}"] = per_class
    return frame, int((in_classes & ~usable).sum())


def _group_rows(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    return frame if group == ALL_PREDICTED else frame[group_mask(frame, group)]


def _dropped_in_group(at: pd.DataFrame, in_classes: np.ndarray, usable: np.ndarray, group: str) -> int:
    mask = in_classes if group == ALL_PREDICTED else group_mask(at, group)
    return int((mask & ~usable).sum())


def predictor_comparison(
    measurements: pd.DataFrame,
    eps=None,
    groups: Sequence[str] = COMPARISON_GROUPS,
    n_splits: int = 5,
    seed: int = 0,
    classes: Sequence[str] = PREDICTED_CLASSES,
    unit: str = "position",
) -> pd.DataFrame:
    """Return every predictor of the boundary scored on the same rows, per ε and direction group.

    Predictors: `t_pred` (F_k), `t_pred_full` (full F), `t_quartic` (the quartic Taylor root with
    fallback to `t_pred_full`; `n_fallback` counts the fallback rows), and the out-of-fold isotonic
    calibrators `iso_{pooled,per_class}_{linear,log}`. Within a (ε, group) every predictor has the
    same `n`; `dropped` counts the group's rows without a finite `t_emp`, `t_pred` or `t_pred_full`.

    Columns: eps, cls, predictor, label, within_50, within_10pct, within_1pct, median_abs_rel_error,
    n, n_fallback, dropped, resampled (the CV folds' unit).
    """
    rows = []
    predictors = ["t_pred", "t_pred_full", "t_quartic", *CALIBRATED]
    for e in _eps_values(measurements, eps):
        at = at_eps(measurements, e)
        frame, _ = out_of_fold_predictions(measurements, e, n_splits, seed, classes, unit)
        _, in_classes, usable = _usable_rows(at, classes)
        for group in groups:
            part = _group_rows(frame, group)
            if part.empty:
                continue
            t_emp = part["t_emp"].to_numpy(float)
            for predictor in predictors:
                row = {"eps": e, "cls": group, "predictor": predictor, "label": PREDICTOR_LABELS[predictor]}
                row.update(score(part[predictor].to_numpy(float), t_emp))
                row["n_fallback"] = int(part["quartic_fallback"].sum()) if predictor == "t_quartic" else 0
                row["dropped"] = _dropped_in_group(at, in_classes, usable, group)
                row["resampled"] = unit
                rows.append(row)
    return pd.DataFrame(rows)


def calibrate_isotonic_cv(
    measurements: pd.DataFrame,
    n_splits: int = 5,
    per_class: bool = True,
    seed: int = 0,
    eps=None,
    classes: Sequence[str] = PREDICTED_CLASSES,
    spaces: Sequence[str] | str = "linear",
    unit: str = "position",
) -> pd.DataFrame:
    """Return the fraction of measurements within 50% of `t_emp`, raw and isotonic-calibrated, by ε and class.

    At each ε, isotonic regressions (sklearn, increasing, clipped outside the training range) map
    `t_pred` to `t_emp` in each of `spaces` (`linear`, `log`; see the module docstring): one pooled
    over `classes`, and with `per_class` one per class, scored out of fold by `n_splits`-fold
    cross-validation grouped by `unit`.

    Long form, one row per (eps, cls, method, space); cls is `all` or a class; method is `raw` (space
    `none`), `calibrated_pooled` or `calibrated_per_class` (the latter evaluated on `all` too).
    Columns: eps, cls, method, space, within_50, median_abs_rel_error, n, dropped (rows without a
    finite `t_emp`, `t_pred` or `t_pred_full`), resampled.
    """
    spaces = [spaces] if isinstance(spaces, str) else list(spaces)
    for space in spaces:
        check_space(space)
    rows = []
    for e in _eps_values(measurements, eps):
        at = at_eps(measurements, e)
        frame, _ = out_of_fold_predictions(measurements, e, n_splits, seed, classes, unit, spaces)
        _, in_classes, usable = _usable_rows(at, classes)
        methods = [("raw", "none", "t_pred")]
        for space in spaces:
            methods.append(("calibrated_pooled", space, f"iso_pooled_{space}"))
            if per_class:
                methods.append(("calibrated_per_class", space, f"iso_per_class_{space}"))
        for group in [ALL_PREDICTED, *classes]:
            part = _group_rows(frame, group)
            t_emp = part["t_emp"].to_numpy(float)
            for method, space, column in methods:
                result = score(part[column].to_numpy(float), t_emp)
                rows.append(
                    {
                        "eps": e,
                        "cls": group,
                        "method": method,
                        "space": space,
                        "within_50": result["within_50"],
                        "median_abs_rel_error": result["median_abs_rel_error"],
                        "n": result["n"],
                        "dropped": _dropped_in_group(at, in_classes, usable, group),
                        "resampled": unit,
                    }
                )
    return pd.DataFrame(rows)


def headline(calibration: pd.DataFrame, eps: float, space: str) -> pd.DataFrame:
    """Return the rows of `calibrate_isotonic_cv` at `eps` for the raw closed form and the calibrators of `space`."""
    at = calibration[np.isclose(calibration["eps"].astype(float), float(eps))]
    return at[(at["method"] == "raw") | (at["space"] == check_space(space))].reset_index(drop=True)


def isotonic_curve(
    measurements: pd.DataFrame,
    eps: float,
    classes: Sequence[str] = PREDICTED_CLASSES,
    per_class: bool = True,
    n_grid: int = 200,
    space: str = "linear",
) -> pd.DataFrame:
    """Return isotonic calibration curves `t_pred → t_cal` at `eps`, fitted on all usable rows (no CV).

    For drawing, not scoring (`calibrate_isotonic_cv` scores). One curve pooled over `classes`
    (cls `all`) and, with `per_class`, one per class, each on a log-spaced grid spanning its `t_pred`.
    Columns: cls, eps, space, t_pred, t_cal.
    """
    at, _, _ = _usable_rows(at_eps(measurements, eps), classes)
    rows = []
    for group in [ALL_PREDICTED, *(classes if per_class else [])]:
        part = _group_rows(at, group)
        if part.empty:
            continue
        x, y = part["t_pred"].to_numpy(float), part["t_emp"].to_numpy(float)
        grid = np.geomspace(x.min(), x.max(), n_grid) if x.min() < x.max() else x[:1]
        t_cal = _fit_predict(x, y, grid, space)
        rows.append(pd.DataFrame({"cls": group, "eps": float(eps), "space": space, "t_pred": grid, "t_cal": t_cal}))
    return pd.concat(rows, ignore_index=True)
