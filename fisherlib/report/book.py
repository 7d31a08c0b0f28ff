"""`make book`: a static website of every complete run, built from the stored outputs (nothing is executed).

The site is a Sphinx project with MyST-NB (the engine of Jupyter Book 1, from the Executable Books
project) and the Sphinx Book Theme; MathJax comes from the `sphinx-mathjax-offline` package, so the
site needs no network to build or to read. `build_book()` writes the project's sources to
`<out>/src/` and the site to `<out>/html/` (open `index.html`, or serve the folder from any static host):

- a landing page: what the study is, the runs, and the claims matrix across runs (`paper.claims_matrix`,
  the table `make paper` writes), with `make paper`'s whole summary as a page of its own;
- one section per complete run (`paper.find_runs`): its story (`paper.story`), parameters and model card,
  then its published notebooks (`results/<run>/notebooks/`, see `notebooks`) in order, each figure shown
  from the committed PNG its link names.

Sources are rewritten only when they change, so Sphinx rebuilds only the pages of a new or changed run.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd

from ..io.atomic import atomic_write_bytes
from ..io.locations import repo_root
from ..io.tables import read_table_file
from .claims import markdown_table
from .notebooks import FORMAT_VERSION, link_target
from .paper import claims_matrix, find_runs, run_overview, story, write_summary

logger = logging.getLogger("fisherlib")

NOTEBOOKS_FOLDER = "notebooks"
TITLE = "Fisher-information KL boundaries in transformer language models"
STUDY = r"""How far can the final residual stream of a transformer language model be pushed before its next-token
distribution changes? At a position with post-final-norm residual $h$, unembedding $W$ and next-token
distribution $p$, the distance along a unit direction $u$ at which $\mathrm{KL}(p \,\|\, p(h + t u))$ reaches
$\varepsilon$ is predicted in closed form by

$$t_{\mathrm{pred}}(u) = \sqrt{\frac{2\varepsilon}{u^\top F u}}, \qquad F = W^\top \big(\operatorname{diag} p - p p^\top\big) W,$$

the Fisher information pulled back through the unembedding. The study checks where that prediction is exact
(the top eigenvector of $F$ at small $\varepsilon$), where it is biased (other directions, large $\varepsilon$),
how isotonic calibration repairs the bias, and which property of a position predicts success. Each run below is
the study on one model: its notebooks, executed, are the write-up."""

CONF = """# Written by fisherlib.report.book (make book); edits are overwritten.
project = {title!r}
extensions = ["myst_nb", "sphinx.ext.mathjax", "sphinx-mathjax-offline"]
nb_execution_mode = "off"  # render the stored outputs; never execute
nb_render_markdown_format = "myst"  # the findings cells print Markdown with $math$
myst_enable_extensions = ["dollarmath", "amsmath"]
html_theme = "sphinx_book_theme"
html_title = {short!r}
html_theme_options = {{"show_toc_level": 2, "use_download_button": True, "navigation_with_keys": False}}
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_context = {{"default_mode": "light"}}  # the theme logs a console error without one
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure", "myst.header"]
exclude_patterns = []
"""


# Wider pages than the theme's reading width: the study's tables have up to twenty columns.
CSS = """.bd-page-width { max-width: 100%; }
.bd-main .bd-content .bd-article-container { max-width: 80em; }
div.cell_output table { font-size: 0.85em; }
"""


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def book_notebook(path: Path) -> nbformat.NotebookNode:
    """Return the published notebook `path` with each figure link replaced by the PNG it names, embedded."""
    notebook = nbformat.read(path, as_version=FORMAT_VERSION)
    for cell in notebook.cells:
        for index, output in enumerate(cell.get("outputs", [])):
            target = link_target(output)
            png = (path.parent / target).resolve() if target else None
            if png is not None and png.is_file():
                cell.outputs[index] = nbformat.v4.new_output(
                    "display_data",
                    data={"image/png": base64.b64encode(png.read_bytes()).decode(), "text/plain": output.data.get("text/plain", "")},
                )  # fmt: skip
    return notebook


def notebook_title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """Return the first Markdown heading of `notebook`, else `fallback`."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, flags=re.MULTILINE)
            if match:
                return match.group(1).strip()
    return fallback


def _parameters(folder: Path) -> dict | None:
    """Return the study parameters a run's tables record (the comment every table's .md ends with)."""
    for name in ("model_card", "sample_summary", "sample_strata"):
        path = folder / f"{name}.md"
        if path.is_file():
            match = re.search(r"<!-- parameters: (\{.*\}) -->", path.read_text(encoding="utf-8"))
            if match:
                return json.loads(match.group(1))
    return None


def _value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else ("" if value is None else str(value))
    return f"`{text}`" if text else "—"


def run_page(run: str, folder: Path, notebooks: list[tuple[str, str]]) -> str:
    """Return the Markdown of a run's section page: story, parameters, model card, then its notebooks."""
    lines = [f"# Run `{run}`\n"]
    try:
        lines.append(story(folder) + "\n")
    except Exception as error:  # noqa: BLE001 - a run missing a table still gets its page
        logger.warning("run %s: no story (%s)", run, error)
    parameters = _parameters(folder)
    if parameters:
        frame = pd.DataFrame({"parameter": list(parameters), "value": [_value(v) for v in parameters.values()]})
        lines += ["## Parameters\n", "The study parameters its tables were made with (`fisherlib.run.params.StudyParams`).\n",
                  markdown_table(frame) + "\n"]  # fmt: skip
    card = folder / "model_card.csv"
    if card.is_file():
        row = read_table_file(card).iloc[0]
        frame = pd.DataFrame({"field": list(row.index), "value": [_value(v) for v in row.values]})
        lines += ["## Model card\n", markdown_table(frame) + "\n"]
    lines.append("## Notebooks\n")
    if notebooks:
        lines += [f"{i}. [{title}]({name}.ipynb)" for i, (name, title) in enumerate(notebooks, 1)]
        lines += ["", "```{toctree}", ":hidden:", "", *[name for name, _ in notebooks], "```", ""]
    else:
        lines.append(f"This run published no notebooks (`results/{run}/{NOTEBOOKS_FOLDER}/` is empty): rerun `make reproduce` for it.\n")
    return "\n".join(lines)


def landing_page(runs: dict[str, Path]) -> str:
    """Return the Markdown of the landing page: the study, the runs, the claims matrix across runs."""
    lines = [f"# {TITLE}\n", STUDY + "\n", "## Runs\n"]
    if runs:
        overview = run_overview(runs).reset_index()
        overview["run"] = [f"[{run}]({run}/index.md)" for run in overview["run"]]
        lines.append(markdown_table(overview) + "\n")
        lines.append("## Claims matrix\n")
        lines.append("Each claim of the write-up, decided on each run by a written rule (`fisherlib.report.claims`); "
                     "the write-up's own figure beside. The full summary across runs is [a page of its own](summary.md).\n")  # fmt: skip
        lines.append(markdown_table(claims_matrix(runs).reset_index()) + "\n")
    else:
        lines.append("No complete run yet: `make reproduce` makes one, then `make book` again.\n")
    lines += ["```{toctree}", ":hidden:", ":maxdepth: 1", "", *[f"{run}/index" for run in runs], "summary", "```", ""]
    return "\n".join(lines)


def write_sources(results_root: Path, source: Path) -> dict[str, Path]:
    """Write the Sphinx project of every complete run under `results_root` to `source`; return the runs."""
    runs = find_runs(results_root)
    wanted: set[Path] = set()

    def put(relative: str, data: bytes) -> None:
        path = source / relative
        wanted.add(path)
        _write_if_changed(path, data)

    put("conf.py", CONF.format(title=TITLE, short="Fisher boundaries").encode())
    put("_static/book.css", CSS.encode())
    put("index.md", landing_page(runs).encode())
    summary = write_summary(results_root).read_text(encoding="utf-8") if runs else "# Summary across runs\n\nNo complete run yet.\n"
    put("summary.md", summary.encode())
    for run, folder in runs.items():
        notebooks = []
        for path in sorted((folder / NOTEBOOKS_FOLDER).glob("[0-9][0-9]_*.ipynb")):
            notebook = book_notebook(path)
            notebooks.append((path.stem, notebook_title(notebook, path.stem)))
            put(f"{run}/{path.name}", (nbformat.writes(notebook) + "\n").encode())
        put(f"{run}/index.md", run_page(run, folder, notebooks).encode())
    for path in sorted(source.rglob("*"), reverse=True):  # a run no longer complete leaves the book
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return runs


def build_book(results_root: Path | None = None, out: Path | None = None, quiet: bool = True) -> Path:
    """Build the site of every complete run under `results_root` into `out/html/`; return its `index.html`."""
    root = repo_root()
    results_root = Path(results_root or root / "results")
    out = Path(out or root / "build" / "book")
    source, html = out / "src", out / "html"
    runs = write_sources(results_root, source)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-d", str(out / "doctrees"), *(["-q"] if quiet else []),
               str(source), str(html)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sphinx failed ({done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    for line in done.stderr.splitlines():
        if "WARNING" in line or "ERROR" in line:
            logger.warning("sphinx: %s", line)
    logger.info("book of %d run(s) written to %s", len(runs), html / "index.html")
    return html / "index.html"
