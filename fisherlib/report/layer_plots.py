"""Figures of notebooks 08 and 09: each takes a table of `fisherlib.steps.layer_study` or `fisherlib.steps.plateaus`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..layers.engine import HEAD

EPS_LABEL = r"threshold $\varepsilon$ (nats)"
RHO_LABEL = r"median $\rho = \frac{1}{2} t_\mathrm{emp}^2\, u^\top G_\ell u / \varepsilon$"


def _layer_colors(layers) -> dict:
    """Viridis from the first block boundary to the last; the head in black."""
    blocks = [x for x in layers if str(x) != HEAD]
    cmap = plt.get_cmap("viridis")
    colors = {x: cmap(i / max(1, len(blocks) - 1) * 0.9) for i, x in enumerate(blocks)}
    colors.update({x: "black" for x in layers if str(x) == HEAD})
    return colors


def _layer_name(layer) -> str:
    return "head" if str(layer) == HEAD else f"layer {layer}"


def plot_rho_by_layer(by_layer: pd.DataFrame) -> Figure:
    """Median ρ against ε, one panel per direction class, one line per layer (`rho_by_layer`).

    A median that is censored (more than half the lines have no crossing below the search cap, ρ = inf)
    is drawn as a triangle at the top of its panel.
    """
    classes = list(by_layer["cls"].cat.categories) if hasattr(by_layer["cls"], "cat") else list(dict.fromkeys(by_layer["cls"]))
    layers = list(dict.fromkeys(by_layer["layer"].astype(str)))
    colors = _layer_colors(layers)
    fig, axes = plt.subplots(1, len(classes), figsize=(3.3 * len(classes) + 1.2, 3.8), sharey=True, squeeze=False)
    for ax, cls in zip(axes[0], classes):
        part = by_layer[by_layer["cls"] == cls]
        for depth, layer in enumerate(layers):
            line = part[part["layer"].astype(str) == layer].sort_values("eps")
            ax.plot(line["eps"], line["median_rho"], marker="o", markersize=3, color=colors[layer], label=_layer_name(layer),
                    linestyle="--" if layer == HEAD else "-")  # fmt: skip
            censored = line[~np.isfinite(line["median_rho"].to_numpy(float))]
            if len(censored):
                ax.plot(censored["eps"], np.full(len(censored), 0.97 - 0.035 * depth), marker="^", linestyle="none", color=colors[layer],
                        transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
        ax.axhline(1, color="0.5", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(cls, fontsize="medium")
        ax.set_xlabel(EPS_LABEL)
    values = by_layer["median_rho"].to_numpy(float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        axes[0, 0].set_ylim(values.min() / 1.2, values.max() * 1.2)
    axes[0, 0].set_ylabel(RHO_LABEL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize="small", loc="center right")
    fig.suptitle(r"$\rho$ against $\varepsilon$ at every layer (▲: median censored, no crossing below the cap)", fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    return fig


def plot_table1_by_layer(table1: pd.DataFrame) -> Figure:
    """Median ρ on the top eigenvector of `G_ℓ` at small ε per layer, with its bootstrap CI (`table1_by_layer`)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = np.arange(len(table1))
    y = table1["median_rho"].to_numpy(float)
    err = np.vstack([y - table1["ci_lo"].to_numpy(float), table1["ci_hi"].to_numpy(float) - y])
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color="C0", label=r"$\rho$ with $u^\top G_\ell u$")
    ax.plot(x, table1["median_rho_topk"], marker="s", linestyle=":", color="C1", label=r"$\rho$ with the top-$k$ curvature")
    ax.axhline(1, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [_layer_name(layer) for layer in table1["layer"].astype(str)], rotation=30)
    ax.set_ylabel(r"median $\rho$, top eigenvector")
    ax.set_title(rf"Table 1 at every layer ($\varepsilon$ = {table1['eps'].iloc[0]:g}, 95% CI over positions)", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def plot_spearman_by_layer(spearman: pd.DataFrame, eps_values) -> Figure:
    """Median (band: quartiles) over positions of Spearman(t_pred, t_emp), per layer, one line per ε."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, eps in enumerate(eps_values):
        part = spearman[np.isclose(spearman["eps"], eps)]
        x = np.arange(len(part))
        ax.plot(x, part["median"], marker="o", color=f"C{i}", label=rf"$\varepsilon$ = {eps:g}")
        ax.fill_between(x, part["q25"], part["q75"], color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set_xticks(x, [_layer_name(layer) for layer in part["layer"].astype(str)], rotation=30)
    shown = spearman[np.isclose(spearman["eps"].to_numpy()[:, None], np.asarray(eps_values, dtype=float)[None, :]).any(1)]
    ax.set_ylim(min(0.0, float(shown["q25"].min()) - 0.05), 1.02)
    ax.set_ylabel(r"Spearman$(t_\mathrm{pred}, t_\mathrm{emp})$ per position")
    ax.set_title("Rank agreement across each position's directions (band: quartiles)", fontsize="medium")
    ax.legend(frameon=False, fontsize="small", loc="lower right")
    fig.tight_layout()
    return fig


def plot_exactness_frontier(frontier: pd.DataFrame, eps_grid) -> Figure:
    """Heat map: the largest ε up to which the quadratic is exact, per layer (columns) and class (rows)."""
    classes = list(dict.fromkeys(frontier["cls"].astype(str)))
    layers = list(dict.fromkeys(frontier["layer"].astype(str)))
    grid = sorted(eps_grid)
    index = {eps: i + 1 for i, eps in enumerate(grid)}  # 0: not even the smallest ε
    values = np.zeros((len(classes), len(layers)))
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(layers), 0.9 + 0.55 * len(classes)))
    for row in frontier.itertuples():
        i, j = classes.index(str(row.cls)), layers.index(str(row.layer))
        values[i, j] = index.get(row.eps_exact, 0)
        ax.text(j, i, f"{row.eps_exact:g}" if row.eps_exact > 0 else "<" + f"{grid[0]:g}", ha="center", va="center", fontsize="small",
                color="white" if values[i, j] < len(grid) / 2 else "black")  # fmt: skip
    ax.imshow(values, cmap="viridis", vmin=0, vmax=len(grid), aspect="auto")
    ax.set_xticks(range(len(layers)), [_layer_name(x) for x in layers], rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    tolerance = float(frontier["tolerance"].iloc[0])
    ax.set_title(rf"largest $\varepsilon$ with |median $\rho$ − 1| ≤ {tolerance:.0%} (and at every smaller $\varepsilon$)", fontsize="medium")
    ax.grid(False)
    fig.tight_layout()
    return fig


# --- notebook 09 ------------------------------------------------------------------------------------


def plot_reometry(points: pd.DataFrame, pairs_shown: int = 40) -> Figure:
    """Reometry-style curves along α: top, the final residual's distance from its start (Janiak et al.'s
    measurement), normalised at α = 1; bottom, the output's measured Fisher–Rao path length (thin, one colour
    per pair) with the accumulated Fisher length ℓ_F(α) predicted at layer ℓ drawn over it (dashed black),
    both normalised by the measured length at α = 1."""
    paths = list(dict.fromkeys(points["path"]))
    fig, axes = plt.subplots(2, len(paths), figsize=(5.2 * len(paths), 7.0), sharex=True, squeeze=False)
    shown = sorted(points["pair"].unique())[:pairs_shown]
    for j, path in enumerate(paths):
        for k, pair in enumerate(shown):
            one = points[(points["pair"] == pair) & (points["path"] == path)].sort_values("alpha")
            end = one["final_distance"].iloc[-1]
            if end > 0:
                axes[0, j].plot(one["alpha"], one["final_distance"] / end, color="C0" if path == "straight" else "C3", alpha=0.3, linewidth=0.8)
            if k < 12 and one["measured_length"].iloc[-1] > 0:
                scale = one["measured_length"].iloc[-1]
                axes[1, j].plot(one["alpha"], one["measured_length"] / scale, color=f"C{k % 10}", linewidth=2.2, alpha=0.55)
                axes[1, j].plot(one["alpha"], one["fisher_length"] / scale, color="black", linestyle="--", linewidth=0.9)
        axes[0, j].set_title(f"{path} path: final residual ({len(shown)} pairs)", fontsize="medium")
        axes[1, j].set_title(f"{path} path: output length (colour),\nFisher length at layer ℓ (dashed)", fontsize="medium")
        axes[1, j].set_xlabel(r"interpolation $\alpha$")
    axes[0, 0].set_ylabel("$\\Vert r_N(\\alpha) - r_N(0)\\Vert$\n/ value at $\\alpha = 1$")
    axes[1, 0].set_ylabel("path length\n/ measured length at α = 1")
    fig.tight_layout()
    return fig


def plot_jump_examples(points: pd.DataFrame, steps: pd.DataFrame, pairs) -> Figure:
    """Per example pair (columns) and path (rows): the measured output change per unit α (grey), the Fisher
    speed predicted at layer ℓ (black), the final residual's speed rescaled to the same total (dotted), jump
    steps in red."""
    paths = list(dict.fromkeys(steps["path"]))
    fig, axes = plt.subplots(len(paths), len(pairs), figsize=(3.8 * len(pairs), 2.9 * len(paths)), squeeze=False, sharex=True)
    for i, path in enumerate(paths):
        for j, pair in enumerate(pairs):
            ax = axes[i, j]
            one = steps[(steps["pair"] == pair) & (steps["path"] == path)].sort_values("step")
            along = points[(points["pair"] == pair) & (points["path"] == path)].sort_values("alpha")
            width = float(np.diff(along["alpha"]).mean())
            rate = one["measured"] / width
            ax.bar(one["alpha_mid"], rate, width=width, color=np.where(one["jump"], "C3", "0.7"), linewidth=0)
            ax.plot(along["alpha"], along["fisher_speed"], color="black", linewidth=1.2, label="Fisher speed (prediction)")
            total = one["final_residual"].sum()
            if total > 0:
                ax.plot(one["alpha_mid"], one["final_residual"] / total * one["measured"].sum() / width, color="C0", linestyle=":",
                        label="final-residual speed (rescaled)")  # fmt: skip
            ax.set_title(f"pair {pair}, {path}", fontsize="small")
            if i == len(paths) - 1:
                ax.set_xlabel(r"$\alpha$")
    axes[0, 0].set_ylabel("output change per unit α\n(Fisher–Rao, rad)")
    if len(paths) > 1:
        axes[1, 0].set_ylabel("output change per unit α\n(Fisher–Rao, rad)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, fontsize="small", loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_hit_rates(hits: pd.DataFrame) -> Figure:
    """Share of jumps at a predictor's peaks (bars: 95% CI over pairs), per path kind."""
    from ..steps.plateaus import PREDICTOR_LABELS, PREDICTORS

    paths = list(dict.fromkeys(hits["path"]))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(paths)
    x = np.arange(len(PREDICTORS))
    for k, path in enumerate(paths):
        part = hits[hits["path"] == path].set_index("predictor").reindex(list(PREDICTORS))
        y = part["hit_rate"].to_numpy(float)
        err = np.vstack([y - part["ci_lo"].to_numpy(float), part["ci_hi"].to_numpy(float) - y])
        n = int(part["n_jumps"].iloc[0])
        ax.bar(x + (k - (len(paths) - 1) / 2) * width, y, width=width, yerr=err, capsize=3, color=f"C{0 if path == 'straight' else 3}",
               alpha=0.8, label=f"{path} ({n} jumps)")  # fmt: skip
    short = {"fisher": "Fisher speed\n(layer ℓ)", "final_residual": "final-residual\nspeed", "path_speed": "path speed\n(layer ℓ)",
             "shuffled": "Fisher speed,\nshuffled"}  # fmt: skip
    ax.set_xticks(x, [short.get(p, PREDICTOR_LABELS[p]) for p in PREDICTORS], fontsize="small")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of jumps at a predicted peak")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def plot_effective_dimension(table: pd.DataFrame, share_range: tuple[float, float] = (0.02, 0.17)) -> Figure:
    """Plot the effective rank of G_ℓ as a share of d per layer (median, quartiles), FishBack's range shaded."""
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(table) + 2), 3.8))
    median = table["eff_rank_share"].to_numpy(float)
    ax.errorbar(x, median, yerr=[median - table["eff_rank_share_q25"].to_numpy(float), table["eff_rank_share_q75"].to_numpy(float) - median],
                fmt="o-", capsize=3, label=r"$\exp H(\lambda/\sum\lambda)$ / d (median, quartiles)")  # fmt: skip
    ax.plot(x, table["participation_share"].to_numpy(float), "s--", label=r"participation ratio / d (median)")
    ax.axhspan(*share_range, color="0.85", label=f"FishBack (GPT-2): {share_range[0]:.0%}–{share_range[1]:.0%}")
    ax.set_xticks(x, [str(v) for v in table["layer"]])
    ax.set_xlabel("layer (block boundary)")
    ax.set_ylabel(r"effective dimension of $G_\ell$ / d")
    ax.set_ylim(0, max(0.3, float(np.nanmax(median)) * 1.15))
    ax.legend(frameon=False, fontsize="small")
    ax.set_title(r"Effective dimension of the pulled-back metric $G_\ell = J_\ell^\top F J_\ell$")
    fig.tight_layout()
    return fig


def plot_jacobian_lens(table: pd.DataFrame) -> Figure:
    """Plot per layer the share of t_pred within 50% / 10% of t_emp with G_ℓ and with the averaged lens Ḡ_ℓ."""
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(table) + 2), 3.8))
    for column, label, style in (("within_50_G", "within 50%, per-position $G_\\ell$", "o-"), ("within_50_lens", "within 50%, lens $\\bar G_\\ell$", "o--"),
                                 ("within_10_G", "within 10%, $G_\\ell$", "s-"), ("within_10_lens", "within 10%, lens", "s--")):  # fmt: skip
        ax.plot(x, table[column].to_numpy(float), style, label=label)
    ax.set_xticks(x, [str(v) for v in table["layer"]])
    ax.set_xlabel("layer (block boundary)")
    ax.set_ylabel(r"share of random directions (all $\varepsilon$)")
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, fontsize="small")
    ax.set_title(r"Averaged Jacobian lens $\bar J_\ell$ against the per-position pullback")
    fig.tight_layout()
    return fig
