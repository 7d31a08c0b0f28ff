"""Tables on disk: a CSV and its Markdown twin, each carrying one comment line that says what made them.

`write_table` refuses NaN (a censored measurement is `inf` or flagged, never missing) and writes both
files atomically; `read_table_file` reads a CSV back, skipping only its comment line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_text

logger = logging.getLogger("fisherlib")

# The significant digits every table keeps; a sentence that quotes a table number shows as many (`SIG`).
SIGNIFICANT_DIGITS = 4
TABLE_FLOAT_FORMAT = f"%.{SIGNIFICANT_DIGITS}g"  # printf style, as `DataFrame.to_csv` takes it
SIG = f".{SIGNIFICANT_DIGITS}g"  # a format spec: f"{x:{SIG}}"


def write_table(df: pd.DataFrame, csv_path: Path, comment: str, caption: str = "", float_format: str = TABLE_FLOAT_FORMAT) -> Path:
    """Write `df` as `csv_path` and its `.md` twin, both recording `comment` (one line). Return `csv_path`."""
    if df.select_dtypes("number").isna().any().any():
        raise ValueError(f"table {Path(csv_path).stem!r} holds NaN; censored values must be inf or flagged, not NaN")
    csv_path = Path(csv_path)
    body = df.to_csv(index=False, float_format=float_format, lineterminator="\n")
    atomic_write_text(csv_path, f"# parameters: {comment}\n" + body)
    markdown = df.to_markdown(index=False, floatfmt=float_format.replace("%", ""))
    header = f"**{caption}**\n\n" if caption else ""
    atomic_write_text(csv_path.with_suffix(".md"), f"{header}{markdown}\n\n<!-- parameters: {comment} -->\n")
    logger.info("table %s written to %s (.csv, .md)", csv_path.stem, csv_path.with_suffix(""))
    return csv_path


def read_table_file(path: Path | str) -> pd.DataFrame:
    """Read a CSV written by `write_table`: its first line is the parameters comment.

    Only that line is skipped (not `comment="#"`): a cell may hold a `#`, as stdlib-docs' `function#2`.
    """
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    return pd.read_csv(path, skiprows=1 if first.startswith("#") else 0)
