"""Notebook 10's figures and computed findings: the dynamics tables drawn and read against training step."""

from __future__ import annotations

import numpy as np
import pandas as pd

EXACT_BAND = (0.97, 1.10)  # the embedded-default target for Table 1, used to say from when ρ is near 1


def _x(table: pd.DataFrame) -> np.ndarray:
    """Training step, or the revision's ordinal where revisions have no step number."""
    steps = table["step"].to_numpy()
    return steps if (steps > 0).all() else np.arange(1, len(steps) + 1)


def _step_axis(ax, table: pd.DataFrame) -> None:
    if (table["step"].to_numpy() > 0).all():
        ax.set_xscale("log")
        ax.set_xlabel("training step (log scale)")
    else:
        ax.set_xticks(np.arange(1, len(table) + 1), table["revision"], rotation=45, ha="right")
        ax.set_xlabel("revision")


def _plain_log_y(ax) -> None:
    """Log y axis labelled 1, 2, 5, 10, 20, … (plain numbers, no crowded minor labels)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _band(ax, table: pd.DataFrame, statistic: str, label: str, color) -> None:
    part = table[table["statistic"] == statistic]
    x = _x(part)
    ax.plot(x, part["q50"], marker="o", color=color, label=f"{label} median")
    ax.fill_between(x, part["q25"], part["q75"], color=color, alpha=0.25, label="25-75th percentile")
    ax.fill_between(x, part["q10"], part["q90"], color=color, alpha=0.1, label="10-90th percentile")


def plot_dynamics(tables: dict[str, pd.DataFrame]):
    """Return the overview figure: six panels against training step (log axis)."""
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    checkpoints = tables["dynamics_checkpoints"]
    ax = axes[0, 0]
    if "heldout_loss" in checkpoints:
        ax.plot(_x(checkpoints), checkpoints["heldout_loss"], marker="o", color=colors[0])
        ax.set_ylabel("held-out loss (nats / token)")
        ax.set_title("(a) held-out loss")
    else:
        ax.text(0.5, 0.5, "no held-out loss recorded\nfor these revisions", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("(a) held-out loss")
    _step_axis(ax, checkpoints)

    distributions = tables["dynamics_distributions"]
    for ax, statistic, label, color, title in (
        (axes[0, 1], "entropy", "entropy (nats)", colors[1], "(b) entropy of p"),
        (axes[0, 2], "eff_rank", "effective Fisher rank", colors[2], "(c) effective rank of F_k"),
    ):
        _band(ax, distributions, statistic, label.split(" (")[0], color)
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="best")
        _step_axis(ax, distributions[distributions["statistic"] == statistic])
    _plain_log_y(axes[0, 2])

    rank_one = tables["dynamics_rank_one"]
    ax = axes[1, 0]
    ax.plot(_x(rank_one), rank_one["share_near_binary"], marker="o", color=colors[3], label="share near-binary")
    # The cosine is drawn only where some position is near-binary (elsewhere it is undefined).
    populated = rank_one[rank_one["n_near_binary"] > 0]
    ax.plot(_x(rank_one)[rank_one["n_near_binary"].to_numpy() > 0], populated["median_cos_near_binary"], marker="s",
            color=colors[4], label="median |cos(top eigvec, $w_b - w_a$)|\namong near-binary")  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_title("(d) the rank-1 regime")
    ax.legend(fontsize=8, loc="best")
    _step_axis(ax, rank_one)

    table1 = tables["dynamics_table1"]
    ax = axes[1, 1]
    for color, (curvature, part) in zip((colors[0], colors[5]), table1.groupby("curvature", sort=False)):
        x = _x(part)
        ax.plot(x, part["median_rho"], marker="o", color=color, label=f"with {curvature}")
        ax.fill_between(x, part["ci_lo"], part["ci_hi"], color=color, alpha=0.2)
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax.set_ylabel(r"median $\rho$ (95% CI)")
    ax.set_title(rf"(e) Table 1: top eigenvector, $\varepsilon$ = {table1['eps'].iloc[0]:g}")
    ax.legend(fontsize=8, loc="best")
    _step_axis(ax, table1)

    predictors = tables["dynamics_predictors"]
    ax = axes[1, 2]
    for color, (name, part) in zip(colors[6:] + colors, predictors.groupby("predictor", sort=False)):
        ax.plot(_x(part), 100 * part["within_50"], marker="o", color=color, label=name)
    ax.set_ylim(0, 102)
    ax.set_ylabel(r"% of boundaries within 50% of $t_{emp}$")
    ax.set_title(rf"(f) predictors at $\varepsilon$ = {predictors['eps'].iloc[0]:g}")
    ax.legend(fontsize=8, loc="best")
    _step_axis(ax, predictors)
    return fig


def plot_dynamics_classes(tables: dict[str, pd.DataFrame]):
    """Return Table 2 per class (with F_k and with F) and the stratifier ratios against training step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    table2 = tables["dynamics_table2"]
    table2 = table2[table2["cls"] != "control"]  # ρ ≈ 0 by construction
    for ax, column, title in ((axes[0], "median_rho", "with $F_k$"), (axes[1], "median_rho_full", "with $F$")):
        for cls, part in table2.groupby("cls", sort=False):
            ax.plot(_x(part), part[column], marker="o", label=cls)
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.set_ylabel(r"median $\rho$")
        ax.set_title(rf"Table 2 {title}, $\varepsilon$ = {table2['eps'].iloc[0]:g}")
        _step_axis(ax, part)
    axes[0].legend(fontsize=8, loc="best")
    stratifiers = tables["dynamics_stratifiers"]
    ax = axes[2]
    for name, part in stratifiers.groupby("stratifier", sort=False):
        ax.plot(_x(part), part["ratio_to_best"], marker="o", label=name)
    _plain_log_y(ax)
    ax.set_ylabel("within-cell variance of log ρ / best")
    ax.set_title(rf"stratifiers (top eigenvector, $\varepsilon$ = {stratifiers['eps'].iloc[0]:g})")
    ax.legend(fontsize=8, loc="best")
    _step_axis(ax, part)
    return fig


def _first_last(table: pd.DataFrame, column: str, **where) -> tuple[float, float]:
    for key, value in where.items():
        table = table[table[key] == value]
    return float(table[column].iloc[0]), float(table[column].iloc[-1])


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def dynamics_findings(tables: dict[str, pd.DataFrame]) -> str:
    """Return the notebook's findings as Markdown, every number read from `tables`."""
    checkpoints = tables["dynamics_checkpoints"]
    first, last = checkpoints["revision"].iloc[0], checkpoints["revision"].iloc[-1]
    lines = [
        f"**Across {len(checkpoints)} revisions, from `{first}` to `{last}`** (the same {checkpoints['n_positions'].iloc[-1]} positions at each):",
        "",
    ]
    if "heldout_loss" in checkpoints:
        a, b = _first_last(checkpoints, "heldout_loss")
        lines.append(f"- held-out loss went from {a:.2f} to {b:.2f} nats per token;")
    distributions = tables["dynamics_distributions"]
    a, b = _first_last(distributions, "q50", statistic="entropy")
    c, d = _first_last(distributions, "q50", statistic="eff_rank")
    lines.append(f"- the median entropy of p went from {a:.2f} to {b:.2f} nats, the median effective Fisher rank from {c:.1f} to {d:.1f};")
    rank_one = tables["dynamics_rank_one"]
    a, b = _first_last(rank_one, "share_near_binary")
    n_last = int(rank_one["n_near_binary"].iloc[-1])
    cos_last = float(rank_one["median_cos_near_binary"].iloc[-1])
    alignment = f"their median |cos(top eigenvector, w_b − w_a)| is {cos_last:.3f}" if n_last else "none is near-binary"
    lines.append(f"- near-binary positions went from {_percent(a)} to {_percent(b)} of the sample ({n_last} at `{last}`; {alignment});")
    table1 = tables["dynamics_table1"]
    eps = table1["eps"].iloc[0]
    a, b = _first_last(table1, "median_rho", curvature="F_k")
    c, d = _first_last(table1, "median_rho", curvature="F")
    topk = table1[table1["curvature"] == "F_k"]
    inside = (topk["median_rho"] >= EXACT_BAND[0]) & (topk["median_rho"] <= EXACT_BAND[1])
    settled = [rev for i, rev in enumerate(topk["revision"]) if inside.iloc[i:].all()]
    since = (
        f"inside [{EXACT_BAND[0]}, {EXACT_BAND[1]}] from `{settled[0]}` on"
        if settled
        else f"not inside [{EXACT_BAND[0]}, {EXACT_BAND[1]}] at the last revision"
    )
    lines.append(
        f"- Table 1 (top eigenvector, ε = {eps:g}): median ρ with F_k went from {a:.3f} to {b:.3f} ({since}); with the full F from {c:.3f} to {d:.3f};"
    )
    predictors = tables["dynamics_predictors"]
    eps_large = predictors["eps"].iloc[0]
    a, b = _first_last(predictors, "within_50", predictor="closed form (F_k)")
    c, d = _first_last(predictors, "within_50", predictor="quartic")
    pivot = predictors.pivot(index="revision", columns="predictor", values="within_50")
    quartic_wins = int((pivot["quartic"] > pivot["closed form (F_k)"]).sum())
    lines.append(
        f"- at ε = {eps_large:g}, the closed form lands within 50% of the exact boundary for {_percent(a)} → {_percent(b)} of "
        f"directions, the quartic (with fallback) for {_percent(c)} → {_percent(d)}; the quartic is ahead at {quartic_wins} of {len(pivot)} revisions;"
    )
    stratifiers = tables["dynamics_stratifiers"]
    best = stratifiers.loc[stratifiers.groupby("revision", sort=False)["ratio_to_best"].idxmin()]
    best_first, best_last = best["stratifier"].iloc[0], best["stratifier"].iloc[-1]
    last_rows = stratifiers[stratifiers["revision"] == last].set_index("stratifier")
    spread = ", ".join(f"{name} {ratio:.2f}×" for name, ratio in last_rows["ratio_to_best"].items())
    lines.append(
        f"- the best stratifier of log ρ (top eigenvector, ε = {stratifiers['eps'].iloc[0]:g}) is {best_first} at `{first}` "
        f"and {best_last} at `{last}` (ratios to the best at `{last}`: {spread})."
    )
    return "\n".join(lines)


DYNAMICS_TABLES = ("checkpoints", "distributions", "rank_one", "table1", "table2", "predictors", "stratifiers")


def read_dynamics_tables(run_dir) -> dict[str, pd.DataFrame] | None:
    """Return a run's saved `dynamics_*` tables (notebook 10), or None when the run has none."""
    from pathlib import Path

    from ..io.tables import read_table_file

    paths = {f"dynamics_{name}": Path(run_dir) / f"dynamics_{name}.csv" for name in DYNAMICS_TABLES}
    if not all(path.is_file() for path in paths.values()):
        return None
    return {name: read_table_file(path) for name, path in paths.items()}


def dynamics_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Return one row per revision: held-out loss, median entropy and effective rank, near-binary share, Table 1, within-50%."""
    summary = tables["dynamics_checkpoints"][["revision", "step"] + [c for c in ("heldout_loss",) if c in tables["dynamics_checkpoints"]]]
    distributions = tables["dynamics_distributions"].pivot(index="revision", columns="statistic", values="q50")
    summary = summary.assign(
        median_entropy=summary["revision"].map(distributions["entropy"]),
        median_eff_rank=summary["revision"].map(distributions["eff_rank"]),
        share_near_binary=summary["revision"].map(tables["dynamics_rank_one"].set_index("revision")["share_near_binary"]),
    )
    table1 = tables["dynamics_table1"].pivot(index="revision", columns="curvature", values="median_rho")
    within = tables["dynamics_predictors"].pivot(index="revision", columns="predictor", values="within_50")
    return summary.assign(
        table1_rho_topk=summary["revision"].map(table1["F_k"]),
        table1_rho_full=summary["revision"].map(table1["F"]),
        within50_closed_form=summary["revision"].map(within["closed form (F_k)"]),
        within50_quartic=summary["revision"].map(within["quartic"]),
    )
