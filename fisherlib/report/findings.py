"""What each run shows, in words computed from its tables: the notebooks display these as Markdown.

Every function takes the tables a notebook has just computed (the same DataFrames it saves) and
returns a Markdown paragraph. Any number, sign, ranking or verdict a notebook states about its run
comes from here, so the text follows the run: Pythia's notebooks describe Pythia, a local model's
describe that model. Method and the write-up's own findings stay in the notebooks' static prose.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.tables import SIG
from ..steps.calibration import PREDICTOR_LABELS
from ..steps.direction_classes import WRITE_UP_SIDES, sign_pattern
from ..steps.exactness import CLOSED_FORM_LABELS
from ..steps.stats import TOP_EIGVEC
from .claims import TIE_RATIO, stratifier_ranking

SIDE_WORDS = {1: "above 1", -1: "below 1", 0: "at 1"}


def as_saved(table: pd.DataFrame) -> pd.DataFrame:
    """Return `table` with its floats rounded to `SIGNIFICANT_DIGITS` significant digits, as `save_table` writes them.

    The sentences quote the saved tables, and the claims ledger reads them back from disk: rounding the
    same way keeps a sentence and the ledger from disagreeing in the last digit.
    """
    out = table.copy()
    for column in out.select_dtypes("float").columns:
        out[column] = [float(f"{v:{SIG}}") if np.isfinite(v) else v for v in out[column].to_numpy(float)]
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _at(table: pd.DataFrame, eps: float) -> pd.DataFrame:
    return table[np.isclose(table["eps"].astype(float), float(eps))]


def _resampled(row) -> str:
    if "resampled" not in row or "n_units" not in row:
        return "positions resampled"
    return f"{int(row['n_units'])} {row['resampled']}s resampled"


def _side(value: float, lo: float | None = None, hi: float | None = None) -> str:
    """Return 'above 1' / 'below 1', with '; CI excludes 1' or '; CI includes 1' when a CI is given."""
    words = SIDE_WORDS[int(np.sign(value - 1))]
    if lo is None or hi is None:
        return words
    return f"{words}; CI {'excludes' if lo > 1 or hi < 1 else 'includes'} 1"


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ratio(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.3g}×"


def _join(parts: list[str]) -> str:
    return "; ".join(parts)


def bullets(lines: list[str]) -> str:
    """Return Markdown bullets."""
    return "\n".join(f"- {line}" for line in lines)


# --- notebook 02 -------------------------------------------------------------------------------------


def spectrum_findings(spectrum: pd.DataFrame) -> str:
    """Sentences on `geometry.median_spectrum_by_stratum`: how much of tr F_k the first eigenvalue holds per quintile."""
    quintiles = [c for c in spectrum.columns if c.startswith("quintile")]
    spectrum = as_saved(spectrum)
    first = spectrum[spectrum["rank"] == 1].iloc[0]
    second = spectrum[spectrum["rank"] == 2].iloc[0]
    low, high = quintiles[0], quintiles[-1]
    return (
        f"**This run.** In the lowest effective-rank quintile ({low}) the first eigenvalue holds a median "
        f"{_pct(first[low])} of tr F_k and the second {_pct(second[low])}; in the highest ({high}), "
        f"{_pct(first[high])} and {_pct(second[high])}. "
        + (
            f"Even the lowest quintile is not rank 1: a median of {_pct(1 - first[low])} of the trace lies beyond the first eigenvalue."
            if first[low] < 0.9
            else "The lowest quintile is close to rank 1."
        )
    )


def rank_findings(ranks: pd.DataFrame) -> str:
    """Sentences on `geometry.rank_summary`."""
    ranks = as_saved(ranks)
    overall = ranks[ranks["domain"] == "all"].iloc[0]
    by_domain = ranks[ranks["domain"] != "all"].sort_values("entropy_rank_median")
    spread = ""
    if len(by_domain) > 1:
        lo, hi = by_domain.iloc[0], by_domain.iloc[-1]
        spread = (
            f" By domain the median runs from {lo['entropy_rank_median']:.2f} ({lo['domain']}) to {hi['entropy_rank_median']:.2f} ({hi['domain']})."
        )
    return (
        f"**This run.** Median spectral-entropy rank {overall['entropy_rank_median']:.2f} (90th percentile "
        f"{overall['entropy_rank_p90']:.2f}), median participation ratio {overall['participation_median']:.2f}; "
        f"{_pct(overall['rank_below_1_5'])} of positions have an effective rank below 1.5.{spread}"
    )


def rank_one_findings(rank_one: pd.DataFrame) -> str:
    """Sentences on `geometry.rank_one_regime`."""
    rank_one = as_saved(rank_one)
    first, last = rank_one.iloc[0], rank_one.iloc[-1]
    text = (
        f"**This run.** Median |cos| is {first['median_cos']:.3f} at top-two mass {first['pair_mass']} "
        f"({int(first['n'])} positions) and {last['median_cos']:.3f} at {last['pair_mass']} ({int(last['n'])} positions)"
    )
    rising = bool(np.all(np.diff(rank_one["median_cos"].to_numpy(float)) >= -0.02))
    text += "; it rises with the mass bin by bin." if rising else "; it does not rise steadily from bin to bin."
    if "n_near_binary" in rank_one.columns:
        n_near = int(rank_one["n_near_binary"].iloc[0])
        text += (
            f" {n_near} positions ({_pct(rank_one['share_near_binary'].iloc[0])}) are near-binary; their median |cos| is "
            f"{rank_one['median_cos_near_binary'].iloc[0]:.3f}."
            if n_near
            else " No position is near-binary."
        )
    return text


def topk_findings(summary: pd.DataFrame, top_k: int) -> str:
    """Sentences on the `topk_vs_full_fisher` summary (a `describe()` table with quantity, 10%, 50%, 90%)."""
    summary = as_saved(summary)
    rows = summary.set_index("quantity")
    trace, cos = rows.loc["trace_ratio"], rows.loc["top_eig_cos"]
    eig = rows.loc["top_eig_ratio"]
    return (
        f"**This run.** F_k (k = {top_k}) keeps a median {_pct(trace['50%'])} of tr F (10th percentile "
        f"{_pct(trace['10%'])}, minimum {_pct(trace['min'])}); its top eigenvalue is a median {eig['50%']:.4f} of F's, and "
        f"the two top eigenvectors have median |cos| {cos['50%']:.4f} (10th percentile {cos['10%']:.4f}), over "
        f"{int(trace['count'])} positions. Notebook 04 measures how much of the small-ε deviation of ρ this "
        "truncation accounts for."
    )


# --- notebook 03 -------------------------------------------------------------------------------------


def census_findings(census: pd.DataFrame) -> str:
    """Sentences on `measure.sweep_census`."""
    census = as_saved(census)
    censored = census[[c for c in census.columns if c.startswith("censored")]]
    per_position = ", ".join(f"{r.cls} {r.directions_per_position:g}" for r in census.itertuples())
    if (censored.to_numpy(float) == 0).all():
        tail = "No measurement is censored: every direction reaches every ε of the grid."
    else:
        worst = censored.stack().idxmax()
        tail = (
            f"The largest censored share is {_pct(censored.stack().max())} ({census.loc[worst[0], 'cls']}, {worst[1].replace('censored at ', '')})."
        )
    return f"**This run.** Directions per position: {per_position}. {tail}"


def boundary_check_findings(check: pd.DataFrame, tolerance: float = 1e-6) -> str:
    """Sentences on the boundary check: the divergence at `t_emp`, recomputed from dense logits."""
    check = as_saved(check)
    row = check.iloc[0]
    verdict = "within" if row["max_rel_error"] <= tolerance else "above"
    return (
        f"**This run.** Over {int(row['checked'])} rechecked measurements the largest relative error of the "
        f"divergence at t_emp is {row['max_rel_error']:.2g} (median {row['median_rel_error']:.2g}), {verdict} the "
        f"solver's tolerance {tolerance:g}."
    )


# --- notebook 04 -------------------------------------------------------------------------------------


def table1_findings(table1: pd.DataFrame) -> str:
    """Sentences on Table 1 (`exactness.top_eigvec_exactness`, by seed)."""
    table1 = as_saved(table1)
    row = table1.iloc[-1]
    deviation = row["median_rho"] - 1
    seeds = (
        f" Over {int(row['n_seeds'])} seeds the median is the mean of per-seed medians {row['seed_min']:.3f}–{row['seed_max']:.3f}."
        if row["n_seeds"] > 1
        else ""
    )
    return (
        f"**This run.** At ε = {row['eps']:g} the median ρ on the top eigenvector is {row['median_rho']:.4f} "
        f"[{row['ci_lo']:.4f}, {row['ci_hi']:.4f}] (95% CI, {_resampled(row)}; {int(row['n'])} measurements), "
        f"{abs(deviation):.1%} {'below' if deviation < 0 else 'above'} 1: "
        f"{'within' if abs(deviation) <= 0.01 else 'outside'} the write-up's 1% (Qwen) and "
        f"{'within' if abs(deviation) <= 0.08 else 'outside'} its 8% (all three).{seeds}"
    )


def sign_findings(by_sign: pd.DataFrame) -> str:
    """Sentences on Table 1 per sign."""
    by_sign = as_saved(by_sign)
    rows = by_sign.set_index("sign")
    plus, minus = rows.loc[1], rows.loc[-1]
    straddle = (plus["median_rho"] - 1) * (minus["median_rho"] - 1) < 0
    return (
        f"**This run.** +u: {plus['median_rho']:.4f} [{plus['ci_lo']:.4f}, {plus['ci_hi']:.4f}]; "
        f"−u: {minus['median_rho']:.4f} [{minus['ci_lo']:.4f}, {minus['ci_hi']:.4f}]. "
        + (
            "The two signs lie on opposite sides of 1, so pooling them hides a sign-dependent deviation."
            if straddle
            else "Both signs lie on the same side of 1."
        )
    )


def eig_rank_findings(by_rank: pd.DataFrame) -> str:
    """Sentences on `exactness.rho_by_eig_rank`."""
    by_rank = as_saved(by_rank)
    ordered = by_rank.sort_values("eig_rank")
    medians = ordered["median_rho"].to_numpy(float)
    closest = int(ordered["eig_rank"].iloc[int(np.argmin(np.abs(medians - 1)))])
    flat = bool(np.all(np.abs(medians - 1) <= 0.10))
    decaying = bool(np.all(np.diff(medians) <= 0.01))
    shape = []
    if flat:
        shape.append("all ranks lie within 10% of 1 (the write-up's Llama/Pythia shape)")
    if decaying:
        shape.append("the median never rises by more than 0.01 from one rank to the next (a decay, the write-up's Qwen shape)")
    return (
        f"**This run.** Median ρ runs from {medians[0]:.4f} (rank 1) to {medians[-1]:.4f} (rank {int(ordered['eig_rank'].iloc[-1])}); "
        f"rank {closest} is the closest to 1. " + (_first_upper("; ".join(shape)) + "." if shape else "Neither of the write-up's shapes holds.")
    )


def rho_by_eps_findings(by_eps: pd.DataFrame, small_eps: float, large_eps: float) -> str:
    """Sentences on `exactness.rho_by_eps`: each class's side of 1 at the small and the large ε."""
    by_eps = as_saved(by_eps)
    lines = []
    for eps in (small_eps, large_eps):
        at = _at(by_eps, eps)
        at = at[at["cls"] != "control"]
        parts = [f"{r.cls} {r.median_rho:.3f} ({_side(r.median_rho, r.ci_lo, r.ci_hi)})" for r in at.itertuples()]
        lines.append(f"at ε = {eps:g}: " + ", ".join(parts))
    return "**This run.** Median ρ " + _join(lines) + "."


def truncation_findings(topk_vs_full: pd.DataFrame) -> str:
    """Sentences on `exactness.rho_topk_vs_full` at the smallest ε of the grid."""
    topk_vs_full = as_saved(topk_vs_full)
    eps = float(topk_vs_full["eps"].min())
    at = _at(topk_vs_full, eps).set_index("cls")
    shares = ", ".join(f"{c} {r['truncation_share']:.2f}" for c, r in at.iterrows())
    majority = [c for c, r in at.iterrows() if r["truncation_share"] >= 0.5]
    top = at.loc[TOP_EIGVEC] if TOP_EIGVEC in at.index else None
    text = f"**This run.** At ε = {eps:g} (the smallest of the grid) the truncation share is {shares}. "
    if majority:
        text += f"Truncation is the larger part of the deviation for {', '.join(majority)}"
        rest = [c for c in at.index if c not in majority]
        text += f"; the Taylor remainder is for {', '.join(rest)}." if rest else "."
    else:
        text += "The Taylor remainder, not truncation, is the larger part for every group."
    if top is not None:
        text += f" On the top eigenvector median ρ is {top['median_rho']:.4f} with F_k and {top['median_rho_full']:.4f} with the full F at this ε."
    return text


def cumulant_findings(cumulant_check: pd.DataFrame) -> str:
    """Sentences on `exactness.cumulant_summary`."""
    cumulant_check = as_saved(cumulant_check)
    lines = []
    for eps, at in cumulant_check.groupby("eps", sort=True):
        top = at[at["cls"] == TOP_EIGVEC]
        signed = at[at["n_pairs"] > 0]
        agreement = f"{at['sign_agreement'].min():.2f}–{at['sign_agreement'].max():.2f}"
        opposite = f"{signed['opposite_sides'].min():.2f}–{signed['opposite_sides'].max():.2f}" if len(signed) else "—"
        shrink = (at["median_abs_dev_quartic"] < at["median_abs_dev"]).all()
        line = (
            f"at ε = {eps:g} the sign of ρ_full − 1 follows −κ₃ in a fraction {agreement} of decisive measurements "
            f"(over groups), ±u pairs fall on opposite sides of 1 in {opposite}, and the quartic correction "
            f"{'shrinks' if shrink else 'does not shrink'} the median |ρ_full − 1| in every group"
        )
        if len(top):
            r = top.iloc[0]
            line += f" (top eigenvector: {r['median_abs_dev']:.4f} → {r['median_abs_dev_quartic']:.4f})"
        lines.append(line)
    return "**This run.** " + _first_upper(_join(lines)) + "."


def accuracy_findings(accuracy: pd.DataFrame, eps_values) -> str:
    """Sentences on `exactness.predictor_accuracy`: the best closed form per group, at each ε given."""
    accuracy = as_saved(accuracy)
    lines = []
    for eps in eps_values:
        at = _at(accuracy, eps)
        parts = []
        for cls, group in at.groupby("cls", sort=False):
            best = group.sort_values("median_abs_rel_error").iloc[0]
            quartic = group[group["predictor"] == "t_quartic"]
            fallback = f", quartic fell back on {int(quartic['n_fallback'].iloc[0])}/{int(quartic['n'].iloc[0])}" if len(quartic) else ""
            parts.append(
                f"{cls}: {CLOSED_FORM_LABELS.get(best['predictor'], best['predictor'])} (median error {best['median_abs_rel_error']:.2g}{fallback})"
            )
        lines.append(f"at ε = {eps:g} the smallest median relative error per group is: " + ", ".join(parts))
    return "**This run.** " + _first_upper(_join(lines)) + "."


# --- notebook 05 -------------------------------------------------------------------------------------


def table2_findings(table2: pd.DataFrame) -> str:
    """Sentences on Table 2 with ρ and ρ_full: the sign pattern against the write-up's."""
    table2 = as_saved(table2)
    eps = float(table2["eps"].iloc[0])
    lines = []
    for column, lo, hi, name in (("median_rho", "ci_lo", "ci_hi", "F_k"), ("median_rho_full", "ci_lo_full", "ci_hi_full", "full F")):
        if column not in table2.columns:
            continue
        pattern = sign_pattern(table2, column)
        indexed = table2.set_index("cls")
        parts = [
            f"{c} {indexed.loc[c, column]:.3f} ({_side(indexed.loc[c, column], indexed.loc[c, lo], indexed.loc[c, hi])})" for c in pattern["cls"]
        ]
        agree = int(pattern["agrees"].sum())
        verdict = "the write-up's pattern" if agree == len(pattern) else f"{agree} of {len(pattern)} classes on the write-up's side"
        lines.append(f"with {name}: {', '.join(parts)} — {verdict}")
    expected = ", ".join(f"{c} {SIDE_WORDS[s]}" for c, s in WRITE_UP_SIDES.items())
    return f"**This run** (ε = {eps:g}; the write-up: {expected}). Median ρ " + _join(lines) + "."


def spearman_findings(spearman: pd.DataFrame) -> str:
    """Sentences on `direction_classes.spearman_summary`."""
    spearman = as_saved(spearman)
    lines = []
    for eps, at in spearman.groupby("eps", sort=True):
        rows = at[at["predictor"] == "t_pred"]
        if rows.empty:
            continue
        r = rows.iloc[-1]
        lines.append(
            f"at ε = {eps:g}, median {r['median']:.3f} (quartiles {r['q25']:.3f}–{r['q75']:.3f}, range "
            f"{r['min']:.3f}–{r['max']:.3f}, {int(r['n_positions'] - r['n_undefined'])} positions)"
        )
    baselines = spearman[spearman["predictor"].isin(["entropy", "max_prob", "trace_f"])]
    zero = bool((baselines["median"] == 0).all()) if len(baselines) else True
    return (
        "**This run.** Per-position Spearman of t_pred against t_emp: "
        + _join(lines)
        + ". "
        + ("The constant baselines are undefined at every position (scored 0)." if zero else "Some baseline scored non-zero.")
    )


# --- notebook 06 -------------------------------------------------------------------------------------


def _value(table: pd.DataFrame, cls: str, method: str, space: str) -> float:
    rows = table[(table["cls"] == cls) & (table["method"] == method) & ((table["space"] == space) | (method == "raw"))]
    return float(rows["within_50"].iloc[0])


def calibration_findings(calibration: pd.DataFrame, eps: float, space: str) -> str:
    """Sentences on `calibration.calibrate_isotonic_cv` (both spaces) at the headline ε, headline space first."""
    calibration = as_saved(calibration)
    at = _at(calibration, eps)
    raw = _value(at, "all", "raw", space)
    unit = at["resampled"].iloc[0] if "resampled" in at.columns else "position"
    lines = []
    for s in [space] + sorted(set(at["space"]) - {space, "none"}):
        pooled, per_class = _value(at, "all", "calibrated_pooled", s), _value(at, "all", "calibrated_per_class", s)
        random = _value(at, "random", "calibrated_per_class", s)
        word = "raises" if pooled > raw else "lowers" if pooled < raw else "leaves"
        lines.append(
            f"in {s} space{' (the headline)' if s == space else ''}, pooled calibration {word} the fraction within 50% "
            f"from {_pct(raw)} (raw) to {_pct(pooled)}, per-class calibration gives {_pct(per_class)}, and the random "
            f"class reaches {_pct(random)} with its own calibrator"
        )
    return f"**This run** (ε = {eps:g}, 5-fold CV grouped by {unit}): " + _join(lines) + "."


def comparison_findings(comparison: pd.DataFrame, eps: float) -> str:
    """Sentences on `calibration.predictor_comparison` at `eps`, all classes pooled: the ranking of predictors."""
    comparison = as_saved(comparison)
    at = _at(comparison, eps)
    pooled = at[at["cls"] == "all"].sort_values("within_50", ascending=False)
    if pooled.empty:
        return "**This run.** No pooled predictor rows at this ε."
    ranking = ", ".join(f"{PREDICTOR_LABELS[r.predictor]} {_pct(r.within_50)}" for r in pooled.itertuples())
    calibrators = pooled[pooled["predictor"].str.startswith("iso_")]
    quartic = pooled[pooled["predictor"] == "t_quartic"].iloc[0]
    best = calibrators.iloc[0]
    if quartic["within_50"] > best["within_50"]:
        verdict = (
            f"The uncalibrated quartic root beats the best cross-validated calibrator ({PREDICTOR_LABELS[best['predictor']]}) "
            f"by {100 * (quartic['within_50'] - best['within_50']):.1f} points."
        )
    else:
        verdict = (
            f"The best calibrator ({PREDICTOR_LABELS[best['predictor']]}) beats the quartic root by "
            f"{100 * (best['within_50'] - quartic['within_50']):.1f} points."
        )
    return (
        f"**This run** (ε = {eps:g}, all four classes, the same {int(quartic['n'])} measurements for every predictor; "
        f"the quartic fell back to t_pred with F on {int(quartic['n_fallback'])}). Within 50%: {ranking}. {verdict}"
    )


# --- notebook 07 -------------------------------------------------------------------------------------


def stratifier_findings(stratifiers: pd.DataFrame) -> str:
    """Sentences on `stratifiers.stratifier_variance`: the ranking per selection, ties called ties."""
    stratifiers = as_saved(stratifiers)
    lines = []
    for (cls, eps), part in stratifiers.groupby(["cls", "eps"], sort=False):
        indexed = part.set_index("stratifier")
        sentences = []
        for column, name in (("within_var", "variance"), ("robust_within_var", "robust spread")):
            ranking = stratifier_ranking(part, column)
            if ranking["winner"]:
                runner_up = ranking["order"][1]
                ratio = float(indexed.loc[runner_up, column] / indexed.loc[ranking["winner"], column])
                lead = f"{ranking['winner']} is best (runner-up {runner_up} at {_ratio(ratio)})"
            else:
                tied = ranking["tied"]
                lead = f"{', '.join(tied[:-1])} and {tied[-1]} tie (each within {TIE_RATIO - 1:.0%} of the smallest spread)"
            sentences.append(f"by {name}, {lead}, and eff_rank's spread is {_ratio(ranking['eff_rank_ratio'])} entropy's")
        explained = ", ".join(f"{s} {_pct(v)}" for s, v in indexed["explained"].items())
        lines.append(f"{cls} at ε = {eps:g}: " + "; ".join(sentences) + f" (variance explained: {explained})")
    return "**This run.** " + _join(lines) + "."


def stable_region_findings(axes: pd.DataFrame) -> str:
    """Sentences on `stable_regions.axis_boundaries`: true boundary against the ellipse along each plane axis."""
    axes = as_saved(axes)
    small, large = float(axes["eps"].min()), float(axes["eps"].max())
    lines = []
    for title, part in axes.groupby("title", sort=False):
        at_large = part[part["eps"] == large]
        ratios = ", ".join(f"{r.axis} {r.ratio:.2f}" for r in at_large.itertuples())
        worst = float((part[part["eps"] == small]["ratio"] - 1).abs().max())
        lines.append(
            f"{title}: at ε = {large:g} {ratios}; at ε = {small:g} every axis within {worst:.1%} of the ellipse; "
            f"the ellipse's semi-axis along u2 is {part['reach_ratio'].iloc[0]:.3g}× that along u1"
        )
    return (
        "**This run.** True boundary over the full-F ellipse's along ±u1 (eigenvector 1) and ±u2 (the plane's second "
        "direction); 1: the ellipse is exact, above 1: the true region reaches farther. " + _join(lines) + "."
    )


# --- claims ---------------------------------------------------------------------------------------------


def _source_label(row) -> str:
    """Return `Write-up` for the write-up's claims, else the paper's citation (ledgers without `source`: the write-up)."""
    source = getattr(row, "source", "write-up") or "write-up"
    return "Write-up" if source == "write-up" else source


def claims_section(ledger: pd.DataFrame, notebook: str) -> str:
    """Return the verdicts of `notebook`'s claims as Markdown (from `claims.write_ledger`)."""
    from .claims import CLAIMS_BY_ID

    rows = ledger[ledger["claim"].map(lambda c: CLAIMS_BY_ID[c].notebook == notebook if c in CLAIMS_BY_ID else False)]
    lines = [
        f"**`{r.claim}` — {r.verdict}.** {r.statement} *{_source_label(r)}:* {r.write_up}. *This run:* {r.ours}. *Evidence:* "
        f"{r.evidence}. *Rule:* {CLAIMS_BY_ID[r.claim].rule}"
        for r in rows.itertuples()
    ]
    return "### Claims decided by this notebook\n\n" + "\n\n".join(lines) if lines else "No claim is decided here."


# --- the power law of the divergence by direction class (Ferreira da Silva & Heimersheim 2026) ---------


def _exponent_side(row) -> str:
    from .claim_rules import P_QUADRATIC, P_TOLERANCE

    if row["ci_lo"] > P_QUADRATIC and row["median_p"] > P_QUADRATIC + P_TOLERANCE:
        return "above 2"
    if abs(row["median_p"] - P_QUADRATIC) <= P_TOLERANCE:
        return "≈ 2"
    return "above 2 (CI not clear of it)" if row["median_p"] > P_QUADRATIC else "below 2"


def _band_sentence(part: pd.DataFrame, contrastive: str) -> str:
    first = part.iloc[0]
    classes = [c for c in (contrastive, "random", "structured", "tangent", "covariance", "eigvec") if c in set(part["cls"])]
    indexed = part.set_index("cls")
    values = ", ".join(
        f"{c} {indexed.loc[c, 'median_p']:.2f} [{indexed.loc[c, 'ci_lo']:.2f}, {indexed.loc[c, 'ci_hi']:.2f}] ({_exponent_side(indexed.loc[c])})"
        for c in classes
    )
    plateaus = int(part["n_plateau"].sum()) if "n_plateau" in part else 0
    extra = f"; {plateaus} pairs with a boundary that did not move (p = inf)" if plateaus else ""
    return f"{first['band']} ε ({first['eps_lo']:g}–{first['eps_hi']:g}): {values}{extra}"


def power_law_findings(table: pd.DataFrame, contrastive: str = "contrastive") -> str:
    """Sentences on the median local exponent p per ε band and class (`power_law.exponents_by_class`)."""
    table = as_saved(table)
    if table.empty:
        return "**This run:** no pair of consecutive ε had an uncensored boundary at both; no exponent measured."
    lines = [_band_sentence(part, contrastive) for _, part in table.groupby("band", sort=False)]
    row = table.iloc[0]
    dropped = int(table.loc[table["cls"] != "contrastive", "n_dropped"].sum())  # the pooled group counted once
    return (
        f"**This run** (median local exponent p = Δlog ε / Δlog t_emp, {_resampled(row)}; {dropped} pairs with a "
        f"censored boundary dropped). " + _join(lines) + "."
    )


def layer_power_law_findings(table: pd.DataFrame, contrastive: str = "actdiff") -> str:
    """Per inner layer and band: where the contrastive exponent is above 2 while random stays ≈ 2."""
    table = as_saved(table)
    if table.empty:
        return "**This run:** no layer had an uncensored pair of consecutive ε; no exponent measured."
    lines = []
    for layer, part in table.groupby("layer", sort=False):
        bands = []
        for _, cell in part.groupby("band", sort=False):
            indexed = cell.set_index("cls")
            if contrastive in indexed.index and "random" in indexed.index:
                c, r = indexed.loc[contrastive], indexed.loc["random"]
                bands.append(
                    f"{c['band']} {contrastive} {c['median_p']:.2f} ({_exponent_side(c)}) vs random {r['median_p']:.2f} ({_exponent_side(r)})"
                )
        if bands:
            lines.append(f"layer {layer}: " + "; ".join(bands))
    above = [
        f"{r.layer}/{r.band}" for r in table[table["cls"] == contrastive].itertuples()
        if str(r.layer) != "head" and _exponent_side(table.loc[r.Index]) == "above 2"
    ]  # fmt: skip
    summary = (
        f"{contrastive} exponent above 2 at inner layer/band {', '.join(above)}"
        if above
        else f"{contrastive} exponent nowhere clearly above 2 at an inner layer"
    )
    return f"**This run:** {summary}.\n\n" + bullets(lines)


# --- effective dimension of the pulled-back metric (FishBack) ---------------------------------------------


def effective_dimension_findings(table: pd.DataFrame) -> str:
    """Sentences on `effective_dimension.effective_dimension_by_layer`: share of d per layer, distance from Euclidean."""
    from .claim_rules import EFF_DIM_SHARE, REL_SPECTRAL_LOW

    table = as_saved(table)
    if table.empty:
        return "**This run:** no layer spectrum was measured."
    lo, hi = EFF_DIM_SHARE
    lines = [
        f"layer {r.layer}: effective rank {r.eff_rank:.1f} = {_pct(r.eff_rank_share)} of d = {int(r.d)} "
        f"(quartiles {_pct(r.eff_rank_share_q25)}–{_pct(r.eff_rank_share_q75)}; participation ratio {_pct(r.participation_share)}); "
        f"‖G/‖G‖ − I‖₂ {_pct(r.rel_spectral)}, best multiple of I {_pct(r.rel_spectral_best)} (spectral), "
        f"{_pct(r.rel_frobenius_best)} (Frobenius)"
        for r in table.itertuples()
    ]
    inside = [str(r.layer) for r in table.itertuples() if lo <= r.eff_rank_share <= hi]
    far = [str(r.layer) for r in table.itertuples() if r.rel_spectral > REL_SPECTRAL_LOW]
    summary = (
        f"effective dimension within FishBack's {_pct(lo)}–{_pct(hi)} of d at {len(inside)} of {len(table)} layers"
        f"{' (' + ', '.join(inside) + ')' if inside else ''}; relative spectral difference above {_pct(REL_SPECTRAL_LOW)} at "
        f"{len(far)} of {len(table)}; medians over {int(table['n_positions'].max())} positions"
    )
    return f"**This run:** {summary}.\n\n" + bullets(lines)


# --- the averaged Jacobian lens ---------------------------------------------------------------------------


def lens_findings(table: pd.DataFrame) -> str:
    """Sentences on `jacobian_lens.lens_table`: how much of the per-position metric the averaged lens keeps."""
    table = as_saved(table)
    if table.empty:
        return "**This run:** no layer was scored with the averaged lens."
    lines = [
        f"layer {r.layer}: within 50% of t_emp {_pct(r.within_50_G)} with G_ℓ, {_pct(r.within_50_lens)} with the lens "
        f"(within 10%: {_pct(r.within_10_G)} vs {_pct(r.within_10_lens)}); top eigenvectors {r.median_angle_deg:.1f}° apart"
        for r in table.itertuples()
    ]
    inner = table[table["layer"].astype(str) != "head"]
    loss = (inner["within_50_G"] - inner["within_50_lens"]) if len(inner) else pd.Series([0.0])
    worst = inner.loc[loss.idxmax(), "layer"] if len(inner) else "—"
    mismatch = float(table["max_curv_mismatch"].max())
    return (
        f"**This run:** at inner layers the averaged lens loses at most {100 * float(loss.max()):.1f} points of the "
        f"within-50% share (layer {worst}); the dense G_ℓ reproduces the layer study's curvatures to {mismatch:.1e} "
        f"(relative), so the same directions are scored.\n\n" + bullets(lines)
    )


def _layer_name(layer) -> str:
    return "the head" if str(layer) == "head" else f"layer {layer}"


def lens_table1_findings(table: pd.DataFrame) -> str:
    """Sentences on `jacobian_lens.lens_table1`: Table 1 along the lens's top eigenvector, with the lens's and the true curvature."""
    table = as_saved(table)
    if table.empty:
        return "**This run:** no layer has lines along the lens's top eigenvector."
    t = table.set_index("layer")
    eps = float(table["eps"].iloc[0])
    low, high = t["median_rho_lens"].idxmin(), t["median_rho_lens"].idxmax()
    covers = [str(layer) for layer, row in t.iterrows() if row["ci_lo_lens"] <= 1 <= row["ci_hi_lens"]]
    lines = [
        f"{_layer_name(r.layer)}: {r.median_rho_lens:{SIG}} [{r.ci_lo_lens:{SIG}}, {r.ci_hi_lens:{SIG}}] with the lens's curvature, "
        f"{r.median_rho_true:{SIG}} [{r.ci_lo_true:{SIG}}, {r.ci_hi_true:{SIG}}] with G_ℓ's; along G_ℓ's own top eigenvector "
        f"{r.table1_median_rho_same:{SIG}} on the same positions ({r.table1_median_rho:{SIG}} on all of the layer study's); "
        f"{int(r.n_censored)} of {int(r.n)} lines censored"
        for r in table.itertuples()
    ]
    return (
        f"**This run:** along ± the top eigenvector of the held-out lens Ḡ_ℓ at ε = {eps:g}, the lens's own curvature "
        f"uᵀḠ_ℓu gives a median ρ from {t.loc[low, 'median_rho_lens']:{SIG}} ({_layer_name(low)}) to "
        f"{t.loc[high, 'median_rho_lens']:{SIG}} ({_layer_name(high)}), its 95% CI containing 1 at {len(covers)} of {len(t)} "
        f"layers ({', '.join(_layer_name(x) for x in covers) or 'none'}); the true curvature uᵀG_ℓu on the same lines gives "
        f"{t['median_rho_true'].min():{SIG}}–{t['median_rho_true'].max():{SIG}}, and G_ℓ's own top eigenvector (the layer "
        f"study's Table 1, same positions) {t['table1_median_rho_same'].min():{SIG}}–{t['table1_median_rho_same'].max():{SIG}}.\n\n" + bullets(lines)
    )
