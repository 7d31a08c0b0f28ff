"""Notebook 11's figures and computed findings, from the tables of `fisherlib.steps.steering_study`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .findings import _pct, _ratio, bullets

KIND_COLORS = {"mean_difference": "C0", "contrastive": "C1", "eigvec": "C3", "random": "0.5"}
METHOD_MARKERS = {"closed": "o", "quartic": "D", "exact": "s", "bisection": "x"}


def plot_alpha_scatter(tokens: pd.DataFrame) -> Figure:
    """α_pred against α_emp per token (all positions steered, +v), one panel per ε, one colour per vector kind."""
    part = tokens[(tokens["mode"] == "all") & (tokens["sign"] == "+")]
    eps_values = sorted(part["eps"].unique())
    fig, axes = plt.subplots(1, len(eps_values), figsize=(3.6 * len(eps_values) + 1.6, 3.6), squeeze=False)
    for ax, eps in zip(axes[0], eps_values):
        at = part[(part["eps"] == eps) & np.isfinite(part["alpha_emp"]) & np.isfinite(part["alpha_pred"])]
        for kind, rows in at.groupby("kind", sort=False):
            ax.scatter(rows["alpha_emp"], rows["alpha_pred"], s=6, alpha=0.5, color=KIND_COLORS.get(kind, "C4"), label=kind, linewidths=0)
        if len(at):
            lo = float(min(at["alpha_emp"].min(), at["alpha_pred"].min())) * 0.8
            hi = float(max(at["alpha_emp"].max(), at["alpha_pred"].max())) * 1.25
            ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
            ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="black", alpha=0.08, linewidth=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(rf"$\varepsilon$ = {eps:g}", fontsize="medium")
        ax.set_xlabel(r"exact $\alpha_\mathrm{emp}$ (first crossing)")
    axes[0][0].set_ylabel(r"closed form $\alpha_\mathrm{pred} = \sqrt{2\varepsilon / \mathrm{Var}_p[a]}$")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, frameon=False)
    fig.tight_layout()
    return fig


def plot_population(population: pd.DataFrame) -> Figure:
    """The population budget per vector and sign, by method, in units of the mean residual norm (one panel per ε)."""
    eps_values = sorted(population["eps"].unique())
    fig, axes = plt.subplots(1, len(eps_values), figsize=(4.2 * len(eps_values) + 1.6, 3.6), squeeze=False, sharey=False)
    labels = list(dict.fromkeys(population["vector"] + " (" + population["sign"] + ")"))
    for ax, eps in zip(axes[0], eps_values):
        at = population[population["eps"] == eps]
        for offset, (method, marker) in zip(np.linspace(-0.24, 0.24, len(METHOD_MARKERS)), METHOD_MARKERS.items()):
            rows = at[at["method"] == method]
            x = [labels.index(f"{r.vector} ({r.sign})") + offset for r in rows.itertuples()]
            ax.scatter(x, rows["alpha_rel"], marker=marker, s=22, label=method, color="black" if method == "exact" else None)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize="small")
        ax.set_title(rf"$\varepsilon$ = {eps:g}, quantile {at['quantile'].iloc[0]:g}", fontsize="medium")
    axes[0][0].set_ylabel(r"budget $\alpha$ / mean $\Vert r_\ell \Vert$")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def plot_natural(natural: pd.DataFrame) -> Figure:
    """Off-target and total KL at equal target effect, one bar pair per direction."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    x = np.arange(len(natural))
    ax.bar(x - 0.18, natural["off_target_kl"], width=0.36, label="off-target KL", color="C0")
    ax.bar(x + 0.18, natural["total_kl"], width=0.36, label="total KL", color="C7")
    ax.set_xticks(x)
    ax.set_xticklabels(natural["direction"].str.replace("_", " "), fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("mean over tokens (nats)")
    gain = natural["target_gain"].iloc[0] if "target_gain" in natural else float("nan")
    ax.set_title(f"at equal target effect (+{gain:g} nats of log q(S))", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def token_findings(accuracy: pd.DataFrame, attention: pd.DataFrame) -> str:
    """Sentences on the per-token budget, every number from `token_accuracy` and `attention_share`."""
    lines = []
    steered = accuracy[(accuracy["mode"] == "all") & (accuracy["sign"] == "+")]
    for eps, part in steered.groupby("eps", sort=True):
        weights = part["n"].to_numpy(float)

        def pooled(column):
            return float(np.average(part[column], weights=weights))

        best = part.loc[part["within_50"].idxmax()]
        worst = part.loc[part["within_50"].idxmin()]
        lines.append(
            f"At ε = {eps:g}, steering every position, the closed form lands within 10% of the exact per-token budget "
            f"for {_pct(pooled('within_10'))} of tokens and within 50% for {_pct(pooled('within_50'))} (best: {best['kind']}, "
            f"{_pct(best['within_50'])}; worst: {worst['kind']}, {_pct(worst['within_50'])}); the quartic of the cumulants "
            f"for {_pct(pooled('within_10_quartic'))} and {_pct(pooled('within_50_quartic'))}. Median ρ = (α_emp/α_pred)² "
            f"per kind runs from {part['median_rho'].min():.3f} to {part['median_rho'].max():.3f}."
        )
    if len(attention):
        at = attention.groupby("kind", sort=False)["median_curv_ratio"].first()
        sooner = attention["share_sooner"]
        lines.append(
            f"Per vector kind, the median curvature of the all-positions push is {at.min():.2f}–{at.max():.2f}× that of the "
            f"token pushed alone (above 1: the earlier tokens' push adds to it through attention), and the all-positions exact "
            f"budget is the smaller one for {_pct(sooner.min())}–{_pct(sooner.max())} of tokens."
        )
    return bullets(lines)


def population_findings(summary: pd.DataFrame, quantile: float) -> str:
    """Sentences on the population budget, from `population_summary`."""
    lines = []
    for eps, part in summary.groupby("eps", sort=True):
        at = part.set_index("method")
        closed, quartic, bisection = at.loc["closed"], at.loc["quartic"], at.loc["bisection"]
        lines.append(
            f"At ε = {eps:g} and quantile {quantile:g}, the closed-form budget is within {100 * closed['median_abs_rel_error']:.1f}% "
            f"of the exact one at the median over vectors and signs (at most {100 * closed['max_abs_rel_error']:.1f}%), the quartic "
            f"within {100 * quartic['median_abs_rel_error']:.1f}% (at most {100 * quartic['max_abs_rel_error']:.1f}%); "
            f"the closed form costs {closed['median_passes']:.0f} text passes (the logits and a central difference: three plain passes per prompt), the exact "
            f"search {at.loc['exact', 'median_passes']:.0f} and the bisection baseline {bisection['median_passes']:.0f}."
        )
    return bullets(lines)


def generated_findings(summary: pd.DataFrame, n_generate: int, quantile: float) -> str:
    """Sentences on the generated-text budget, from `steering_study.generated_summary`."""
    if "note" in summary:
        return "The generated-text budget was not measured in this run (`steer_generate` = 0)."
    lines = []
    for (divergence, eps), part in summary.groupby(["divergence", "eps"], sort=True):
        name = "KL(steered ‖ base)" if divergence == "steered_base" else "KL(base ‖ steered)"
        tf, closed, corrected = (part[f"ratio_{m}"].to_numpy(float) for m in ("teacher_forced", "closed", "corrected"))
        jumps, vectors = int(part["at_jump"].sum()), int(part["n"].sum())
        lines.append(
            f"With {name} over {n_generate} greedy tokens per prompt, at ε = {eps:g} and quantile {quantile:g}: the teacher-forced "
            f"closed form on the prompts alone is {_span(tf)} the generated-text exact budget (per vector kind, the median over "
            f"its vectors), the closed form on the unsteered continuation {_span(closed)}, and that corrected by one generation "
            f"{_span(corrected)}; the exact search's final bracket straddled a flipped greedy choice for {jumps} of {vectors} vectors."
        )
    return bullets(lines)


def _span(ratios: np.ndarray) -> str:
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return "not finite for every kind, so not compared with"
    low, high = float(ratios.min()), float(ratios.max())
    return f"{low:.3f}×" if abs(high - low) < 5e-4 else f"{low:.3f}–{high:.3f}×"


def natural_findings(natural: pd.DataFrame) -> str:
    """Sentences on the equal-effect comparison, from `natural_table`."""
    if natural.empty or "off_target_ratio" not in natural:
        return "The equal-effect comparison needs two domains (a target set from one, contrasted with the other): not run."
    at = natural.set_index("direction")
    lines = []
    missed = [d for d, r in at.iterrows() if not r["reached"]]
    if missed:
        lines.append(f"{', '.join(missed)} did not reach the target gain before the search cap (measured at the cap).")
    for name in at.index:
        if name == "natural_gradient":
            continue
        ratio = at.loc[name, "off_target_ratio"]
        side = "more" if ratio > 1 else "less"
        lines.append(
            f"At +{at.loc[name, 'target_gain']:g} nats of log q(S), {name.replace('_', ' ')} spends {_ratio(ratio)} the natural "
            f"gradient's off-target KL ({at.loc[name, 'off_target_kl']:.2e} vs {at.loc['natural_gradient', 'off_target_kl']:.2e} "
            f"nats: {side}) and {_ratio(at.loc[name, 'total_kl_ratio'])} its total KL."
        )
    return bullets(lines)
