"""Rewrite the `parameters` cell of every notebook from `StudyParams` (run after adding a parameter).

Usage: python tools/sync_parameters.py   (from the repository root)
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from fisherlib.run.params import parameters_cell_source

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    source = parameters_cell_source()
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
        if len(cells) != 1:
            raise SystemExit(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
        if cells[0].source != source:
            cells[0].source = source
            nbformat.write(notebook, path)
            print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
