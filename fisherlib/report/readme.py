"""The README's results for one run, computed from its saved tables: `make readme` writes them between markers.

Every number the README states about the embedded run comes from here: `paper.story` (the headline, the
newer papers' results, steering and the claims ledger), then notebook 06's predictor comparison, notebook
08's, 09's and 10's findings (the functions those notebooks display, applied to the tables they saved), and
the training-dynamics table. `tests/report/test_readme.py` checks that the README holds exactly this block for
the committed `results/tiny/`, so the README cannot drift from the run it describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io.tables import read_table_file
from .paper import story

BEGIN = "<!-- results:begin (make readme writes this block from results/{run}/: edit fisherlib/report/readme.py, not the text) -->"
END = "<!-- results:end -->"
SIDE_BEGIN = "<!-- side-by-side:begin (make readme writes this block from every complete run in results/) -->"
SIDE_END = "<!-- side-by-side:end -->"


def _markdown(frame: pd.DataFrame) -> str:
    # The cells are formatted already: tabulate must not parse "0.800" back into 0.8.
    return frame.to_markdown(index=False, disable_numparse=True)


def run_parameters(run_dir: Path) -> dict:
    """Return the parameters a run's tables were written with (the comment heading each CSV)."""
    first = (Path(run_dir) / "model_card.csv").read_text(encoding="utf-8").splitlines()[0]
    return json.loads(first.removeprefix("# parameters:").strip())


def _table(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = Path(run_dir) / f"{name}.csv"
    return read_table_file(path) if path.is_file() else None


def predictor_section(run_dir: Path, eps: float) -> str | None:
    """Notebook 06's predictor comparison at ε, on every non-control measurement."""
    comparison = _table(run_dir, "predictor_comparison")
    if comparison is None:
        return None
    at = comparison[(comparison["cls"] == "all") & (comparison["eps"] == eps)]
    rows = pd.DataFrame({
        "predictor": at["label"], "within 50% of t_emp": at["within_50"].map(lambda v: f"{v:.1%}"),
        "median abs. rel. error": at["median_abs_rel_error"].map(lambda v: f"{v:.3f}"),
    })  # fmt: skip
    n = int(at["n"].max())
    return f"**Every predictor on one denominator** (ε = {eps:g}, all {n:,} non-control measurements, `predictor_comparison`):\n\n{_markdown(rows)}"


def layer_section(run_dir: Path, small_eps: float, large_eps: float) -> str | None:
    """Notebook 08's findings, from its saved tables."""
    from .layer_findings import layer_findings

    names = ("layer_table1", "layer_rho_by_eps", "layer_spearman", "layer_exactness_frontier", "layer_nonmonotone")
    tables = [_table(run_dir, name) for name in names]
    if any(table is None for table in tables):
        return None
    return "**At every layer** (notebook 08, `G_ℓ = J_ℓᵀ F J_ℓ` pulled back to the residual stream entering each block):\n\n" + layer_findings(
        *tables, small_eps, large_eps
    )


def plateau_section(run_dir: Path, parameters: dict) -> str | None:
    """Notebook 09's findings, from its saved tables."""
    from ..steps import plateaus

    tables = [_table(run_dir, name) for name in ("plateau_statistics", "plateau_jump_hits", "plateau_fisher_length")]
    if any(table is None for table in tables):
        return None
    text = plateaus.plateau_findings(*tables, parameters["plateau_layer"], parameters["plateau_jump"], parameters["small_eps"])
    return f"**Janiak et al.'s plateaus** (notebook 09, {parameters['plateau_pairs']} prompt pairs along the straight path and the norm-preserving arc):\n\n{text}"


def dynamics_section(run_dir: Path) -> str | None:
    """Notebook 10's findings and its per-revision summary table."""
    from .dynamics_report import dynamics_findings, dynamics_summary, read_dynamics_tables

    tables = read_dynamics_tables(run_dir)
    if tables is None:
        return None
    summary = dynamics_summary(tables)
    shown = pd.DataFrame({
        "step": summary["step"].astype(int).astype(str),
        **({"held-out loss": summary["heldout_loss"].map(lambda v: f"{v:.2f}")} if "heldout_loss" in summary else {}),
        "median entropy": summary["median_entropy"].map(lambda v: f"{v:.2f}"),
        "median eff. rank": summary["median_eff_rank"].map(lambda v: f"{v:.1f}"),
        "near-binary": summary["share_near_binary"].map(lambda v: f"{v:.1%}"),
        "Table 1 ρ (F_k)": summary["table1_rho_topk"].map(lambda v: f"{v:.3f}"),
        "Table 1 ρ (F)": summary["table1_rho_full"].map(lambda v: f"{v:.3f}"),
        "within 50%: closed form / quartic": [f"{a:.1%} / {b:.1%}" for a, b in zip(summary["within50_closed_form"], summary["within50_quartic"])],
    })  # fmt: skip
    return f"**Over training** (notebook 10, `make dynamics`).\n\n{dynamics_findings(tables)}\n\n{_markdown(shown)}"


def readme_results(run_dir: Path | str) -> str:
    """Return the README's results block for `run_dir` (Markdown, between `BEGIN` and `END`)."""
    run_dir = Path(run_dir)
    parameters = run_parameters(run_dir)
    sections = [
        story(run_dir),
        predictor_section(run_dir, parameters["large_eps"]),
        layer_section(run_dir, parameters["small_eps"], parameters["large_eps"]),
        plateau_section(run_dir, parameters),
        dynamics_section(run_dir),
    ]
    body = "\n\n".join(section for section in sections if section)
    return f"{BEGIN.format(run=run_dir.name)}\n\n{body}\n\n{END}"


def side_by_side_block(results_root: Path) -> str:
    """The README's block of every complete run under `results_root` beside the write-up's models."""
    from .paper import side_by_side

    return f"{SIDE_BEGIN}\n\n{side_by_side(results_root)}\n\n{SIDE_END}"


def write_readme(readme: Path, run_dir: Path | str) -> bool:
    """Replace the results block of `readme` with `readme_results(run_dir)`; return whether the file changed."""
    from ..io.atomic import atomic_write_text

    text = Path(readme).read_text(encoding="utf-8")
    begin = BEGIN.format(run=Path(run_dir).name)
    if begin not in text or END not in text:
        raise ValueError(f"{readme} has no results block: put the lines\n{begin}\n{END}\nwhere it goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(END, 1)
    updated = head + readme_results(run_dir) + tail
    if SIDE_BEGIN in updated and SIDE_END in updated:  # the runs beside the write-up: every complete run
        head, rest = updated.split(SIDE_BEGIN, 1)
        _, tail = rest.split(SIDE_END, 1)
        updated = head + side_by_side_block(Path(run_dir).parent) + tail
    if updated != text:
        atomic_write_text(Path(readme), updated)
    return updated != text
