"""Notebook 09: Janiak et al.'s interpolation experiment on our models, with the Fisher speed along the path.

For a pair of positions (A, B), the residual of A's target token at layer ℓ is moved along a path γ(α),
α ∈ [0, 1], from `r_A` toward `r_B`, with A's context kept (the prefix's keys and values are reused):

- `straight`: γ(α) = r_A + α (r_B − r_A);
- `arc`: reometry's norm-preserving path: the straight path's point, centred on the mean residual μ of the
  sample at that layer, rescaled to the norm of `r_A − μ` (so γ stays at A's distance from μ; at α = 1 it is
  B's direction at A's norm).

At every grid point one forward pass (forward mode, tangent γ′(α)) gives the output distribution `q_α`, its
velocity `ż = J_ℓ γ′`, the final residual (before the final norm) and its velocity. From them:

- measured: `kl_start = KL(q_0 ‖ q_α)`, `fr_start = 2 arccos Σ √(q_0 q_α)` (the Fisher–Rao distance from the
  start), and per grid step the Fisher–Rao distance between neighbours `step_fr` (their sum is the path's
  length in distribution space); the final residual's distance from its start (reometry's plot);
- predicted: the Fisher speed `sqrt(γ′ᵀ G_ℓ(γ(α)) γ′) = sqrt(Var_{q_α}[ż])`, integrated per step (trapezoid)
  into the predicted step length `fisher`, and accumulated into the Fisher length ℓ_F(α); and, as rival
  predictors of where the output moves, the final residual's speed and the path's own Euclidean speed.

The Fisher–Rao distance is the geodesic distance of the metric `ds² = dθᵀ F dθ` that `G_ℓ` pulls back, so a
fine grid's `Σ step_fr` and ℓ_F(1) agree to second order in the step; the questions are where along the path
the length accrues (plateaus and jumps) and how the accumulated length relates to the divergence from the start.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from ..layers.engine import HEAD, check_layer, contexts_of, hook_module, jvp_logits, n_layers, network_of
from ..layers.passes import engine_path, position_batch

logger = logging.getLogger("fisherlib")

PATHS = ("straight", "arc")
PREDICTORS = ("fisher", "final_residual", "path_speed", "shuffled")
PREDICTOR_LABELS = {
    "fisher": "the Fisher speed at layer ℓ",
    "final_residual": "the final residual's Euclidean speed",
    "path_speed": "the path's Euclidean speed at layer ℓ",
    "shuffled": "the Fisher speed shuffled along the path",
}
_SHORT = {"fisher": "Fisher", "final_residual": "final residual", "path_speed": "path speed", "shuffled": "shuffled"}


def choose_pairs(table: pd.DataFrame, n_pairs: int, seed: int) -> pd.DataFrame:
    """Return `n_pairs` pairs of sample rows `(a, b)` from different documents (a seeded draw; each a once where possible)."""
    rng = np.random.default_rng(seed)
    docs = (table["domain"].astype(str) + "/" + table["doc_id"].astype(str)).to_numpy()
    starts = rng.permutation(len(table))
    starts = np.concatenate([starts] * math.ceil(n_pairs / max(1, len(table))))[:n_pairs]
    pairs = []
    for k, a in enumerate(starts):
        others = np.flatnonzero(docs != docs[a])
        if len(others) == 0:
            others = np.flatnonzero(np.arange(len(table)) != a)
        pairs.append(dict(pair=k, a=int(a), b=int(rng.choice(others))))
    return pd.DataFrame(pairs)


def path_points(r_a: torch.Tensor, r_b: torch.Tensor, mean: torch.Tensor, alphas: torch.Tensor, kind: str):
    """Return γ(α) and γ′(α), each `[n, d]` float64, for one pair and path `kind` (`straight` or `arc`)."""
    r_a, r_b, mean, alphas = r_a.double(), r_b.double(), mean.double(), alphas.double()
    step = r_b - r_a
    straight = r_a + alphas[:, None] * step
    if kind == "straight":
        return straight, step.expand_as(straight).clone()
    if kind != "arc":
        raise ValueError(f"path kind must be one of {PATHS}, not {kind!r}")
    radius = (r_a - mean).norm()
    c = straight - mean
    norm = c.norm(dim=-1, keepdim=True)
    gamma = mean + radius * c / norm
    # d/dα of R c/‖c‖ with c′ = r_B − r_A: R (c′ − c (c·c′)/‖c‖²) / ‖c‖.
    derivative = radius * (step - c * (c @ step)[:, None] / norm**2) / norm
    return gamma, derivative


def measure_paths(model, sample, pairs: pd.DataFrame, layer, mean: torch.Tensor, residuals: torch.Tensor, alphas: torch.Tensor, batch_size: int = 8):
    """Return `(points, steps)`: one row per (pair, path, α) and one per (pair, path, grid step).

    `residuals [N, d]` at `layer` for the sample's positions; `mean [d]` their mean (the arc's centre).
    """
    network = network_of(model)
    layer = check_layer(model, layer)
    if layer == HEAD:
        raise ValueError("interpolate at a block boundary (an int), not at the head")
    contexts = contexts_of(sample)
    hook = hook_module(network, layer)
    final = hook_module(network, n_layers(model))
    n = len(alphas)
    path = engine_path(model, max(len(contexts[a]) for a in pairs["a"])) if len(pairs) else None
    point_rows, step_rows = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs.iloc[start : start + batch_size]
        prefix = position_batch(model, [contexts[a] for a in chunk["a"]], path)
        delta, tangent = [], []
        for row in chunk.itertuples():
            parts = [path_points(residuals[row.a], residuals[row.b], mean, alphas, kind) for kind in PATHS]
            delta.append(torch.cat([g - residuals[row.a].double() for g, _ in parts]))
            tangent.append(torch.cat([d for _, d in parts]))
        delta, tangent = torch.stack(delta).to(prefix.device), torch.stack(tangent).to(prefix.device)
        rows = torch.arange(len(chunk), device=prefix.device)
        with torch.no_grad():
            z, zdot, [(r_final, r_final_dot)] = jvp_logits(prefix, hook, rows, delta, tangent, capture=[final])
        if final is hook:  # the final norm's input is captured before the perturbation is added
            r_final, r_final_dot = r_final + delta, tangent
        for i, row in enumerate(chunk.itertuples()):
            for k, kind in enumerate(PATHS):
                window = slice(k * n, (k + 1) * n)
                points, steps = _path_statistics(
                    z[i, window], zdot[i, window], r_final[i, window], r_final_dot[i, window], tangent[i, window], alphas
                )
                point_rows.append(points.assign(pair=row.pair, path=kind))
                step_rows.append(steps.assign(pair=row.pair, path=kind))
    points = pd.concat(point_rows, ignore_index=True)
    steps = pd.concat(step_rows, ignore_index=True)
    return points[["pair", "path", *[c for c in points.columns if c not in ("pair", "path")]]], steps[
        ["pair", "path", *[c for c in steps.columns if c not in ("pair", "path")]]
    ]


def _fisher_rao(log_q1: torch.Tensor, log_q2: torch.Tensor) -> torch.Tensor:
    """Return `2 arccos Σ √(q₁ q₂)` row-wise (the Fisher–Rao distance of categorical distributions)."""
    affinity = torch.exp(0.5 * (log_q1 + log_q2)).sum(-1).clamp(max=1.0)
    return 2 * torch.arccos(affinity)


def _path_statistics(z, zdot, r_final, r_final_dot, tangent, alphas):
    """Return the per-point and per-step frames of one path from its logits `[n, V]` and velocities."""
    log_q = torch.log_softmax(z.double(), -1)
    q = log_q.exp()
    mean_velocity = (q * zdot).sum(-1, keepdim=True)
    fisher_speed = torch.sqrt(((q * (zdot - mean_velocity) ** 2).sum(-1)).clamp_min(0))
    kl_start = (q[0] * (log_q[0] - log_q)).sum(-1).clamp_min(0)
    fr_start = _fisher_rao(log_q[0].expand_as(log_q), log_q)
    step_fr = _fisher_rao(log_q[:-1], log_q[1:])
    d_alpha = torch.diff(alphas.double().to(z.device))
    final_speed = r_final_dot.norm(dim=-1)
    path_speed = tangent.double().norm(dim=-1)

    def per_step(speed):  # trapezoid: the length a speed predicts for each grid step
        return 0.5 * (speed[:-1] + speed[1:]) * d_alpha

    fisher_step = per_step(fisher_speed)
    points = pd.DataFrame(
        dict(
            alpha=alphas.double().cpu().numpy(), kl_start=kl_start.cpu().numpy(), fr_start=fr_start.cpu().numpy(),
            fisher_speed=fisher_speed.cpu().numpy(), fisher_length=torch.cat([fisher_step.new_zeros(1), fisher_step.cumsum(0)]).cpu().numpy(),
            measured_length=torch.cat([step_fr.new_zeros(1), step_fr.cumsum(0)]).cpu().numpy(),
            final_distance=(r_final - r_final[0]).norm(dim=-1).cpu().numpy(), final_speed=final_speed.cpu().numpy(),
            path_speed=path_speed.cpu().numpy(), top_token=q.argmax(-1).cpu().numpy(),
        )
    )  # fmt: skip
    steps = pd.DataFrame(
        dict(
            step=np.arange(len(d_alpha)), alpha_mid=(0.5 * (alphas[:-1] + alphas[1:])).double().cpu().numpy(),
            measured=step_fr.cpu().numpy(), fisher=fisher_step.cpu().numpy(), final_residual=per_step(final_speed).cpu().numpy(),
            path_speed=per_step(path_speed).cpu().numpy(),
        )
    )  # fmt: skip
    return points, steps


# --- plateaus, jumps and what predicts them ---------------------------------------------------------

MIN_LENGTH = 1e-3  # a path whose output moves less than this (Fisher–Rao, radians) in total is flat: no jumps to find


def mark_jumps(steps: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Return `steps` with `jump` (the step's measured length is at least `factor` × its path's median step:
    the median is the plateaus' pace, which a jump cannot inflate as it does the mean),
    `event` (consecutive jump steps form one jump, numbered within the path; -1 elsewhere) and `peak` (the
    step of largest measured length within each jump: the jump's location). Flat paths have no jumps."""
    steps = steps.sort_values(["pair", "path", "step"]).reset_index(drop=True)
    keys = [steps["pair"], steps["path"]]
    typical = steps.groupby(["pair", "path"])["measured"].transform("median")
    total = steps.groupby(["pair", "path"])["measured"].transform("sum")
    jump = (steps["measured"] >= factor * typical) & (total >= MIN_LENGTH)
    starts = jump & ~jump.groupby(keys).shift(1, fill_value=False)
    event = starts.astype(int).groupby(keys).cumsum() - 1
    steps["jump"] = jump
    steps["event"] = np.where(jump, event, -1)
    in_event = steps[jump]
    peaks = in_event.groupby(["pair", "path", "event"])["measured"].idxmax()
    steps["peak"] = False
    steps.loc[peaks.to_numpy(), "peak"] = True
    steps["flat"] = total < MIN_LENGTH
    return steps


def path_summary(steps: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (pair, path): lengths, jumps, plateaus and how the Fisher length tracks the divergence.

    Columns: pair, path, flat, measured_length (Σ Fisher–Rao steps), fisher_length (ℓ_F(1)), length_ratio,
    fr_end (Fisher–Rao distance from start at α = 1), n_jumps, n_plateaus, jump_share (share of the measured
    length in jump steps), max_step_share (the largest step's share of it: 1/n_steps for a uniform path,
    whatever the jump rule), spearman_length_kl (Spearman of ℓ_F(α) and KL(q_0 ‖ q_α) along the path).
    """
    rows = []
    for (pair, path), part in steps.groupby(["pair", "path"], sort=True):
        along = points[(points["pair"] == pair) & (points["path"] == path)].sort_values("alpha")
        jump = part["jump"].to_numpy()
        runs = np.flatnonzero(np.diff(np.concatenate([[True], jump])) != 0)  # starts of runs of equal value
        n_plateaus = int(sum(1 for s in runs if not jump[s])) if len(part) else 0
        x, y = along["fisher_length"].rank().to_numpy(), along["kl_start"].rank().to_numpy()
        spearman = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
        measured, fisher = float(part["measured"].sum()), float(part["fisher"].sum())
        rows.append(dict(
            pair=pair, path=path, flat=bool(part["flat"].iloc[0]), measured_length=measured, fisher_length=fisher,
            length_ratio=measured / fisher if fisher > 0 else math.inf, fr_end=float(along["fr_start"].iloc[-1]),
            n_jumps=int(part.loc[part["jump"], "event"].nunique()), n_plateaus=n_plateaus,
            jump_share=float(part.loc[part["jump"], "measured"].sum() / measured) if measured > 0 else 0.0,
            max_step_share=float(part["measured"].max() / measured) if measured > 0 else 0.0, spearman_length_kl=spearman,
        ))  # fmt: skip
    return pd.DataFrame(rows)


def _hits(values: np.ndarray, peaks: np.ndarray, window: int, rng: np.random.Generator) -> int:
    """Return how many of the jump locations `peaks` have one of the predictor's top-`len(peaks)` steps within `window`."""
    order = np.lexsort((rng.random(len(values)), -values))  # descending, ties broken at random
    predicted = order[: len(peaks)]
    return int(sum(np.any(np.abs(predicted - p) <= window) for p in peaks))


def jump_hit_rates(steps: pd.DataFrame, window: int = 1, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Return, per path kind and predictor, the share of jumps that sit where the predictor peaks.

    For a path with J jumps, the predictor's J largest steps are its peaks; a jump is hit when a peak lies
    within `window` grid steps of its location. Predictors: the Fisher speed at layer ℓ, the final
    residual's Euclidean speed, the path's own Euclidean speed at layer ℓ (constant on the straight path:
    its peaks are drawn at random), and the Fisher speed shuffled along the path (a chance baseline).
    The CI is a percentile bootstrap over pairs. Columns: path, predictor, n_paths, n_jumps, hits, hit_rate,
    ci_lo, ci_hi, median_spearman (per path, of the predictor against the measured step lengths).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for path, part in steps[~steps["flat"]].groupby("path", sort=False):
        per_pair = {name: [] for name in PREDICTORS}
        jumps_per_pair, correlations = [], {name: [] for name in PREDICTORS}
        for _, one in part.groupby("pair", sort=True):
            one = one.sort_values("step")
            peaks = one["step"].to_numpy()[one["peak"].to_numpy()]
            measured = one["measured"].to_numpy()
            jumps_per_pair.append(len(peaks))
            for name in PREDICTORS:
                values = one["fisher" if name == "shuffled" else name].to_numpy()
                if name == "shuffled":
                    values = rng.permutation(values)
                per_pair[name].append(_hits(values, peaks, window, rng) if len(peaks) else 0)
                rx, ry = pd.Series(values).rank().to_numpy(), pd.Series(measured).rank().to_numpy()
                correlations[name].append(float(np.corrcoef(rx, ry)[0, 1]) if rx.std() > 0 and ry.std() > 0 else 0.0)
        jumps = np.asarray(jumps_per_pair)
        for name in PREDICTORS:
            hits = np.asarray(per_pair[name])
            draws = rng.integers(0, len(jumps), size=(n_boot, len(jumps)))
            totals = jumps[draws].sum(1)
            replicates = np.where(totals > 0, hits[draws].sum(1) / np.maximum(totals, 1), 0.0)
            rows.append(dict(
                path=path, predictor=name, n_paths=len(jumps), n_jumps=int(jumps.sum()), hits=int(hits.sum()),
                hit_rate=float(hits.sum() / jumps.sum()) if jumps.sum() else 0.0,
                ci_lo=float(np.quantile(replicates, 0.025)), ci_hi=float(np.quantile(replicates, 0.975)),
                median_spearman=float(np.median(correlations[name])),
            ))  # fmt: skip
    return pd.DataFrame(rows)


def plateau_table(summary: pd.DataFrame, n_steps: int) -> pd.DataFrame:
    """Return per path kind: paths, flat paths, jumps and plateaus per path, the share of length in jumps,
    and the largest step's share of the path length (median) beside a uniform path's `1 / n_steps`."""
    rows = []
    for path, part in summary.groupby("path", sort=False):
        moving = part[~part["flat"]]
        rows.append(dict(
            path=path, n_paths=len(part), n_flat=int(part["flat"].sum()), share_with_jumps=float((moving["n_jumps"] > 0).mean()),
            median_jumps=float(moving["n_jumps"].median()), max_jumps=int(moving["n_jumps"].max()),
            median_plateaus=float(moving["n_plateaus"].median()), median_jump_share=float(moving["jump_share"].median()),
            median_max_step_share=float(moving["max_step_share"].median()), uniform_step_share=1 / n_steps,
        ))  # fmt: skip
    return pd.DataFrame(rows)


def length_table(summary: pd.DataFrame, points: pd.DataFrame, small_eps: float) -> pd.DataFrame:
    """Return per path kind how the accumulated Fisher length ℓ_F relates to what is measured.

    Columns: path, n_paths, median_length_ratio (measured Fisher–Rao length / ℓ_F(1); 1 when the metric
    integrates to the output's path length), q10/q90 of it, median_geodesic_share (Fisher–Rao distance
    from the start at α = 1 / ℓ_F(1): 1 for a path that is a geodesic of the output space),
    median_spearman_length_kl, median_kl_ratio_small (KL(q_0 ‖ q_α) / ½ℓ_F(α)² at the first grid point
    where ½ℓ_F² reaches `small_eps`), median_kl_ratio_end (the same at α = 1).
    """
    rows = []
    points = points.assign(kl_pred=0.5 * points["fisher_length"] ** 2)
    for path, part in summary.groupby("path", sort=False):
        moving = part[~part["flat"]]
        along = points[(points["path"] == path) & points["pair"].isin(moving["pair"])]
        small, end = [], []
        for _, one in along.groupby("pair"):
            one = one.sort_values("alpha")
            reached = one[one["kl_pred"] >= small_eps]
            if len(reached):
                small.append(float(reached["kl_start"].iloc[0] / reached["kl_pred"].iloc[0]))
            if one["kl_pred"].iloc[-1] > 0:
                end.append(float(one["kl_start"].iloc[-1] / one["kl_pred"].iloc[-1]))
        ratio = moving["length_ratio"].to_numpy()
        rows.append(dict(
            path=path, n_paths=len(moving), median_length_ratio=float(np.median(ratio)), q10_length_ratio=float(np.quantile(ratio, 0.1)),
            q90_length_ratio=float(np.quantile(ratio, 0.9)), median_geodesic_share=float(np.median(moving["fr_end"] / moving["fisher_length"])),
            median_spearman_length_kl=float(moving["spearman_length_kl"].median()), n_small=len(small),
            median_kl_ratio_small=float(np.median(small)) if small else math.inf, median_kl_ratio_end=float(np.median(end)) if end else math.inf,
        ))  # fmt: skip
    return pd.DataFrame(rows)


def plateau_findings(plateaus: pd.DataFrame, hits: pd.DataFrame, lengths: pd.DataFrame, layer, factor: float, small_eps: float) -> str:
    """Return Markdown bullets stating what this run's interpolation tables show (every number read from them)."""
    bullets = []
    for row in plateaus.itertuples():
        bullets.append(
            f"**{row.path} path (layer {layer}).** {row.n_paths - row.n_flat} of {row.n_paths} paths move the output; of those "
            f"{row.share_with_jumps:.0%} have at least one jump (a step ≥ {factor:g}× the path's median step), median "
            f"{row.median_jumps:g} jumps and {row.median_plateaus:g} plateaus per path, with {row.median_jump_share:.0%} of the "
            f"output's path length in the jump steps (median). The largest single step carries {row.median_max_step_share:.1%} "
            f"of a path's length (median; {row.uniform_step_share:.1%} if the output moved uniformly)."
        )
    for path, part in hits.groupby("path", sort=False):
        rates = part.set_index("predictor")
        ranking = rates["hit_rate"].sort_values(ascending=False)
        fisher = rates.loc["fisher"]
        above = [p for p in PREDICTORS if p != "fisher" and fisher["ci_lo"] > rates.loc[p, "hit_rate"]]
        bullets.append(
            f"**Where the jumps sit ({path}).** Of {int(fisher['n_jumps'])} jumps, the Fisher-speed peaks hit "
            f"{fisher['hit_rate']:.0%} [{fisher['ci_lo']:.0%}, {fisher['ci_hi']:.0%}]; "
            + "; ".join(
                f"the peaks of {PREDICTOR_LABELS[p].removeprefix('the ')} {rates.loc[p, 'hit_rate']:.0%}" for p in PREDICTORS if p != "fisher"
            )
            + f". Ranking: {' > '.join(_SHORT[p] for p in ranking.index)}. The Fisher CI lies above the rate of "
            + (", ".join(PREDICTOR_LABELS[p] for p in above) if above else "none of the others")
            + f". Median per-path Spearman with the measured step lengths: Fisher {fisher['median_spearman']:.2f}, "
            f"final residual {rates.loc['final_residual', 'median_spearman']:.2f}."
        )
    for row in lengths.itertuples():
        bullets.append(
            f"**Fisher length against the divergence ({row.path}).** The output's measured Fisher–Rao path length is "
            f"{row.median_length_ratio:.3f}× the accumulated Fisher length ℓ_F(1) (median; 10–90%: {row.q10_length_ratio:.3f}–"
            f"{row.q90_length_ratio:.3f}); the distance from the start at α = 1 is {row.median_geodesic_share:.2f} of ℓ_F(1). "
            f"Along a path, ℓ_F(α) and KL(q_0 ‖ q_α) have median Spearman {row.median_spearman_length_kl:.2f}; KL / ½ℓ_F² is "
            f"{row.median_kl_ratio_small:.3f} where ½ℓ_F² first reaches {small_eps:g} and {row.median_kl_ratio_end:.3f} at α = 1 (medians)."
        )
    return "\n".join(f"- {b}" for b in bullets)
