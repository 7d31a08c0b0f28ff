"""Figures of the study: each function takes a table from a step module (`exactness`, `direction_classes`,
`calibration`, `stratifiers`, `stable_regions`) and returns a Figure.

Units on every axis: ε in nats; boundary distances `t` in residual-stream units (the L2 length of the
step `t u` added to the post-final-norm residual `h`, with `‖u‖ = 1`); ρ is dimensionless (1 where the
quadratic form is exact). Nothing here computes a statistic: the tables do.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..steps.calibration import PREDICTOR_LABELS
from ..steps.stable_regions import PlaneSlice
from ..steps.stats import ALL_PREDICTED, PREDICTED_CLASSES, TABLE2_GROUPS, TOP_EIGVEC, WITHIN_TOLERANCE, at_eps, group_mask, select_group

EPS_LABEL = r"threshold $\varepsilon$ (nats)"
T_PRED_LABEL = r"predicted boundary $t_\mathrm{pred}=\sqrt{2\varepsilon/u^\top F_k u}$ (residual-stream units)"
T_EMP_LABEL = r"empirical boundary $t_\mathrm{emp}$ (residual-stream units)"
RHO_LABEL = r"median $\rho = \frac{1}{2} t_\mathrm{emp}^2\, u^\top F_k u / \varepsilon$"
METHOD_STYLES = {
    "raw": dict(color="0.45", linestyle=":", marker="o"),
    "calibrated_pooled": dict(color="C0", linestyle="-", marker="s"),
    "calibrated_per_class": dict(color="C1", linestyle="--", marker="^"),
}


def _group_colors(groups: Sequence[str]) -> dict[str, str]:
    """Return one stable colour per direction group, the same in every figure."""
    order = list(TABLE2_GROUPS)
    colors = {g: f"C{order.index(g)}" if g in order else f"C{(len(order) + i) % 10}" for i, g in enumerate(groups)}
    if ALL_PREDICTED in colors:
        colors[ALL_PREDICTED] = "0.35"
    return colors


def _group_panels(frame: pd.DataFrame, groups: Sequence[str], width: float):
    """Return a figure with one panel per direction group (shared y) and `[(ax, group, frame's rows of it)]`."""
    fig, axes = plt.subplots(1, len(groups), figsize=(width * len(groups), 3.9), sharey=True, squeeze=False)
    return fig, [(ax, group, frame[frame["cls"] == group]) for ax, group in zip(axes[0], groups)]


def _plain_log_axis(ax, axis: str = "y") -> None:
    """Put a log axis's ticks at 1, 2, 5 × 10ⁿ, labelled as plain numbers (0.5, 1, 2), not 2×10⁰."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def _rho_scale(ax, values) -> None:
    """Use a log y axis (ticks as plain numbers) when ρ spans more than 4×, else a linear one."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() / values.min() > 4:
        ax.set_yscale("log")
        _plain_log_axis(ax)


def _exact_line(ax, y: float = 1.0, label: str = r"exact ($\rho = 1$)") -> None:
    ax.axhline(y, color="black", linewidth=0.8, linestyle="--", label=label)


def plot_rho_by_eig_rank(by_rank: pd.DataFrame, column: str = "median_rho", title: str = "") -> Figure:
    """Plot median ρ with its bootstrap CI against the eigenvector rank of `F_k` (`rho_by_eig_rank`)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    y = by_rank[column].to_numpy(float)
    errors = np.vstack([y - by_rank["ci_lo"].to_numpy(float), by_rank["ci_hi"].to_numpy(float) - y])
    ax.errorbar(by_rank["eig_rank"], y, yerr=np.clip(errors, 0, None), marker="o", capsize=3, label="median, 95% CI")
    _exact_line(ax)
    ax.set_xlabel(r"eigenvector rank of $F_k$ (1 = largest eigenvalue)")
    ax.set_ylabel(RHO_LABEL)
    eps = by_rank["eps"].iloc[0] if len(by_rank) else float("nan")
    ax.set_title(title or rf"$\rho$ by eigenvector rank at $\varepsilon$ = {eps:g} nats")
    ax.set_xticks(by_rank["eig_rank"])
    ax.legend(frameon=False, loc="best")
    return fig


def plot_rho_by_eps(by_eps: pd.DataFrame, column: str = "median_rho", title: str = "", log_y: bool = True) -> Figure:
    """Plot median ρ (band: bootstrap CI) against ε, one line per direction group (`rho_by_eps`).

    The control group, whose ρ ≈ 0 by construction, is left out (with `log_y`) and named in the title;
    the axis is logarithmic where ρ spans more than 4×.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    groups = [g for g in dict.fromkeys(by_eps["cls"]) if not (log_y and g == "control")]
    colors = _group_colors(groups)
    for group in groups:
        part = by_eps[by_eps["cls"] == group].sort_values("eps")
        ax.plot(part["eps"], part[column], marker="o", color=colors[group], label=group)
        if {"ci_lo", "ci_hi"} <= set(part.columns):
            ax.fill_between(part["eps"], part["ci_lo"], part["ci_hi"], color=colors[group], alpha=0.2, linewidth=0)
    _exact_line(ax)
    ax.set_xscale("log")
    if log_y:
        _rho_scale(ax, by_eps[by_eps["cls"].isin(groups)][[column, "ci_lo", "ci_hi"]].to_numpy().ravel())
    ax.set_xlabel(EPS_LABEL)
    ax.set_ylabel(RHO_LABEL)
    left_out = " (control left out: ρ ≈ 0 by construction)" if log_y and "control" in set(by_eps["cls"]) else ""
    ax.set_title(title or r"$\rho$ against $\varepsilon$ by direction class" + left_out, fontsize="medium")
    ax.legend(frameon=False, fontsize="small", ncol=2, loc="best")
    return fig


def plot_rho_topk_vs_full(table: pd.DataFrame, title: str = "") -> Figure:
    """Plot median ρ (truncated F_k, solid) and ρ_full (full F, dashed) against ε, and the truncation share.

    Left: where the dashed line sits at 1 while the solid one does not, truncating F (not the Taylor
    expansion) causes the deviation. Right: `truncation_share` from `rho_topk_vs_full`.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = list(dict.fromkeys(table["cls"]))
    colors = _group_colors(groups)
    for group in groups:
        part = table[table["cls"] == group].sort_values("eps")
        left.plot(part["eps"], part["median_rho"], marker="o", color=colors[group], label=group)
        left.plot(part["eps"], part["median_rho_full"], marker="o", markerfacecolor="none", linestyle="--",
                  color=colors[group])  # fmt: skip
        right.plot(part["eps"], part["truncation_share"], marker="o", color=colors[group], label=group)
    _exact_line(left)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel(EPS_LABEL)
    _rho_scale(left, table[["median_rho", "median_rho_full"]].to_numpy().ravel())
    left.set_ylabel(r"median $\rho$ (solid: $F_k$; dashed: full $F$)")
    style = [
        Line2D([], [], color="0.3", label=r"$\rho$ with $F_k$"),
        Line2D([], [], color="0.3", linestyle="--", label=r"$\rho_\mathrm{full}$ with $F$"),
    ]
    left.legend(handles=left.get_legend_handles_labels()[0] + style, frameon=False, fontsize="small", ncol=2, loc="best")
    right.set_ylim(0, 1)
    right.set_ylabel(r"truncation share of $|\log\rho|$")
    right.set_title(
        r"$\mathrm{med}|\log r| \,/\, (\mathrm{med}|\log r| + \mathrm{med}|\log \rho_\mathrm{full}|)$, "
        r"$r = u^\top F_k u \,/\, u^\top F u$" + "\n(near 1: truncating F dominates)",
        fontsize="small",
    )
    fig.suptitle(title or r"Top-$k$ truncation against the Taylor expansion")
    fig.tight_layout()
    return fig


def _central_range(values: np.ndarray, coverage: float = 0.98, pad: float = 0.08) -> tuple[float, float]:
    """Return the range holding the central `coverage` of `values`, padded by `pad` of its width on each side."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -1.0, 1.0
    lo, hi = np.quantile(values, [(1 - coverage) / 2, (1 + coverage) / 2])
    width = max(hi - lo, 1e-12)
    return float(lo - pad * width), float(hi + pad * width)


def plot_cumulant_check(terms: pd.DataFrame, groups: Sequence[str] = PREDICTED_CLASSES, max_points: int = 20000, seed: int = 0) -> Figure:
    """Plot `ρ_full − 1` against the skewness term `κ₃t/(3κ₂)` and `ρ_full` against the quartic prediction.

    `terms` from `exactness.cumulant_terms` (one ε); only `usable` rows are drawn, a seeded subsample
    of at most `max_points`. Linear axes spanning the central 98% of the drawn values (the panel
    titles count the points outside). Left: the leading-order law `ρ − 1 ≈ −κ₃t/(3κ₂)` is the line of
    slope −1. Right: the quartic prediction `ρ_theory = 1/(1 + κ₃t/(3κ₂) + κ₄t²/(12κ₂))` against the
    measured `ρ_full` (points with an infinite prediction are left out of this panel).
    """
    usable = terms[terms["usable"].to_numpy(bool) & terms["cls"].astype(str).isin(list(groups)).to_numpy()]
    if len(usable) > max_points:
        usable = usable.sample(max_points, random_state=seed)
    colors = _group_colors(list(groups))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    skew = usable["skew_term"].to_numpy(float)
    deviation = usable["rho_full"].to_numpy(float) - 1
    theory = usable["rho_theory"].to_numpy(float)
    finite_theory = np.isfinite(theory)
    x_lim, y_lim = _central_range(skew), _central_range(deviation)
    both = np.r_[deviation[finite_theory] + 1, theory[finite_theory]]
    r_lim = _central_range(both)
    for group in groups:
        in_group = (usable["cls"].astype(str) == group).to_numpy()
        left.scatter(skew[in_group], deviation[in_group], s=5, alpha=0.35, color=colors[group], label=group, rasterized=True)
        shown = in_group & finite_theory
        right.scatter(theory[shown], deviation[shown] + 1, s=5, alpha=0.35, color=colors[group], rasterized=True)
    x = np.linspace(*x_lim, 200)
    left.plot(x, -x, color="black", linewidth=1, label=r"leading order $\rho-1=-x$")
    resummed = np.where(1 + x > 0, 1 / np.where(1 + x > 0, 1 + x, 1) - 1, np.nan)
    left.plot(x, resummed, color="black", linestyle="--", linewidth=1, label=r"$1/(1+x) - 1$")
    left.axhline(0, color="0.6", linewidth=0.6)
    left.axvline(0, color="0.6", linewidth=0.6)
    left.set_xlim(*x_lim)
    left.set_ylim(*y_lim)
    outside_left = int(np.sum((skew < x_lim[0]) | (skew > x_lim[1]) | (deviation < y_lim[0]) | (deviation > y_lim[1])))
    left.set_title(f"sign law ({outside_left} of {skew.size} points outside the axes)", fontsize="medium")
    left.set_xlabel(r"skewness term $x = \kappa_3 t_\mathrm{pred,full} / (3\kappa_2)$")
    left.set_ylabel(r"$\rho_\mathrm{full} - 1$ (full $F$)")
    right.plot(r_lim, r_lim, color="black", linewidth=1, linestyle=":", label="identity")
    right.set_xlim(*r_lim)
    right.set_ylim(*r_lim)
    measured = deviation[finite_theory] + 1
    outside_right = int(np.sum((theory[finite_theory] < r_lim[0]) | (theory[finite_theory] > r_lim[1])
                               | (measured < r_lim[0]) | (measured > r_lim[1])))  # fmt: skip
    right.set_title(f"quartic correction ({outside_right} of {int(finite_theory.sum())} points outside)", fontsize="medium")
    right.set_xlabel(r"quartic prediction $1/(1 + \kappa_3 t/(3\kappa_2) + \kappa_4 t^2/(12\kappa_2))$")
    right.set_ylabel(r"measured $\rho_\mathrm{full}$")
    handles, labels = left.get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", linestyle=":", label="identity (right)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize="small", markerscale=3)
    eps = terms["eps"].iloc[0] if len(terms) else float("nan")
    dropped = int((~terms["usable"].to_numpy(bool)).sum())
    fig.suptitle(
        rf"Higher order at $\varepsilon$ = {eps:g} nats ({len(usable)} points drawn; "
        f"{dropped} rows without finite terms left out)",
        fontsize="medium",
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_predictor_accuracy(accuracy: pd.DataFrame, groups: Sequence[str] | None = None) -> Figure:
    """Plot the median relative error `|t/t_emp − 1|` of each closed form against ε (`predictor_accuracy`)."""
    groups = list(groups or dict.fromkeys(accuracy["cls"]))
    fig, panels = _group_panels(accuracy, groups, width=3.4)
    for ax, group, part in panels:
        for predictor, series in part.groupby("predictor", sort=False):
            series = series.sort_values("eps")
            error = series["median_abs_rel_error"].clip(lower=1e-8)  # a log axis cannot show an exact 0
            style = {"marker": "o", **COMPARISON_STYLES.get(predictor, {})}
            ax.plot(series["eps"], error, label=PREDICTOR_LABELS.get(predictor, predictor), **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel(EPS_LABEL)
    panels[0][0].set_ylabel(r"median $|t/t_\mathrm{emp} - 1|$ (same rows for all)")
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize="small")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


COMPARISON_STYLES = {
    "t_pred": dict(color="0.45", linestyle=":", marker="o"),
    "t_pred_full": dict(color="0.2", linestyle="-.", marker="o"),
    "t_quartic": dict(color="C2", linestyle="-", marker="D", linewidth=2),
    "iso_pooled_linear": dict(color="C0", linestyle="-", marker="s"),
    "iso_per_class_linear": dict(color="C1", linestyle="-", marker="^"),
    "iso_pooled_log": dict(color="C0", linestyle="--", marker="s", markerfacecolor="none"),
    "iso_per_class_log": dict(color="C1", linestyle="--", marker="^", markerfacecolor="none"),
}


def plot_predictor_comparison(comparison: pd.DataFrame, groups: Sequence[str] | None = None) -> Figure:
    """Plot the fraction within 50% of `t_emp` against ε for every predictor, one panel per group.

    From `calibration.predictor_comparison`: the closed forms (grey), the quartic root with fallback
    (red) and the out-of-fold isotonic calibrators (solid: linear space, dashed: log space), all on the
    same rows of each panel.
    """
    groups = list(groups or dict.fromkeys(comparison["cls"]))
    fig, panels = _group_panels(comparison, groups, width=3.3)
    for ax, group, part in panels:
        for predictor, series in part.groupby("predictor", sort=False):
            series = series.sort_values("eps")
            ax.plot(series["eps"], series["within_50"], label=PREDICTOR_LABELS.get(predictor, predictor),
                    **COMPARISON_STYLES.get(predictor, {}))  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(EPS_LABEL)
        ax.set_title("all four classes" if group == ALL_PREDICTED else group)
    panels[0][0].set_ylabel(rf"fraction with $|t/t_\mathrm{{emp}} - 1| \leq {WITHIN_TOLERANCE:g}$")
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize="small")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_rho_by_class(
    measurements: pd.DataFrame,
    eps: float,
    groups: Sequence[str] = TABLE2_GROUPS[: TABLE2_GROUPS.index(TOP_EIGVEC) + 1],  # the predicted classes, then the top eigenvector
) -> Figure:
    """Plot the distribution of ρ per direction class at one ε: box plots on a log axis.

    Censored measurements and ρ = 0 cannot sit on a log axis: they are left out and counted in the labels.
    """
    at = at_eps(measurements, eps)
    data, labels = [], []
    for group in groups:
        rho = select_group(at, group)["rho"].to_numpy(float)
        finite = rho[np.isfinite(rho) & (rho > 0)]
        data.append(finite)
        labels.append(f"{group}\n(n={finite.size}, {rho.size - finite.size} left out)")
    fig, ax = plt.subplots(figsize=(1.9 * len(groups) + 1, 4.2))
    ax.boxplot(data, showfliers=False, whis=(5, 95))
    ax.set_xticks(range(1, len(groups) + 1), labels, fontsize="small")
    _exact_line(ax)
    ax.set_yscale("log")
    _plain_log_axis(ax)
    ax.set_ylabel(r"$\rho$ (box: quartiles; whiskers: 5–95%)")
    ax.set_title(rf"$\rho$ by direction class at $\varepsilon$ = {eps:g} nats")
    ax.legend(frameon=False)
    return fig


def plot_spearman_histogram(per_position: pd.DataFrame, predictor: str = "t_pred", reference_range: tuple[float, float] | None = None) -> Figure:
    """Plot the histogram of per-position Spearman(t_pred, t_emp), one colour per seed (`per_position_spearman`).

    With `reference_range`, shade the write-up's reported range.
    """
    part = per_position[(per_position["predictor"] == predictor) & per_position["defined"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.linspace(-1, 1, 41)
    for seed, values in part.groupby("seed", sort=True):
        ax.hist(values["spearman"], bins=bins, alpha=0.55, label=f"seed {seed} ({len(values)} positions)")
    if reference_range is not None:
        ax.axvspan(*reference_range, color="0.85", zorder=0, label="write-up range")
    undefined = int(((per_position["predictor"] == predictor) & ~per_position["defined"]).sum())
    ax.set_xlabel(r"Spearman between $t_\mathrm{pred}$ and $t_\mathrm{emp}$ across one position's directions")
    ax.set_ylabel("positions")
    eps = part["eps"].iloc[0] if len(part) else float("nan")
    title = rf"Per-position rank agreement at $\varepsilon$ = {eps:g} nats ({undefined} undefined left out)"
    ax.set_title(title, fontsize="medium")
    ax.legend(frameon=False, fontsize="small", loc="best")
    return fig


def plot_calibration_within50(calibration: pd.DataFrame, groups: Sequence[str] | None = None) -> Figure:
    """Plot the fraction within 50% of `t_emp` against ε: raw, pooled and per-class isotonic calibration.

    From `calibrate_isotonic_cv`; one panel per class, the first for the four classes together.
    Colour: the method; line style: the calibration space (solid linear, dashed log).
    """
    groups = list(groups or [ALL_PREDICTED, *[c for c in PREDICTED_CLASSES if c in set(calibration["cls"])]])
    spaces = calibration["space"] if "space" in calibration.columns else pd.Series("log", index=calibration.index)
    fig, panels = _group_panels(calibration, groups, width=3.3)
    for ax, group, part in panels:
        for (method, space), series in part.groupby([part["method"], spaces[part.index]], sort=False):
            series = series.sort_values("eps")
            style = dict(METHOD_STYLES.get(method, {}))
            if space == "log":
                style.update(linestyle="--", markerfacecolor="none")
            elif space == "linear":
                style.update(linestyle="-")
            label = method.replace("_", " ") + ("" if space == "none" else f" ({space})")
            ax.plot(series["eps"], series["within_50"], label=label, **style)
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, np.floor((calibration["within_50"].min() - 0.02) * 10) / 10), 1.01)
        ax.set_xlabel(EPS_LABEL)
        ax.set_title("all four classes (pooled)" if group == ALL_PREDICTED else group)
    unit = calibration["resampled"].iloc[0] if "resampled" in calibration.columns and len(calibration) else "position"
    within = rf"fraction with $|t/t_\mathrm{{emp}} - 1| \leq {WITHIN_TOLERANCE:g}$"
    panels[0][0].set_ylabel(within + f"\n(5-fold CV grouped by {unit})")
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize="small")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return fig


def _few_log_ticks(ax) -> None:
    """Label a log axis pair with at most about four plain-number ticks each, so that labels never overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, numticks=4))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())


def plot_calibration_curve(
    measurements: pd.DataFrame,
    curve: pd.DataFrame,
    groups: Sequence[str] | None = None,
    max_points: int = 4000,
    seed: int = 0,
) -> Figure:
    """Plot `t_emp` against `t_pred` (log-log) with the isotonic fit (`isotonic_curve`) and the identity.

    The grey band is where a prediction equal to `t_pred` is within 50% of `t_emp`
    (`t_pred/1.5 ≤ t_emp ≤ 2 t_pred`); points are a seeded subsample of at most `max_points` per panel.
    """
    eps = float(curve["eps"].iloc[0])
    space = curve["space"].iloc[0] if "space" in curve.columns else "log"
    at = at_eps(measurements, eps)
    groups = list(groups or dict.fromkeys(curve["cls"]))
    colors = _group_colors(groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 4.0), squeeze=False)
    for ax, group in zip(axes[0], groups):
        part = at[group_mask(at, group)]
        part = part[np.isfinite(part["t_pred"]) & np.isfinite(part["t_emp"]) & (part["t_pred"] > 0)]
        if len(part) > max_points:
            part = part.sample(max_points, random_state=seed)
        ax.scatter(part["t_pred"], part["t_emp"], s=4, alpha=0.3, color=colors[group], rasterized=True)
        fit = curve[curve["cls"] == group]
        ax.plot(fit["t_pred"], fit["t_cal"], color="black", linewidth=1.5, label=f"isotonic fit ({space} space)")
        if len(part):
            grid = np.geomspace(part["t_pred"].min(), part["t_pred"].max(), 50)
            ax.plot(grid, grid, color="0.3", linestyle="--", linewidth=1, label="identity")
            band = (grid / (1 + WITHIN_TOLERANCE), grid / (1 - WITHIN_TOLERANCE))
            ax.fill_between(grid, *band, color="0.8", alpha=0.5, linewidth=0, label="raw within 50%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _few_log_ticks(ax)
        ax.set_title("all four classes" if group == ALL_PREDICTED else group)
        ax.set_xlabel(r"$t_\mathrm{pred}$ (residual-stream units)")
    axes[0][0].set_ylabel(T_EMP_LABEL)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize="small")
    fig.suptitle(rf"Isotonic calibration at $\varepsilon$ = {eps:g} nats (fit on all positions, for display)", fontsize="medium")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_stratifier_variance(variance: pd.DataFrame) -> Figure:
    """Plot the within-cell spread of log ρ per stratifier, one column per selection (`stratifier_variance`).

    Top row: the pooled within-quintile variance (dashed line: the total variance, what a useless
    stratifier leaves); bottom row: its robust counterpart (pooled squared scaled MAD). Each bar is
    labelled inside with its ratio to the best stratifier (green). The axis is linear from 0 unless
    the bars span more than 10×, then logarithmic; each panel's y label says which.
    """
    selections = list(dict.fromkeys(zip(variance["cls"], variance["eps"])))
    fig, axes = plt.subplots(2, len(selections), figsize=(4.6 * len(selections), 6.8), squeeze=False)
    rows = (
        ("within_var", "ratio_to_best", "within-quintile variance\nof $\\log\\rho$"),
        ("robust_within_var", "robust_ratio_to_best", "within-quintile (1.48 MAD)$^2$\nof $\\log\\rho$"),
    )
    for col, (group, eps) in enumerate(selections):
        part = variance[(variance["cls"] == group) & (variance["eps"] == eps)]
        for row, (column, ratio_column, label) in enumerate(rows):
            ax = axes[row][col]
            values = part[column].to_numpy(float)
            best = values == values.min()
            bars = ax.bar(part["stratifier"], values, color=["C2" if b else "C7" for b in best])
            log_axis = values.min() > 0 and values.max() / values.min() > 10
            for bar, ratio in zip(bars, part[ratio_column]):
                middle = np.sqrt(bar.get_height() * values.min()) if log_axis else bar.get_height() / 2
                ax.text(bar.get_x() + bar.get_width() / 2, middle, f"×{ratio:.2f}" if ratio < 10 else f"×{ratio:.3g}", ha="center", va="center",
                        fontsize="small", color="white", fontweight="bold")  # fmt: skip
            if row == 0:
                ax.axhline(part["total_var"].iloc[0], color="black", linestyle="--", linewidth=0.8)
                ax.set_title(rf"{group}, $\varepsilon$ = {eps:g} nats" + "\n(dashed: total variance)", fontsize="medium")
            if log_axis:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, max(values.max(), part["total_var"].iloc[0] if row == 0 else 0) * 1.12)
            ax.set_ylabel(label + (" (log axis)" if log_axis else " (linear axis)"))
    fig.tight_layout()
    return fig


def plot_stratifier_cells(cells: pd.DataFrame) -> Figure:
    """Plot median ρ per quantile bin of each stratifier, one panel per selection (`stratifier_cells`)."""
    selections = list(dict.fromkeys(zip(cells["cls"], cells["eps"])))
    fig, axes = plt.subplots(1, len(selections), figsize=(4.5 * len(selections), 3.8), squeeze=False)
    for ax, (group, eps) in zip(axes[0], selections):
        part = cells[(cells["cls"] == group) & (cells["eps"] == eps)]
        for stratifier, series in part.groupby("stratifier", sort=False):
            ax.errorbar(series["bin"] + 1, series["median_rho"], yerr=None, marker="o", label=stratifier)
        _exact_line(ax)
        _rho_scale(ax, part["median_rho"])
        ax.set_xticks(range(1, int(part["bin"].max()) + 2))
        ax.set_xlabel("quantile bin of the stratifier (1 = lowest)")
        ax.set_ylabel(r"median $\rho$ in the bin")
        ax.set_title(rf"{group}, $\varepsilon$ = {eps:g} nats", fontsize="medium")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize="small")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_stable_regions(rows: Sequence[tuple[str, Sequence[PlaneSlice]]], show_topk: bool = True, max_aspect: float = 3.0) -> Figure:
    """Draw true-KL contours at each ε with the predicted Fisher ellipses over them, one row per position.

    `rows`: (row title, slices from `stable_regions.stable_region_slices`). Solid contours: the exact
    `KL(p ‖ q) = ε`; dashed: `½ xᵀF₂x = ε` with the full F; dotted (with `show_topk`): the same with
    the study's F_k. Axes in residual-stream units along each plane's two directions. A panel whose
    two extents differ by at most `max_aspect`× is drawn at equal aspect (circles look round); one
    that does not says in its y label how many times longer its y axis spans than its x axis.
    """
    n_rows, n_cols = len(rows), max(len(slices) for _, slices in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.4 * n_cols, 4.8 * n_rows + 0.6), squeeze=False)
    levels: list[float] = []
    has_topk = False
    for r, (row_title, slices) in enumerate(rows):
        for c, plane in enumerate(slices):
            ax = axes[r][c]
            levels = list(plane.eps_levels)
            colors = [f"C{i}" for i in range(len(levels))]
            ax.contour(plane.x, plane.y, plane.kl, levels=levels, colors=colors, linewidths=1.6)
            for color, eps in zip(colors, levels):
                ellipse = plane.ellipses[eps]
                ax.plot(ellipse[:, 0], ellipse[:, 1], color=color, linestyle="--", linewidth=1.2)
                if show_topk and eps in plane.ellipses_topk:
                    topk = plane.ellipses_topk[eps]
                    ax.plot(topk[:, 0], topk[:, 1], color=color, linestyle=":", linewidth=1.2)
                    has_topk = True
            ax.plot([0], [0], marker="+", color="black")
            ax.set_xlim(plane.x[0], plane.x[-1])
            ax.set_ylim(plane.y[0], plane.y[-1])
            ratio = (plane.y[-1] - plane.y[0]) / (plane.x[-1] - plane.x[0])
            y_label = f"offset along {plane.y_label}"
            if max(ratio, 1 / ratio) <= max_aspect:
                ax.set_aspect("equal", adjustable="box")
            else:
                y_label += f"\n(y axis spans {ratio:.3g}× the x axis)"
            ax.set_xlabel(f"offset along {plane.x_label} (residual-stream units)")
            ax.set_ylabel(y_label)
            closed = "" if getattr(plane, "closed", True) else "\n(largest contour leaves the grid)"
            ax.set_title(f"{row_title}\n{plane.title}{closed}", fontsize="medium")
    handles = [Line2D([], [], color=f"C{i}", label=rf"$\varepsilon$ = {e:g} nats") for i, e in enumerate(levels)]
    handles += [
        Line2D([], [], color="0.3", label=r"true KL$(p\,\|\,q) = \varepsilon$"),
        Line2D([], [], color="0.3", linestyle="--", label=r"$\frac{1}{2}x^\top F x = \varepsilon$ (full $F$)"),
    ]
    if has_topk:
        handles.append(Line2D([], [], color="0.3", linestyle=":", label=r"same with $F_k$"))
    fig.tight_layout(rect=(0, 0.06 / n_rows, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize="small")
    return fig


def plot_power_law(table: pd.DataFrame, groups: Sequence[str] | None = None, title: str = "") -> Figure:
    """Plot the median local exponent p (95% CI) per ε band and direction class; one panel per layer if any.

    The dashed line is p = 2, the quadratic form's exponent; p > 2 is a plateau followed by a steep rise.
    """
    layers = list(dict.fromkeys(table["layer"])) if "layer" in table.columns else [None]
    groups = list(groups) if groups is not None else list(dict.fromkeys(table["cls"]))
    bands = list(dict.fromkeys(table["band"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(max(4.5, 2.6 * len(layers)), 3.9), sharey=True, squeeze=False)
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    width = 0.8 / max(1, len(groups))
    for ax, layer in zip(axes[0], layers):
        part = table if layer is None else table[table["layer"] == layer]
        for i, group in enumerate(groups):
            rows = part[part["cls"] == group].set_index("band").reindex(bands)
            x = np.arange(len(bands)) + (i - (len(groups) - 1) / 2) * width
            median = rows["median_p"].to_numpy(float)
            lo = np.clip(median - rows["ci_lo"].to_numpy(float), 0, None)
            hi = np.clip(rows["ci_hi"].to_numpy(float) - median, 0, None)
            shown = np.isfinite(median) & np.isfinite(hi)
            ax.errorbar(x[shown], median[shown], yerr=[lo[shown], hi[shown]], fmt="o", color=colors[group], capsize=2,
                        label=group if ax is axes[0][0] else None)  # fmt: skip
        first = part.drop_duplicates("band").set_index("band").reindex(bands)
        ax.set_xticks(range(len(bands)), [f"{b}\n{lo:g}–{hi:g}" for b, lo, hi in zip(bands, first["eps_lo"], first["eps_hi"])],
                      fontsize="small")  # fmt: skip
        ax.axhline(2.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel(r"$\varepsilon$ band (nats)")
        if layer is not None:
            ax.set_title(f"layer {layer}")
    axes[0][0].set_ylabel("median local exponent $p$ (95% CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, title="class", frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title or r"Local exponent $p = \Delta\log\varepsilon / \Delta\log t_\mathrm{emp}$ by direction class ($p = 2$: quadratic)")
    fig.tight_layout()
    return fig
