"""Where a notebook's outputs go: tables (CSV and Markdown) and figures (PNG and PDF) recording their parameters.

Tables are written and read through `fisherlib.io.tables`; this module adds where they go
(`results/<run>/`, `figures/<run>/`) and the parameters line each records.
"""

from __future__ import annotations

import fcntl
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..io.atomic import atomic_path, atomic_write_text
from ..io.tables import TABLE_FLOAT_FORMAT, read_table_file, write_table
from ..report.claims import evaluate_claims, ledger_markdown, read_not_applicable, read_tables
from .params import OUTPUT_LOCATION_FIELDS, StudyParams

logger = logging.getLogger("fisherlib")


def _params_comment(params: StudyParams) -> str:
    recorded = {k: v for k, v in params.as_dict().items() if k not in OUTPUT_LOCATION_FIELDS}
    return json.dumps(recorded, sort_keys=True)


def save_table(df: pd.DataFrame, name: str, params: StudyParams, caption: str = "", float_format: str = TABLE_FLOAT_FORMAT) -> Path:
    """Write `df` as `results/<run>/<name>.csv` and `.md`; both record the parameters. Return the CSV path.

    Tables hold no NaN: a missing value is a bug upstream (censored measurements are `inf` or flagged).
    """
    return write_table(df, params.results_dir / f"{name}.csv", _params_comment(params), caption, float_format)


def read_table(name: str, params: StudyParams) -> pd.DataFrame:
    """Read back a table written by `save_table`."""
    return read_table_file(params.results_dir / f"{name}.csv")


def save_figure(fig, name: str, params: StudyParams) -> Path:
    """Write `fig` as `figures/<run>/<name>.png` and `.pdf` with the parameters in their metadata."""
    png = params.figures_dir / f"{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    description = _params_comment(params)
    for path, metadata in (
        (png, {"Description": description, "Software": None}),
        (png.with_suffix(".pdf"), {"Subject": description, "Creator": None, "Producer": None, "CreationDate": None}),
    ):
        with atomic_path(path) as partial:
            fig.savefig(partial, dpi=150, bbox_inches="tight", metadata=metadata)
    logger.info("figure %s written to %s (.png, .pdf)", name, png.with_suffix(""))
    return png


def set_style() -> None:
    """Apply the figures' seaborn style."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


# --- the claims ledger ---------------------------------------------------------------------------


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".claims.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_ledger(params) -> pd.DataFrame:
    """Evaluate every claim on the run's saved tables and write `results/<run>/claims.csv` and `.md`.

    Each notebook calls this after writing its tables (under a lock, since `make -j` runs 04–07 side by
    side): the ledger always reflects every table on disk, claims whose tables are not yet written
    being `not testable`. Returns the ledger.
    """
    path = params.results_dir / "claims.csv"
    with _locked(path):
        ledger = evaluate_claims(read_tables(params.results_dir), arch=params.arch, not_applicable=read_not_applicable(params.results_dir))
        save_table(ledger, "claims", params, caption=f"Claims ledger of run {params.name}")
        markdown = ledger_markdown(ledger, f"Claims ledger of run {params.name}")
        md_path = path.with_suffix(".md")
        comment = md_path.read_text().rsplit("<!--", 1)[-1] if md_path.is_file() else ""
        atomic_write_text(md_path, markdown + (f"\n<!--{comment}" if comment else ""))
    return ledger
