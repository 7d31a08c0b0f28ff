"""Notebook 08's findings: the sentences that read the layer study's tables (`fisherlib.steps.layer_study`).

Each function reads one table of this run and returns Markdown; `layer_findings` joins them as the bullets
the notebook and the README show.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..layers.engine import HEAD


def _layers_text(labels) -> str:
    labels = [str(x) for x in labels]
    named = [f"layer {x}" if x != HEAD else "the head" for x in labels]
    return ", ".join(named) if named else "none"


def table1_findings(table1: pd.DataFrame) -> str:
    """Return the sentence that reads `table1_by_layer`: range over layers, where the CI holds 1, the head."""
    t1 = table1.set_index("layer")
    eps = float(table1["eps"].iloc[0])
    low, high = t1["median_rho"].idxmin(), t1["median_rho"].idxmax()
    covers = [layer for layer, row in t1.iterrows() if row["ci_lo"] <= 1 <= row["ci_hi"]]
    head = f" At the head (the study's own setting) it is {t1.loc[HEAD, 'median_rho']:.4f}." if HEAD in t1.index else ""
    return (
        f"**Table 1 at every layer.** Along the top eigenvector of $G_\\ell$ at ε = {eps:g}, the median ρ runs "
        f"from {t1.loc[low, 'median_rho']:.4f} ({_layers_text([low])}) to {t1.loc[high, 'median_rho']:.4f} "
        f"({_layers_text([high])}); its 95% CI contains 1 at {len(covers)} of {len(t1)} layers ({_layers_text(covers)}).{head} "
        f"With the top-k curvature the same medians run from {t1['median_rho_topk'].min():.4f} to {t1['median_rho_topk'].max():.4f}."
    )


def class_findings(by_layer: pd.DataFrame, eps: float) -> str:
    """Return the sentence that reads `rho_by_layer` at `eps`: which class is closest to 1 at how many layers."""
    at = by_layer[np.isclose(by_layer["eps"], eps)]
    deviation = np.abs(np.log(at["median_rho"].to_numpy(float).clip(1e-300)))
    closest = at.assign(dev=deviation).sort_values("dev", kind="stable").groupby("layer", observed=True).head(1)
    counts = closest["cls"].astype(str).value_counts()
    others = f" ({', '.join(f'{c}: {n}' for c, n in counts.iloc[1:].items())} elsewhere)" if len(counts) > 1 else ""
    ranges = "; ".join(f"{cls} {part['median_rho'].min():.3g}–{part['median_rho'].max():.3g}" for cls, part in at.groupby("cls", observed=True))
    return (
        f"**Classes at ε = {eps:g}.** The class whose median ρ is closest to 1 is {counts.index[0]} at {counts.iloc[0]} of "
        f"{len(closest)} layers{others}. Medians over layers: {ranges} (inf: more than half censored)."
    )


def frontier_findings(frontier: pd.DataFrame) -> str:
    """Return the sentence that reads `exactness_frontier`: per class, the layers where the quadratic holds least and most."""
    parts = []
    for cls, part in frontier.groupby("cls", observed=True):
        low, high = part["eps_exact"].min(), part["eps_exact"].max()
        worst = _layers_text(part.loc[part["eps_exact"] == low, "layer"])
        best = _layers_text(part.loc[part["eps_exact"] == high, "layer"])
        smallest = "not even at the smallest ε" if low == 0 else f"up to ε = {low:g}"
        parts.append(f"{cls}: {smallest} at {worst}" + ("" if low == high else f", up to ε = {high:g} at {best}"))
    tolerance = float(frontier["tolerance"].iloc[0])
    return (
        f"**Where the quadratic stops being exact** (median ρ within {tolerance:.0%} of 1 at that ε and every smaller one): " + "; ".join(parts) + "."
    )


def spearman_findings(spearman: pd.DataFrame, eps_values) -> str:
    """Return the sentences that read `spearman_by_layer` at each of `eps_values`."""
    sentences = []
    for eps in eps_values:
        at = spearman[np.isclose(spearman["eps"], eps)].set_index("layer")
        if len(at):
            sentences.append(
                f"**Per-position Spearman of t_pred and t_emp at ε = {eps:g}.** Median over positions from "
                f"{at['median'].min():.2f} ({_layers_text([at['median'].idxmin()])}) to {at['median'].max():.2f} "
                f"({_layers_text([at['median'].idxmax()])})."
            )
    return " ".join(sentences)


def monotone_findings(nonmonotone: pd.DataFrame) -> str:
    """Return the sentence that reads `nonmonotone_by_layer`: the layers with the most and fewest falling lines."""
    weighted = nonmonotone.assign(falls=nonmonotone["share_nonmonotone"] * nonmonotone["n_lines"])
    totals = weighted.groupby("layer", observed=True)[["falls", "n_lines"]].sum()
    share = totals["falls"] / totals["n_lines"]
    return (
        f"**Monotonicity.** The divergence fell somewhere before reaching the largest ε on {share.max():.0%} of lines at "
        f"{_layers_text([share.idxmax()])} and on {share.min():.0%} at {_layers_text([share.idxmin()])}."
    )


def layer_findings(table1, by_layer, spearman, frontier, nonmonotone, small_eps: float, large_eps: float) -> str:
    """Return every finding of notebook 08 as Markdown bullets (each read from this run's tables)."""
    bullets = [
        table1_findings(table1), class_findings(by_layer, large_eps), frontier_findings(frontier),
        spearman_findings(spearman, [small_eps, large_eps]), monotone_findings(nonmonotone),
    ]  # fmt: skip
    return "\n".join(f"- {b}" for b in bullets)
