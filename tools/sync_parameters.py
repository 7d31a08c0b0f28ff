"""Rewrite the `parameters` cell of every notebook from `StudyParams`: the run's identity and the parameters
that notebook reads (`fisherlib.run.parameter_docs.notebook_cell_names`). Run it after adding a parameter or
changing which parameters a notebook reads.

Usage: python tools/sync_parameters.py   (from the repository root)
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from fisherlib.run.parameter_docs import notebook_cell_source

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
        if len(cells) != 1:
            raise SystemExit(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
        source = notebook_cell_source(path)
        if cells[0].source != source:
            cells[0].source = source
            nbformat.write(notebook, path)
            print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
