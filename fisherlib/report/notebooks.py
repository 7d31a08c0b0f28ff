"""The executed notebooks a reader opens: byte-stable copies of a run's notebooks for `results/<run>/notebooks/`.

`publishable(nb, replacements, figure_link)` turns a notebook executed by papermill into one that an
unchanged rerun rewrites byte for byte, and that renders on a code host without the run:

- **volatile metadata goes**: papermill's timings and temporary output path, each cell's `execution`
  timestamps and papermill timings, the widget state (progress bars with their rates), and the random id
  papermill gives the injected-parameters cell (it becomes `injected-parameters`). The injected cell itself
  stays: it says what the run was asked. Execution counts stay (papermill numbers the cells in order).
- **absolute paths go**: every `(prefix, replacement)` of `replacements` is applied to all output text, so
  `/…/runs/tiny/staged/results/tiny` reads `results/tiny` (where `publish` put the tables) and the
  repository's own path disappears.
- **what depends on the cache or the checkout, not the result, goes**: progress-bar widgets, the log lines
  saying a measurement was loaded from, or written to, the cache, and the git commit a cached sample's
  manifest records (written `<commit>`: a notebook cannot hold the commit it is committed in).
- **stream outputs keep a fixed order**: the kernel flushes stdout and stderr on its own timer, so between
  two rich outputs a cell's printed text comes first and its log lines (stderr) after, each merged.
- **figures are linked, not embedded**: a figure a cell saved with `save_figure` (its log line names it) and
  displayed is replaced by a Markdown link to the committed PNG, `figure_link(name)`; the PNG written at
  150 dpi is what a reader sees, and the notebooks stay a few hundred kB. A displayed image no log line
  names stays embedded.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

import nbformat

FORMAT_VERSION = 4
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
INJECTED = "injected-parameters"
# papermill's notebook metadata that is the same on every rerun; the rest is timings and a temporary path.
PAPERMILL_KEPT = ("default_parameters", "environment_variables", "exception", "input_path", "parameters")
FIGURE_LINE = re.compile(r"INFO fisherlib: figure (\S+) written to ")
# Cache traffic: the same result says "read from …/cache/…" on a warm run and "computed and written to …/cache/…" on a cold one.
CACHE_LINE = re.compile(r"^INFO fisherlib: .*(loaded from cache|read from \S*cache/|written to \S*cache/)")
# (pattern, replacement) applied to every output text after the paths.
VOLATILE_TEXT = ((re.compile(r"""(['"]git_commit['"]: ['"])[0-9a-f]{7,40}(['"])"""), r"\1<commit>\2"),)
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")


def publishable(
    notebook: nbformat.NotebookNode, replacements: Iterable[tuple[str, str]] = (),
    figure_link: Callable[[str], str] | None = None,
) -> nbformat.NotebookNode:  # fmt: skip
    """Return a copy of the executed `notebook` without volatile metadata, absolute paths or embedded figures."""
    notebook = copy.deepcopy(notebook)
    replacements = sorted(((str(a), str(b)) for a, b in replacements if str(a)), key=lambda r: -len(r[0]))
    metadata = notebook.metadata
    metadata.pop("widgets", None)
    if "papermill" in metadata:
        metadata["papermill"] = {k: v for k, v in metadata["papermill"].items() if k in PAPERMILL_KEPT}
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if INJECTED in cell.metadata.get("tags", []):
            cell["id"] = INJECTED
        if cell.cell_type == "code":
            cell.outputs = _outputs(cell.outputs, replacements, figure_link)
    return notebook


def publishable_text(text: str, replacements: Iterable[tuple[str, str]] = (), figure_link: Callable[[str], str] | None = None) -> str:
    """Return `publishable` of the notebook JSON `text`, written the way nbformat writes (with a final newline)."""
    notebook = nbformat.reads(text, as_version=FORMAT_VERSION)
    return nbformat.writes(publishable(notebook, replacements, figure_link)) + "\n"


def _replace(text: str, replacements: list[tuple[str, str]]) -> str:
    for prefix, replacement in replacements:
        text = text.replace(prefix, replacement)
    for pattern, replacement in VOLATILE_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _outputs(outputs: list, replacements: list[tuple[str, str]], figure_link) -> list:
    figures = [m.group(1) for o in outputs if o.output_type == "stream" for m in FIGURE_LINE.finditer(o.text)]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    linked = figure_link is not None and len(figures) == len(images)
    kept: list = []
    streams: dict[str, list[str]] = {}

    def flush() -> None:
        for name in ("stdout", "stderr"):
            if streams.get(name):
                kept.append(nbformat.v4.new_output("stream", name=name, text="".join(streams[name])))
        streams.clear()

    for output in outputs:
        if output.output_type == "stream":
            lines = _replace(output.text, replacements).splitlines(keepends=True)
            streams.setdefault(output.name, []).extend(line for line in lines if not CACHE_LINE.match(line))
            continue
        data = output.get("data", {})
        if WIDGET_MIME in data:
            continue  # a progress bar: its text is the bar's first frame, its state the timings
        flush()
        if linked and "image/png" in data:
            name = figures.pop(0)
            kept.append(nbformat.v4.new_output(
                "display_data", data={"text/markdown": f"![{name}]({figure_link(name)})", "text/plain": f"[figure {name}]"},
            ))  # fmt: skip
            continue
        for mime in TEXT_MIMES:
            if mime in data:
                value = data[mime]
                data[mime] = _replace(value if isinstance(value, str) else "".join(value), replacements)
        if output.output_type == "error":
            output["traceback"] = [_replace(line, replacements) for line in output.traceback]
        kept.append(output)
    flush()
    return kept


def link_target(output: dict[str, Any]) -> str | None:
    """Return the path a figure-link output points to, or None for any other output."""
    match = re.fullmatch(r"!\[[^\]]+\]\(([^)]+)\)", output.get("data", {}).get("text/markdown", "") or "")
    return match.group(1) if match else None
