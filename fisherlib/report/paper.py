"""`make paper`: assemble `results/summary.md`, one table per study table, a column per run, the write-up beside.

Reads only the tables the notebooks wrote under `results/<run>/`; computes nothing new.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..io.atomic import atomic_write_text
from ..io.locations import repo_root
from ..io.tables import read_table_file
from ..steps.stats import TABLE2_GROUPS
from .claims import CLAIMS, LEDGER_COLUMNS, evaluate_claims, markdown_table, read_not_applicable, read_tables
from .reference import ACROSS_ARCHITECTURES, MODEL_NAMES, WRITE_UP

logger = logging.getLogger("fisherlib")

# What each notebook must write (the notebook tests check these exist, are non-empty and hold no NaN).
EXPECTED_TABLES = {
    "01_sample_positions": ["model_card", "sample_strata", "sample_summary"],
    "02_fisher_geometry": ["fisher_spectrum_by_stratum", "effective_rank_summary", "rank_one_regime", "topk_vs_full_fisher"],
    "03_direction_sweep": ["sweep_census", "boundary_check"],
    "04_closed_form_exactness": ["table1_top_eigvec", "rho_by_eig_rank", "rho_by_eps", "rho_topk_vs_full", "predictor_accuracy"],
    "05_direction_classes": ["table2_rho_by_class", "spearman_per_position", "spearman_summary", "power_law_by_class"],
    "06_isotonic_calibration": ["calibration_within50", "calibration_headline", "predictor_comparison"],
    "07_entropy_stratification": ["stratifier_variance", "stable_region_axes", "claims"],
    "08_layer_pullback": [
        "layer_positions",
        "layer_table1",
        "layer_rho_by_eps",
        "layer_spearman",
        "layer_exactness_frontier",
        "layer_nonmonotone",
        "layer_power_law",
        "layer_effective_dimension",
        "jacobian_lens",
        "jacobian_lens_table1",
    ],
    "09_interpolation_plateaus": ["plateau_paths", "plateau_statistics", "plateau_jump_hits", "plateau_fisher_length"],
    "11_steering_budget": [
        "steering_vectors",
        "steering_prompts",
        "steering_token_accuracy",
        "steering_attention",
        "steering_population",
        "steering_population_summary",
        "steering_generated",
        "steering_generated_summary",
        "steering_natural",
    ],
}
EXPECTED_FIGURES = {
    "01_sample_positions": ["sample_entropy_by_stratum"],
    "02_fisher_geometry": ["fisher_spectra", "rank_one_regime"],
    "03_direction_sweep": ["kl_profiles"],
    "04_closed_form_exactness": ["rho_by_eig_rank", "rho_by_eps", "rho_topk_vs_full"],
    "05_direction_classes": ["rho_by_class", "spearman_histogram", "power_law_by_class"],
    "06_isotonic_calibration": ["calibration_within50_vs_eps", "calibration_curve", "predictor_comparison"],
    "07_entropy_stratification": ["stratifier_variance", "stable_regions"],
    "08_layer_pullback": [
        "layer_table1",
        "layer_rho_by_eps",
        "layer_spearman",
        "layer_exactness_frontier",
        "layer_power_law",
        "layer_effective_dimension",
        "jacobian_lens",
    ],
    "09_interpolation_plateaus": ["plateau_reometry", "plateau_examples", "plateau_jump_hits"],
    "11_steering_budget": ["steering_alpha_scatter", "steering_population", "steering_natural"],
}
WRITE_UP_ARCHS = ("qwen", "llama", "pythia")


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = run_dir / f"{name}.csv"
    return read_table_file(path) if path.is_file() else None


def _per_run(runs: dict[str, Path], name: str, to_series) -> dict[str, pd.Series]:
    """Return `{run: to_series(table)}` for every run that wrote table `name`."""
    return {run: to_series(table) for run, folder in runs.items() if (table := _read(folder, name)) is not None}


def _write_up_header(arch: str) -> str:
    return f"write-up {MODEL_NAMES[arch]}"


def table1(runs: dict[str, Path]) -> pd.DataFrame:
    """Median ρ on the top eigenvector at small ε, with its 95% CI, per run."""
    rows = {"median ρ": {}, "95% CI": {}, "seeds": {}, "ε": {}}
    for run, folder in runs.items():
        table = _read(folder, "table1_top_eigvec")
        if table is None:
            continue
        overall = table.iloc[-1]  # the "all seeds" row
        rows["median ρ"][run] = f"{overall['median_rho']:.3f}"
        rows["95% CI"][run] = f"[{overall['ci_lo']:.3f}, {overall['ci_hi']:.3f}]"
        rows["seeds"][run] = str(int(overall["n_seeds"]))
        rows["ε"][run] = f"{overall['eps']:g}"
    for arch in WRITE_UP_ARCHS:
        ref = WRITE_UP[arch]["table1"]
        column = _write_up_header(arch)
        rows["median ρ"][column] = f"{ref['median']:.3f}"
        rows["95% CI"][column] = f"[{ref['ci'][0]:.3f}, {ref['ci'][1]:.3f}]"
        rows["seeds"][column] = str(ref["n_seeds"])
        rows["ε"][column] = "small"
    return pd.DataFrame(rows).T


def table2(runs: dict[str, Path]) -> pd.DataFrame:
    """Median ρ at ε = 1 nat by direction class, per run."""
    classes = list(TABLE2_GROUPS)
    columns = _per_run(runs, "table2_rho_by_class", lambda t: t.set_index("cls")["median_rho"].map(lambda x: f"{x:.3g}"))
    for arch in WRITE_UP_ARCHS:
        columns[_write_up_header(arch)] = pd.Series({k: f"{v:.2f}" for k, v in WRITE_UP[arch]["table2"].items()})
    return pd.DataFrame(columns).reindex(classes).fillna("—")


def spearman(runs: dict[str, Path]) -> pd.DataFrame:
    """Per-position Spearman(t_pred, t_emp): median and range over positions, per run and ε."""

    def summarise(table: pd.DataFrame) -> pd.Series:
        rows = table[table["predictor"] == "t_pred"].itertuples()
        return pd.Series({f"ε = {r.eps:g}": f"{r.median:.2f} [{r.min:.2f}, {r.max:.2f}]" for r in rows})

    columns = _per_run(runs, "spearman_summary", summarise)
    low, high = ACROSS_ARCHITECTURES["spearman_range"]
    frame = pd.DataFrame(columns)
    frame["write-up (3 archs)"] = f"range {low:.2f}–{high:.2f}"
    return frame.fillna("—")


def calibration(runs: dict[str, Path]) -> pd.DataFrame:
    """Fraction within 50% of t_emp at ε = 1: raw, pooled and per-class isotonic calibration."""

    def headline(table: pd.DataFrame) -> pd.Series:
        return pd.Series(
            {
                f"{r.cls}: {r.method}": f"{r.within_50:.0%}"
                for r in table.itertuples()
                if r.cls == "all" or (r.cls == "random" and r.method == "calibrated_per_class")
            }
        )

    def with_space(table: pd.DataFrame) -> pd.Series:
        values = headline(table)
        spaces = table["space"][table["method"] != "raw"] if "space" in table.columns else pd.Series(["log (older run)"])
        return pd.concat([pd.Series({"calibration space": str(spaces.iloc[0])}), values])

    columns = _per_run(runs, "calibration_headline", with_space)
    for arch in WRITE_UP_ARCHS:
        ref = WRITE_UP[arch]["calibration"]
        values = {"all: raw": f"{ref['raw']:.0%}", "all: calibrated_pooled": f"{ref['calibrated_pooled']:.0%}"}
        columns[_write_up_header(arch)] = pd.Series({"calibration space": "linear", **values})
    low, high = ACROSS_ARCHITECTURES["per_class_random_within50"]
    frame = pd.DataFrame(columns)
    frame.loc["random: calibrated_per_class", [c for c in frame.columns if c.startswith("write-up")]] = f"{low:.0%}–{high:.0%}"
    return frame.fillna("—")


def stratifiers(runs: dict[str, Path]) -> pd.DataFrame:
    """Within-quintile variance of log ρ relative to the best stratifier, per run and measurement set."""
    columns = _per_run(
        runs,
        "stratifier_variance",
        lambda t: pd.Series({f"{r.cls} @ ε={r.eps:g}: {r.stratifier}": f"{r.ratio_to_best:.3g}×" for r in t.itertuples()}),
    )
    low, high = ACROSS_ARCHITECTURES["eff_rank_worse_than_entropy"]
    frame = pd.DataFrame(columns)
    frame["write-up (3 archs)"] = ""
    for index in frame.index:
        if index.endswith("entropy"):
            frame.loc[index, "write-up (3 archs)"] = "1× (best)"
        elif index.endswith("eff_rank"):
            frame.loc[index, "write-up (3 archs)"] = f"{low:g}–{high:g}×"
    return frame.fillna("—")


def predictors(runs: dict[str, Path]) -> pd.DataFrame:
    """Fraction within 50% of t_emp at the large ε for every predictor on one denominator (all classes), per run."""

    def pooled(table: pd.DataFrame) -> pd.Series:
        eps = 1.0 if (table["eps"] == 1.0).any() else float(table["eps"].max())
        rows = table[(table["cls"] == "all") & (table["eps"] == eps)]
        return pd.Series({f"{r.predictor} (ε = {eps:g})": f"{r.within_50:.1%}" for r in rows.itertuples()})

    frame = pd.DataFrame(_per_run(runs, "predictor_comparison", pooled))
    return frame.fillna("—") if len(frame) else pd.DataFrame({"note": ["no run wrote predictor_comparison yet"]})


def run_ledger(folder: Path) -> pd.DataFrame:
    """Return a run's claims ledger: its `claims.csv`, else evaluated now from the tables it holds."""
    ledger = _read(folder, "claims")
    if ledger is not None and list(ledger.columns) == LEDGER_COLUMNS:
        return ledger.fillna("")
    return evaluate_claims(read_tables(folder), not_applicable=read_not_applicable(folder))


def claims_matrix(runs: dict[str, Path]) -> pd.DataFrame:
    """The claims ledger across runs: one row per claim, the write-up's figures beside each run's verdict and figure."""
    frame = pd.DataFrame(
        {"claim": [c.id for c in CLAIMS], "source": [c.source for c in CLAIMS], "write-up / paper": [c.write_up_text(None) for c in CLAIMS]}
    ).set_index("claim")
    for run, folder in runs.items():
        ledger = run_ledger(folder).set_index("claim")
        frame[run] = [f"**{ledger.loc[c.id, 'verdict']}**: {ledger.loc[c.id, 'ours']}" if c.id in ledger.index else "—" for c in CLAIMS]
    return frame


def _holds_tables(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f"{name}.csv").is_file() for names in EXPECTED_TABLES.values() for name in names)


def is_complete_run(folder: Path) -> bool:
    """Return whether `folder` was published by `make reproduce`: its `run.json` says every notebook succeeded."""
    try:
        return bool(json.loads((folder / "run.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def run_damage(folder: Path) -> str | None:
    """Say what is wrong with a run folder holding study tables, or None for a whole published run.

    Whole means: a readable `run.json` that says the run is complete, every notebook it lists published and
    readable, every table readable, and a claims ledger (where there is one) with one verdict per claim.
    """
    manifest_path = folder / "run.json"
    if not manifest_path.is_file():
        return "not a complete `make reproduce` run (no run.json)"
    try:
        manifest = json.loads(manifest_path.read_text())
        complete, notebooks = manifest.get("complete"), list(manifest.get("notebooks", []))
    except (OSError, ValueError, AttributeError, TypeError) as error:
        return f"run.json cannot be read ({type(error).__name__}: {str(error)[:80]}): rerun `make reproduce` for it"
    if not complete:
        return "run.json says the run is not complete"
    for name in notebooks:
        path = folder / "notebooks" / f"{name}.ipynb"
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return f"notebooks/{name}.ipynb, listed in run.json, cannot be read ({type(error).__name__})"
    for path in sorted(folder.glob("*.csv")):
        try:
            read_table_file(path)
        except (OSError, ValueError) as error:
            return f"{path.name} cannot be read ({type(error).__name__}: {str(error)[:80]})"
    ledger = _read(folder, "claims")
    if ledger is not None:
        if list(ledger.columns) != LEDGER_COLUMNS:
            return f"claims.csv has the columns {list(ledger.columns)}, not {LEDGER_COLUMNS}"
        whole = ledger.dropna(subset=["claim", "verdict"])
        missing = [claim.id for claim in CLAIMS if claim.id not in set(whole["claim"])]
        if missing:
            return f"claims.csv holds {len(CLAIMS) - len(missing)} of {len(CLAIMS)} claims (no verdict for {', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}): truncated or stale, rerun `make reproduce`"
    return None


def find_runs(results_root: Path) -> dict[str, Path]:
    """Return every whole published run under `results_root` (see `run_damage`), by name."""
    return (
        {folder.name: folder for folder in sorted(results_root.iterdir()) if _holds_tables(folder) and run_damage(folder) is None}
        if results_root.is_dir()
        else {}
    )


def left_out_runs(results_root: Path) -> dict[str, str]:
    """Return the folders with study tables that are not whole runs (failed, partial, hand-run, damaged), with the reason."""
    if not results_root.is_dir():
        return {}
    reasons = {folder.name: run_damage(folder) for folder in sorted(results_root.iterdir()) if _holds_tables(folder)}
    return {name: reason for name, reason in reasons.items() if reason}


def run_overview(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per run: its model, revision and how many positions (per seed) its tables rest on."""
    rows = []
    for run, folder in runs.items():
        card = read_table_file(folder / "model_card.csv").iloc[0] if (folder / "model_card.csv").is_file() else {}
        strata = read_table_file(folder / "sample_strata.csv") if (folder / "sample_strata.csv").is_file() else None
        positions = int(strata["total"].sum()) if strata is not None and "total" in strata else 0
        rows.append(dict(run=run, model=card.get("model_id", "?"), revision=card.get("revision", "?"), positions=positions))
    return pd.DataFrame(rows, columns=["run", "model", "revision", "positions"]).set_index("run")


def _dynamics_sections(runs: dict[str, Path]) -> list[str]:
    """One section per run that ran notebook 10: its revisions against training step (`dynamics_summary`)."""
    from .dynamics_report import dynamics_summary, read_dynamics_tables

    sections = []
    for run, folder in runs.items():
        tables = read_dynamics_tables(folder)
        if tables is not None:
            title = f"Training dynamics — `{run}` (notebook 10: the final model's positions at every revision)"
            sections.append(f"## {title}\n\n{markdown_table(dynamics_summary(tables), index=False)}\n")
    return sections


def write_summary(results_root: Path | None = None) -> Path:
    """Write `results/summary.md` from the runs found; return its path."""
    results_root = results_root or repo_root() / "results"
    runs = find_runs(results_root)
    left_out = left_out_runs(results_root)
    for name, reason in left_out.items():
        logger.warning("left out results/%s: %s", name, reason)
    sections = [
        "# Summary across runs\n",
        "Each table is read from `results/<run>/`; the write-up's numbers (docs/method.md §8) stand beside ours.\n",
        markdown_table(run_overview(runs), index=True) + "\n" if runs else "No complete run yet (run `make reproduce ARCH=…`).\n",
    ]
    if left_out:
        sections.append(
            "Left out (not whole `make reproduce` runs: failed, partial, damaged, or notebooks run by hand): "
            + "; ".join(f"`{name}` ({reason})" for name, reason in left_out.items())
            + ".\n"
        )
    for title, builder in (
        ("Table 1 — median ρ on the top eigenvector of F_k at small ε", table1),
        ("Table 2 — median ρ at ε = 1 nat by direction class", table2),
        ("Per-position Spearman of t_pred against t_emp (median [min, max] over positions)", spearman),
        ("Isotonic calibration — fraction of measurements within 50% of t_emp at ε = 1", calibration),
        ("Stratifiers — within-quintile variance of log ρ, relative to the best", stratifiers),
        ("Every predictor on one denominator — fraction within 50% of t_emp, all classes", predictors),
        ("Steering budget — |relative error| of the population budget against the exact search (notebook 11)", steering),
        ("The rank-one regime — near-binary positions and the top eigenvector's |cos| with w_b − w_a there", rank_one),
        ("Within 50% of t_emp at ε = 1 — raw closed form, best calibrator, quartic root", within50),
        ("Claims matrix — each claim's verdict per run (rules in `fisherlib.report.claims`, details in `results/<run>/claims.md`)", claims_matrix),
    ):
        sections.append(f"## {title}\n\n{markdown_table(builder(runs), index=True)}\n")
    sections += _dynamics_sections(runs)
    path = results_root / "summary.md"
    atomic_write_text(path, "\n".join(sections))
    logger.info("summary of %d run(s) written to %s", len(runs), path)
    return path


def story(run_dir: Path | str) -> str:
    """Return the README's story for one run, computed from its tables and claims ledger (Markdown).

    `python -c "from fisherlib.report.paper import story; print(story('results/tiny'))"` after `make reproduce`.
    Every number and verdict comes from `results/<run>/`: the model card, Table 1, the predictor
    comparison and the ledger.
    """
    from .claims import verdict_counts

    run_dir = Path(run_dir)
    ledger = run_ledger(run_dir)
    card = _read(run_dir, "model_card")
    table1 = _read(run_dir, "table1_top_eigvec")
    comparison = _read(run_dir, "predictor_comparison")
    topk = _read(run_dir, "rho_topk_vs_full")
    lines = [f"From `results/{run_dir.name}/`"]
    if card is not None:
        row = card.iloc[0]
        lines[0] += f" (V = {int(row['vocab'])}, d = {int(row['width'])})"
    lines[0] += f"; the claims ledger reads {verdict_counts(ledger)}."
    if table1 is not None:
        row = table1.iloc[-1]
        unit = f"{row['resampled']}s" if "resampled" in table1.columns else "positions"
        text = (
            f"Median ρ on the top eigenvector of F_k at ε = {row['eps']:g} is **{row['median_rho']:.3f}** "
            f"[{row['ci_lo']:.3f}, {row['ci_hi']:.3f}] (bootstrap over {unit})"
        )
        if topk is not None:
            at = topk[(topk["cls"] == "eigvec rank 1") & (topk["eps"] == row["eps"])]
            if len(at):
                text += f"; with the full F it is {at['median_rho_full'].iloc[0]:.3f}"
        lines.append(text + ".")
    if comparison is not None:
        eps = 1.0 if (comparison["eps"] == 1.0).any() else float(comparison["eps"].max())
        at = comparison[(comparison["cls"] == "all") & (comparison["eps"] == eps)].set_index("predictor")
        calibrators = at[at.index.str.startswith("iso_")]["within_50"]
        best = calibrators.idxmax()
        quartic, raw = at.loc["t_quartic"], at.loc["t_pred"]
        text = (
            f"At ε = {eps:g}, on the same {int(quartic['n'])} measurements, the fraction within 50% of t_emp is "
            f"{raw['within_50']:.1%} for the raw closed form, {calibrators.max():.1%} for the best cross-validated "
            f"isotonic calibrator ({best}) and **{quartic['within_50']:.1%}** for the quartic Taylor root "
            f"(which fell back to t_pred with the full F on {int(quartic['n_fallback'])} rows without a root)"
        )
        text += (
            ": an uncalibrated closed form beats a fitted calibrator."
            if quartic["within_50"] > calibrators.max()
            else ": the calibrator stays ahead of the closed forms."
        )
        lines.append(text)
    truncation = _truncation_sentence(run_dir, card)
    if truncation:
        lines.append(truncation)
    departures = _departures_sentence(ledger)
    if departures:
        lines.append(departures)
    if card is not None and card.iloc[0].get("layer_engine") == "full-context":
        lines.append(f"The layer study ran on the full-context engine: {card.iloc[0]['layer_engine_reason']}.")
    for notebook, reason in read_not_applicable(run_dir).items():
        lines.append(f"Notebook {notebook} does not apply to this run: {reason}.")
    newer = _newer_results(run_dir)
    steering = _steering_results(run_dir)
    columns = ["claim", "source", "verdict", "ours"] if "source" in ledger.columns else ["claim", "verdict", "ours"]
    table = markdown_table(ledger[columns])
    return "\n\n".join([" ".join(lines), *([newer] if newer else []), *([steering] if steering else []), table])


def _truncation_sentence(run_dir: Path, card: pd.DataFrame | None) -> str:
    """What keeping the top k tokens does to F here: F_k against the full F (notebook 02's comparison, notebook 04's ρ)."""
    comparison = _read(run_dir, "topk_vs_full_fisher")
    rho = _read(run_dir, "rho_topk_vs_full")
    if comparison is None or card is None:
        return ""
    parameters = json.loads((run_dir / "model_card.csv").read_text(encoding="utf-8").splitlines()[0].removeprefix("# parameters:"))
    stats = comparison.set_index("quantity")
    vocab = int(card.iloc[0]["vocab"])
    text = (
        f"Keeping the top {parameters['top_k']} of V = {vocab} tokens (F_k), the median position keeps "
        f"{stats.loc['trace_ratio', '50%']:.1%} of F's trace (10th percentile {stats.loc['trace_ratio', '10%']:.1%}) "
        f"and F's top eigenvalue to a median ratio of {stats.loc['top_eig_ratio', '50%']:.4f}, its top eigenvector at "
        f"|cos| {stats.loc['top_eig_cos', '50%']:.4f} (over {int(stats.loc['trace_ratio', 'count'])} positions)"
    )
    if rho is not None and "truncation_share" in rho.columns:
        at = rho[(rho["cls"] == "random") & (rho["eps"] == parameters["large_eps"])]
        if len(at):
            row = at.iloc[0]
            text += (
                f"; along random directions at ε = {row['eps']:g} the truncation moves median ρ from "
                f"{row['median_rho_full']:.3f} (F) to {row['median_rho']:.3f} (F_k)"
            )
    return text + "."


def _departures_sentence(ledger: pd.DataFrame) -> str:
    """Name the write-up's claims this run does not reproduce, with its own figure and the write-up's."""
    if "source" not in ledger.columns:
        return ""
    missed = ledger[(ledger["source"] == "write-up") & (ledger["verdict"] == "not reproduced")]
    if not len(missed):
        return "Every claim of the write-up that this run can test is reproduced at least in part."
    # A claim whose figure the write-up gives is shown beside it; an expectation it does not quantify by name only.
    quantified = missed[~missed["write_up"].astype(str).str.lower().str.startswith("not ")]
    unquantified = missed[missed["write_up"].astype(str).str.lower().str.startswith("not ")]
    parts = [f"{row.claim} (here: {row.ours}; write-up: {row.write_up})" for row in quantified.itertuples()]
    if len(unquantified):
        parts.append(f"and {', '.join(unquantified['claim'])}, which the write-up does not quantify")
    return "Where this run departs from the write-up: " + "; ".join(parts) + "."


def rank_one(runs: dict[str, Path]) -> pd.DataFrame:
    """The rank-one regime per run: the share of near-binary positions and the median |cos| of F_k's top eigenvector with w_b − w_a there."""

    def summary(table: pd.DataFrame) -> pd.Series:
        row = table.iloc[0]
        return pd.Series({"near-binary positions": f"{row['share_near_binary']:.1%} ({int(row['n_near_binary'])})",
                          "median cos there (absolute)": f"{row['median_cos_near_binary']:.3f}"})  # fmt: skip

    frame = pd.DataFrame(_per_run(runs, "rank_one_regime", summary))
    frame["write-up (3 archs)"] = "derived (rank-1 limit of F); no figure"
    return frame.fillna("—")


def within50(runs: dict[str, Path]) -> pd.DataFrame:
    """Within 50% of t_emp at ε = 1, all classes: the raw closed form, the best cross-validated calibrator, the quartic root."""

    def summary(table: pd.DataFrame) -> pd.Series:
        at = table[(table["cls"] == "all") & (table["eps"] == 1.0)].set_index("predictor")
        calibrated = at[at.index.str.startswith("iso_")]["within_50"]
        return pd.Series({"raw t_pred": f"{at.loc['t_pred', 'within_50']:.1%}", "best calibrator": f"{calibrated.max():.1%}",
                          "quartic root": f"{at.loc['t_quartic', 'within_50']:.1%}"})  # fmt: skip

    columns = _per_run(runs, "predictor_comparison", summary)
    for arch in WRITE_UP_ARCHS:
        ref = WRITE_UP[arch]["calibration"]
        columns[_write_up_header(arch)] = pd.Series(
            {"raw t_pred": f"{ref['raw']:.0%}", "best calibrator": f"{ref['calibrated_pooled']:.0%} (pooled)"}
        )
    return pd.DataFrame(columns).reindex(["raw t_pred", "best calibrator", "quartic root"]).fillna("—")


SIDE_BY_SIDE = (
    ("Table 1: median ρ on the top eigenvector of F_k at small ε", table1),
    ("Table 2: median ρ at ε = 1 by direction class", table2),
    ("Within 50% of t_emp at ε = 1 (all classes)", within50),
    ("Per-position Spearman of t_pred against t_emp (median [min, max])", spearman),
    ("The rank-one regime", rank_one),
)


def side_by_side(results_root: Path) -> str:
    """The runs under `results_root` beside the write-up's three models (Markdown): Table 1, Table 2, within 50%,
    Spearman, the rank-one regime."""
    runs = find_runs(Path(results_root))
    return "\n\n".join(f"**{title}**\n\n{markdown_table(builder(runs), index=True)}" for title, builder in SIDE_BY_SIDE)


def _steering_results(run_dir: Path) -> str:
    """Return the story's sentences on notebook 11 (the steering budget), if it ran."""
    summary = _read(run_dir, "steering_population_summary")
    accuracy = _read(run_dir, "steering_token_accuracy")
    natural = _read(run_dir, "steering_natural")
    sentences = []
    if summary is not None and len(summary):
        closed = summary[summary["method"] == "closed"]
        parts = [f"{100 * r.median_abs_rel_error:.1f}% (at most {100 * r.max_abs_rel_error:.1f}%) at ε = {r.eps:g}" for r in closed.itertuples()]
        cost = ""
        if "median_passes" in summary and (summary["method"] == "bisection").any():
            bisection = summary[summary["method"] == "bisection"]["median_passes"].median()
            cost = f", from one forward-mode pass per prompt against a median {bisection:.0f} text passes for the bisection baseline"
        population = _read(run_dir, "steering_population")
        quantile = f"the {population['quantile'].iloc[0]:g} quantile of" if population is not None and len(population) else "a quantile of"
        sentences.append(
            f"the closed-form population budget (the α at which {quantile} per-token KL reaches ε, every position steered) is, "
            f"at the median over the run's steering vectors and signs, within {', '.join(parts)} of the exact one{cost}"
        )
    if accuracy is not None and len(accuracy):
        steered = accuracy[(accuracy["mode"] == "all") & (accuracy["sign"] == "+")]
        parts = []
        for eps, part in steered.groupby("eps", sort=True):
            share = float((part["within_50"] * part["n"]).sum() / part["n"].sum())
            parts.append(f"{share:.1%} at ε = {eps:g}")
        sentences.append("per token the closed form is within 50% of the exact budget for " + ", ".join(parts))
    if natural is not None and "off_target_ratio" in natural:
        at = natural.set_index("direction")
        if "euclidean_gradient" in at.index:
            sentences.append(
                f"at equal target effect the Euclidean gradient spends {at.loc['euclidean_gradient', 'off_target_ratio']:.2f}× "
                f"the natural gradient's off-target KL (FishBack: 1.3–2.5×)"
            )
    return ("Steering (notebook 11): " + "; ".join(sentences) + ".") if sentences else ""


def steering(runs: dict[str, Path]) -> pd.DataFrame:
    """The steering budget per run: the closed form's and the quartic's error against the exact population budget."""

    def summarise(table: pd.DataFrame) -> pd.Series:
        rows = table[table["method"].isin(["closed", "quartic"])]
        return pd.Series({f"{r.method}, ε = {r.eps:g}": f"{100 * r.median_abs_rel_error:.1f}% (max {100 * r.max_abs_rel_error:.1f}%)"
                          for r in rows.itertuples()})  # fmt: skip

    frame = pd.DataFrame(_per_run(runs, "steering_population_summary", summarise))
    return frame.fillna("—") if len(frame) else pd.DataFrame({"note": ["no run wrote steering_population_summary yet"]})


def _inner_layers(run_dir: Path, name: str) -> pd.DataFrame | None:
    """Return table `name`'s rows at inner layers (the head left out, where a lens is the identity), or None if it has none."""
    table = _read(run_dir, name)
    if table is None or not len(table):
        return None
    inner = table[table["layer"].astype(str) != "head"]
    return inner if len(inner) else None


def _span(values: pd.Series, spec: str) -> str:
    """Return `"min–max"` of `values`, each end formatted with `spec` (e.g. `".1%"`)."""
    return f"{format(values.min(), spec)}–{format(values.max(), spec)}"


def _newer_results(run_dir: Path) -> str:
    """Return the story's sentences on the newer papers' results (power law, effective dimension, lens), if written."""
    from .claim_rules import EFF_DIM_SHARE, REL_SPECTRAL_LOW

    sentences = []
    power = _read(run_dir, "power_law_by_class")
    if power is not None and {"contrastive", "random"} <= set(power["cls"]):
        parts = []
        for band, part in power.groupby("band", sort=False):
            at = part.set_index("cls")
            parts.append(f"{at.loc['contrastive', 'median_p']:.2f} vs {at.loc['random', 'median_p']:.2f} at {band} ε")
        sentences.append("the local exponent of the divergence, p = Δlog ε / Δlog t_emp (Ferreira da Silva & Heimersheim), "
                         "is, for contrastive (token-pair) vs random directions, " + ", ".join(parts))  # fmt: skip
    layers = _read(run_dir, "layer_power_law")
    if layers is not None and "actdiff" in set(layers["cls"]):
        inner = layers[(layers["cls"] == "actdiff") & (layers["layer"].astype(str) != "head")]
        above = inner[(inner["ci_lo"] > 2) & (inner["median_p"] > 2.25)]
        if len(inner):
            sentences.append(f"at inner layers activation-difference directions have p above 2 in {len(above)} of "
                             f"{len(inner)} (layer, ε band) cells (median {inner['median_p'].median():.2f})")  # fmt: skip
    dimension = _read(run_dir, "layer_effective_dimension")
    if dimension is not None and len(dimension):
        share, rel = dimension["eff_rank_share"], dimension["rel_spectral"]
        sentences.append(
            f"the pulled-back metric G_ℓ has an effective dimension of {_span(share, '.1%')} of d over the "
            f"layers (FishBack: {EFF_DIM_SHARE[0]:.0%}–{EFF_DIM_SHARE[1]:.0%}) and differs from the identity by "
            f"{_span(rel, '.1%')} in relative spectral norm (FishBack: > {REL_SPECTRAL_LOW:.0%})"
        )
    inner = _inner_layers(run_dir, "jacobian_lens")
    if inner is not None:
        loss = inner["within_50_G"] - inner["within_50_lens"]
        sentences.append(
            f"one averaged Jacobian lens in place of the per-position pullback loses {_span(100 * loss, '.1f')} points of the "
            f"within-50% share at inner layers, its top eigenvector {_span(inner['median_angle_deg'], '.0f')}° from G_ℓ's"
        )
    inner = _inner_layers(run_dir, "jacobian_lens_table1")
    if inner is not None:
        sentences.append(
            f"along the lens's own top eigenvector at ε = {inner['eps'].iloc[0]:g} the lens's curvature gives a median ρ of "
            f"{_span(inner['median_rho_lens'], '.2f')} at inner layers, the true curvature "
            f"{_span(inner['median_rho_true'], '.3f')}"
        )
    return ("Newer results: " + "; ".join(sentences) + ".") if sentences else ""
