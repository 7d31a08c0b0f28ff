"""The README's and the results page's numbers, computed from saved tables: `make readme` writes them between markers.

Every number the README and `docs/results.md` state about a run comes from here. The README holds the
headline (`readme_results`: the first paragraph of `paper.story` and the claims by verdict) and the table of
published runs (`runs_block`); `docs/results.md` holds the whole story of the embedded run
(`results_page_block`: the story with the claims ledger, then notebook 06's predictor comparison, notebook 08's,
09's and 10's findings, the functions those notebooks display applied to the tables they saved) and every
complete run beside the write-up's models (`side_by_side_block`). Prose is wrapped to short lines and a long
cell of the ledger becomes a list, so no generated line is wider than a screen. `tests/report/test_readme.py`
checks that both files hold exactly these blocks for the committed `results/`, so they cannot drift from the
runs they describe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io.tables import read_table_file
from .paper import story

BEGIN = "<!-- results:begin (make readme writes this block from results/{run}/: edit fisherlib/report/readme.py, not the text) -->"
END = "<!-- results:end -->"
FULL_BEGIN = "<!-- results-full:begin (make readme writes this block from results/{run}/: edit fisherlib/report/readme.py, not the text) -->"
FULL_END = "<!-- results-full:end -->"
SIDE_BEGIN = "<!-- side-by-side:begin (make readme writes this block from every complete run in results/) -->"
SIDE_END = "<!-- side-by-side:end -->"
RUNS_BEGIN = "<!-- runs:begin (make readme writes this block from every complete run in results/) -->"
RUNS_END = "<!-- runs:end -->"
RESULTS_PAGE = Path("docs") / "results.md"  # beside the README: the whole story and the side-by-side tables
WIDTH = 110  # generated prose is wrapped to this many characters
_LONG_CELL = 160  # a ledger cell longer than this is listed item by item


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


def _risky(word: str) -> bool:
    """Whether `word` at the start of a continuation line could be read as Markdown structure.

    A list marker (`-`, `+`, `*`, `1.`, `1)`), a heading (`#`), a quote (`>`), a rule or setext underline
    (`---`, `===`), a fence, HTML or a table pipe.
    """
    head = word.rstrip(".)")
    return (set(word) <= set("-+*#=_") and word != "") or word.startswith((">", "|", "<", "```", "~~~")) or (head.isdigit() and head != word)


def _wrap_line(line: str, width: int) -> list[str]:
    """Wrap one paragraph or list-item line at spaces; the rendered Markdown is unchanged."""
    indent = ""
    body = line
    for marker in ("- ", "* "):
        stripped = line.lstrip(" ")
        if stripped.startswith(marker):
            indent = " " * (len(line) - len(stripped) + len(marker))
            break
    first, *words = body.split(" ")
    # Leading spaces and the list marker stay glued to the first word.
    lines, current = [], first
    for word in words:
        if current and len(current) + 1 + len(word) > width and not _risky(word) and current.strip():
            lines.append(current)
            current = indent + word
        else:
            current = f"{current} {word}"
    lines.append(current)
    return lines


def wrap_markdown(text: str, width: int = WIDTH) -> str:
    """Wrap the prose of `text` (paragraphs and list items) to `width`; tables, headings and code stay as they are."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or len(line) <= width or line.lstrip().startswith(("|", "#", "<!--", "```")):
            out.append(line)
        else:
            out.extend(_wrap_line(line, width))
    return "\n".join(out)


def _story_parts(run_dir: Path) -> list[str]:
    """`paper.story`'s paragraphs without its ledger table (the results page lists the ledger itself)."""
    return [part for part in story(run_dir).split("\n\n") if not part.startswith("|")]


def ledger_list(run_dir: Path) -> str:
    """The claims ledger as a list: one item per claim (source and verdict), our figures under it.

    A cell of several results (one per layer, band or class, separated by "; ") becomes a sub-list, so no line
    of the page is a table row thousands of characters wide.
    """
    from .paper import run_ledger

    ledger = run_ledger(Path(run_dir))
    items = []
    for row in ledger.to_dict("records"):
        source = "" if "source" not in row else ", from the write-up" if row["source"] == "write-up" else f", from {row['source']}"
        ours = str(row["ours"])
        if len(ours) > _LONG_CELL and "; " in ours:
            items.append(f"- **{row['claim']}**{source}: {row['verdict']}.")
            items.extend(f"  - {part}" for part in ours.split("; "))
        else:
            items.append(f"- **{row['claim']}**{source}: {row['verdict']}; ours: {ours}")
    return "**The claims ledger** (`results/" + Path(run_dir).name + "/claims.md` holds each statement and rule):\n\n" + "\n".join(items)


def verdict_lists(run_dir: Path) -> str:
    """One short sentence naming the claims of each verdict."""
    from .paper import run_ledger

    ledger = run_ledger(Path(run_dir))
    order = ["reproduced", "partly", "not reproduced", "not testable"]
    verdicts = sorted(ledger["verdict"].unique(), key=lambda v: order.index(v) if v in order else len(order))
    parts = [f"{verdict}: " + ", ".join(f"`{claim}`" for claim in ledger.loc[ledger["verdict"] == verdict, "claim"]) for verdict in verdicts]
    return "The claims by verdict (each with its figures in [docs/results.md](docs/results.md)): " + "; ".join(parts) + "."


def readme_results(run_dir: Path | str) -> str:
    """Return the README's headline block for `run_dir` (Markdown, between `BEGIN` and `END`).

    The first paragraph of `paper.story` (Table 1, the ε = 1 predictors, the truncation, the departures
    from the write-up) and the claims by verdict; the whole story is `results_page_block`'s.
    """
    run_dir = Path(run_dir)
    body = wrap_markdown("\n\n".join([_story_parts(run_dir)[0], verdict_lists(run_dir)]))
    return f"{BEGIN.format(run=run_dir.name)}\n\n{body}\n\n{END}"


def results_page_block(run_dir: Path | str) -> str:
    """Return `docs/results.md`'s block for `run_dir`: the whole story, the ledger and every notebook's findings."""
    run_dir = Path(run_dir)
    parameters = run_parameters(run_dir)
    sections = [
        *_story_parts(run_dir),
        ledger_list(run_dir),
        predictor_section(run_dir, parameters["large_eps"]),
        layer_section(run_dir, parameters["small_eps"], parameters["large_eps"]),
        plateau_section(run_dir, parameters),
        dynamics_section(run_dir),
    ]
    body = wrap_markdown("\n\n".join(section for section in sections if section))
    return f"{FULL_BEGIN.format(run=run_dir.name)}\n\n{body}\n\n{FULL_END}"


def side_by_side_block(results_root: Path) -> str:
    """The block of every complete run under `results_root` beside the write-up's models."""
    from .paper import side_by_side

    return f"{SIDE_BEGIN}\n\n{side_by_side(results_root)}\n\n{SIDE_END}"


def _numbers(names) -> str:
    """Notebook names as spans of their numbers: 01_a, 02_b, 03_c, 05_d -> "01–03, 05"."""
    numbers = sorted(int(name.split("_", 1)[0]) for name in names)
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a:02d}" if a == b else f"{a:02d}–{b:02d}" for a, b in spans) or "—"


def runs_block(results_root: Path) -> str:
    """The table of every complete run under `results_root`: its model, size, positions and notebooks."""
    from .paper import find_runs

    rows = []
    for name, folder in find_runs(Path(results_root)).items():
        card = read_table_file(folder / "model_card.csv").iloc[0]
        record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        skipped = record.get("not_applicable", {})
        published = [notebook for notebook in record.get("notebooks", []) if notebook not in skipped]
        model = card.get("origin") if isinstance(card.get("origin"), str) else card["model_id"]
        rows.append({
            "run": f"`{name}`", "model": model, "V": f"{int(card['vocab']):,}", "d": str(int(card["width"])),
            "positions": str(run_parameters(folder)["n_positions"]), "notebooks published": _numbers(published),
            "does not apply": _numbers(skipped), "last run": _timing(folder, published),
        })  # fmt: skip
    table = _markdown(pd.DataFrame(rows)) if rows else "(no complete run yet)"
    return f"{RUNS_BEGIN}\n\n{table}\n\n{RUNS_END}"


def _timing(folder: Path, published: list[str]) -> str:
    """The run's last wall time, total and per notebook in minutes, from `timings.json` (`tools/runs.py` records it)."""
    try:
        record = json.loads((folder / "timings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "not recorded"
    seconds = {stem: s for stem, s in record.get("seconds", {}).items() if stem in published}
    if not seconds:
        return "not recorded"
    each = ", ".join(f"{stem[:2]} {s / 60:.1f}" for stem, s in sorted(seconds.items()))
    return f"{sum(seconds.values()) / 60:.0f} min on {record.get('machine', 'an unrecorded machine')} ({each})"


def _blocks(run_dir: Path) -> list[tuple[str, str, object]]:
    """Every generated block: its markers and what writes it."""
    root = run_dir.parent
    return [
        (BEGIN.format(run=run_dir.name), END, lambda: readme_results(run_dir)),
        (FULL_BEGIN.format(run=run_dir.name), FULL_END, lambda: results_page_block(run_dir)),
        (SIDE_BEGIN, SIDE_END, lambda: side_by_side_block(root)),
        (RUNS_BEGIN, RUNS_END, lambda: runs_block(root)),
    ]


def _rewrite(path: Path, run_dir: Path) -> bool:
    """Replace every generated block `path` holds; return whether the file changed."""
    from ..io.atomic import atomic_write_text

    text = Path(path).read_text(encoding="utf-8")
    updated = text
    for begin, end, write in _blocks(run_dir):
        if begin in updated and end in updated:
            head, rest = updated.split(begin, 1)
            _, tail = rest.split(end, 1)
            updated = head + write() + tail
    if updated != text:
        atomic_write_text(Path(path), updated)
    return updated != text


def write_readme(readme: Path, run_dir: Path | str) -> bool:
    """Rewrite the README's generated blocks from `run_dir` (and the results page beside it); return whether a file changed.

    The README must hold the headline block (`BEGIN` … `END`); `docs/results.md` next to it, where it exists, gets
    the whole story and the side-by-side tables.
    """
    run_dir = Path(run_dir)
    text = Path(readme).read_text(encoding="utf-8")
    begin = BEGIN.format(run=run_dir.name)
    if begin not in text or END not in text:
        raise ValueError(f"{readme} has no results block: put the lines\n{begin}\n{END}\nwhere it goes")
    changed = _rewrite(Path(readme), run_dir)
    page = Path(readme).parent / RESULTS_PAGE
    if page.is_file():
        changed = _rewrite(page, run_dir) or changed
    return changed
