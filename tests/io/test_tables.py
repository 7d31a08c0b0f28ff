"""Tables and the sentences that quote them share one number of significant digits, written once."""

import re
from pathlib import Path

import pandas as pd

from fisherlib.io.tables import SIG, SIGNIFICANT_DIGITS, TABLE_FLOAT_FORMAT, read_table_file, write_table

PACKAGE = Path(__file__).resolve().parents[2] / "fisherlib"


def test_the_significant_digits_are_written_once():
    assert TABLE_FLOAT_FORMAT == f"%.{SIGNIFICANT_DIGITS}g" and SIG == f".{SIGNIFICANT_DIGITS}g"
    spelled = re.compile(rf"%\.{SIGNIFICANT_DIGITS}g|:\.{SIGNIFICANT_DIGITS}g\}}")  # the tables' digits spelled out (printf or f-string)
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "tables.py" or path.parent.name != "io"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spelled.search(line)
    ]
    assert not offenders, f"significant digits spelled out instead of fisherlib.io.tables.SIG / TABLE_FLOAT_FORMAT: {offenders}"


def test_a_table_keeps_that_many_digits_and_a_sentence_quotes_the_same(tmp_path):
    value = 1.23456789
    path = write_table(pd.DataFrame({"x": [value]}), tmp_path / "t.csv", "{}")
    assert read_table_file(path)["x"].iloc[0] == float(f"{value:{SIG}}") == 1.235
