"""Figures of notebooks 01–03: the sampled positions, the Fisher spectra, the divergence along the sweep's directions.

Each takes the tables (or the sample and head) the notebook already has and returns a matplotlib figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.boundary import empirical_boundary
from ..steps.geometry import kl_profiles
from ..steps.sweep import direction_sweep


def plot_sample(positions: pd.DataFrame):
    """Return a figure: entropy histograms per effective-rank quintile, and entropy against effective rank."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sns.histplot(data=positions, x="entropy", hue="stratum", multiple="layer", element="step", bins=30, ax=left, palette="viridis")
    left.set(xlabel="predictive entropy H(p) [nats]", ylabel="positions", title="Entropy per effective-rank quintile")
    sns.scatterplot(data=positions, x="eff_rank", y="entropy", hue="domain", s=14, alpha=0.7, ax=right)
    right.set(xscale="log")
    right.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    right.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    right.set(xlabel="effective Fisher rank exp H(λ/Σλ)", ylabel="predictive entropy H(p) [nats]", title="Entropy against effective rank")
    fig.tight_layout()
    return fig


def plot_spectra(spectra: pd.DataFrame):
    """Return a figure: eigenvalue share against rank, median per effective-rank quintile."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=spectra, x="rank", y="share", hue="stratum", estimator="median", errorbar=("pi", 50), marker="o", palette="viridis", ax=ax)
    ax.set(
        yscale="log", xlabel="eigenvalue rank of F_k", ylabel="share of tr F_k (median, IQR band)", title="Spectra of the truncated Fisher pullback"
    )
    ax.legend(title="eff.-rank\nquintile", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_rank_one(positions: pd.DataFrame):
    """Return a figure: |cos(top eigenvector, w_b − w_a)| against the top-two mass p_a + p_b."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = positions.assign(pair_mass=positions["p_top1"] + positions["p_top2"])
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.scatterplot(data=data, x="pair_mass", y="cos_top_eig_pair", hue="domain", s=14, alpha=0.7, ax=ax)
    ax.set(xlabel="top-two mass p_a + p_b", ylabel="|cos(top eigvec of F_k, w_b − w_a)|", title="The rank-1 regime", ylim=(0, 1.02))
    ax.legend(title="domain", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_kl_profiles(head, sample, params, classes=("eigvec", "structured", "random", "control"), quantiles=(0.1, 0.9)):
    """Return a figure: exact divergence and its quadratic approximation along one direction per class.

    Two positions: those whose entropy sits nearest the `quantiles` of the sample (a peaked and a flat
    distribution; the extremes are often near-deterministic, where every curve is a wall). Each panel's
    x range reaches 1.1 times the farthest point where an exact curve of the non-control classes
    crosses the top of the plot (3 ε); the control direction, whose boundary can lie far beyond, says
    in the legend where it crosses ε.
    """
    import matplotlib.pyplot as plt

    table = sample.table
    entropy = table["entropy"].to_numpy(float)
    chosen = list(dict.fromkeys(int(np.argmin(np.abs(entropy - np.quantile(entropy, q)))) for q in quantiles))
    y_top = 3 * params.large_eps
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.6 * len(chosen), 5.0), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], chosen):
        h = sample.h[row].to(head.weight.device).double()
        z = h @ head.weight.double().T + (0 if head.bias is None else head.bias.double())
        p = torch.softmax(z, -1)[None]
        U, meta = direction_sweep(
            head.weight.double(), h[None], p, n_random=1, n_control=1 if params.top_k < h.shape[0] else 0,
            seed=params.seed, top_k=params.top_k, position_ids=[int(table["position"].iloc[row])],
        )  # fmt: skip
        picks = [int(meta.index[(meta["cls"] == c) & (meta["sign"] == 1)][0]) for c in classes if (meta["cls"] == c).any()]
        names = [str(meta["cls"][d]) for d in picks]
        A = (U[0, picks] @ head.weight.double().T)[None]
        reach = empirical_boundary(z[None], A, [params.large_eps, y_top])[0].cpu().numpy()  # [D, 2]
        predicted = np.array([name != "control" for name in names])
        far = reach[predicted, 1] if predicted.any() else reach[:, 1]
        t_max = 1.1 * float(np.max(far[np.isfinite(far)])) if np.isfinite(far).any() else 1.0
        profiles = kl_profiles(head.weight, head.bias, sample.h[row], U[0, picks], np.linspace(0, t_max, 300))
        for j, name in enumerate(names):
            line = profiles[profiles["direction"] == j]
            label = name
            if name == "control":
                label += f" (reaches ε at t = {reach[j, 0]:.3g})"
            ax.plot(line["t"], line["kl"], color=f"C{j}", label=label)
            ax.plot(line["t"], line["quadratic"], color=f"C{j}", linestyle="--")
        ax.axhline(params.large_eps, color="grey", linewidth=1)
        ax.set(
            ylim=(0, y_top), xlim=(0, t_max), xlabel="distance t along u [residual-stream units]",
            title=f"position {int(table['position'].iloc[row])}, H(p) = {entropy[row]:.2f} nats",
        )  # fmt: skip
        ax.legend(title="solid: exact; dashed: ½t²uᵀFu", fontsize="small", title_fontsize="small", ncol=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # fmt: skip
    axes[0][0].set_ylabel("KL(p ‖ q_t) [nats]")
    fig.tight_layout()
    return fig
