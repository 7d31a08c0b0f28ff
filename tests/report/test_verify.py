"""`make verify`: a rerun is judged against a reference copy with a tolerance per kind of quantity, never by bytes."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fisherlib.report.verify import COUNT, TOLERANCES, committed_copy, compare_runs, last_digit_unit, tolerance_for, tolerances_markdown
from fisherlib.run.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "tiny"


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of the committed run: (this run, the reference)."""
    if not (COMMITTED / "run.json").is_file():
        pytest.skip("results/tiny is not committed")
    ignore = shutil.ignore_patterns("cache", "*.parquet")
    return shutil.copytree(COMMITTED, tmp_path / "current", ignore=ignore), shutil.copytree(COMMITTED, tmp_path / "reference", ignore=ignore)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _rows(path: Path) -> tuple[str, list[list[str]]]:
    comment, body = path.read_text(encoding="utf-8").split("\n", 1)
    return comment, list(csv.reader(io.StringIO(body)))


def _set_cell(path: Path, column: str, value, row: int = 0) -> str:
    """Write `value` into one cell of a committed table, as a hand edit would; return the old text."""
    comment, rows = _rows(path)
    j = rows[0].index(column)
    old, rows[1 + row][j] = rows[1 + row][j], str(value)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(comment + "\n" + buffer.getvalue(), encoding="utf-8")
    return old


def _cell(path: Path, column: str, row: int = 0) -> str:
    rows = _rows(path)[1]
    return rows[1 + row][rows[0].index(column)]


def test_an_identical_copy_is_reproduced_and_says_what_it_compared(runs):
    current, reference = runs
    comparison = compare_runs(current, reference)
    assert comparison.reproduced
    last = comparison.report()[-1]
    tables = len(list(reference.glob("*.csv")))
    verdicts = len(reference.joinpath("claims.csv").read_text().splitlines()) - 2
    assert last.startswith(f"reproduced: {tables} tables within tolerance, {verdicts}/{verdicts} verdicts identical")
    assert "no number moved" in last and len(comparison.report()) == 1


def test_a_number_edited_by_ten_percent_fails_naming_its_table(runs):
    current, reference = runs
    path = current / "table1_top_eigvec.csv"
    new = f"{float(_cell(path, 'median_rho')) * 1.1:.4g}"
    old = _set_cell(path, "median_rho", new)
    comparison = compare_runs(current, reference)
    assert not comparison.reproduced
    lines = comparison.report()
    assert lines[-1].startswith("not reproduced:") and "(table1_top_eigvec)" in lines[-1]
    assert any(line.startswith("table1_top_eigvec:") for line in lines)
    assert any("median_rho at row 1" in line and f"{new} in this run, {old} in the reference" in line for line in lines)


def test_a_rounding_flip_in_the_last_printed_digit_is_within_tolerance(runs):
    current, reference = runs
    path = current / "rho_by_eps.csv"
    old = _cell(path, "median_rho", row=3)
    digits = old.rstrip("0123456789")
    flipped = digits + str(int(old[len(digits) :]) + 1)
    _set_cell(path, "median_rho", flipped, row=3)
    comparison = compare_runs(current, reference)
    assert comparison.reproduced, comparison.report()
    assert comparison.report()[0].startswith("rho_by_eps: ") and "median_rho at row 4" in comparison.report()[0]


def test_a_count_must_be_equal(runs):
    current, reference = runs
    path = current / "rank_one_regime.csv"
    _set_cell(path, "n", _cell(path, "n"))  # rewritten unchanged (the interval's quotes and all)
    assert compare_runs(current, reference).reproduced
    _set_cell(path, "n", int(_cell(path, "n")) + 1)
    comparison = compare_runs(current, reference)
    assert not comparison.reproduced and "(rank_one_regime)" in comparison.report()[-1]
    assert any("count: equal" in line for line in comparison.report())


def test_a_changed_verdict_rows_or_columns_fail(runs):
    current, reference = runs
    _edit(current / "claims.csv", ",reproduced,", ",not reproduced,")
    comparison = compare_runs(current, reference)
    assert not comparison.reproduced
    identical, total = comparison.verdicts
    assert identical == total - 1 and f"{identical}/{total} verdicts identical" in comparison.report()[-1]
    assert any(line.startswith("claim ") and "'not reproduced' in this run" in line for line in comparison.report())

    shutil.copy2(reference / "claims.csv", current / "claims.csv")
    lines = (current / "layer_table1.csv").read_text().splitlines(keepends=True)
    (current / "layer_table1.csv").write_text("".join(lines[:-1]))
    assert any("different rows" in line for line in compare_runs(current, reference).report())

    shutil.copy2(reference / "layer_table1.csv", current / "layer_table1.csv")
    _edit(current / "layer_table1.csv", "median_rho,", "median_rho_renamed,")
    assert any("different columns" in line for line in compare_runs(current, reference).report())


def test_a_missing_table_or_an_incomplete_run_fails(runs):
    current, reference = runs
    (current / "layer_table1.csv").unlink()
    comparison = compare_runs(current, reference)
    assert not comparison.reproduced and any("layer_table1 is in" in line for line in comparison.report())
    # The other way round, a table the reference lacks (a notebook it did not publish) is said, not failed.
    shutil.copy2(reference / "layer_table1.csv", current / "layer_table1.csv")
    (reference / "layer_table1.csv").unlink()
    comparison = compare_runs(current, reference)
    assert comparison.reproduced and any("layer_table1 is new in this run" in line for line in comparison.report())
    shutil.copy2(current / "layer_table1.csv", reference / "layer_table1.csv")
    manifest = json.loads((current / "run.json").read_text())
    (current / "run.json").write_text(json.dumps(manifest | {"complete": False}))
    comparison = compare_runs(current, reference)
    assert not comparison.reproduced and any("not complete" in line for line in comparison.report())


def test_notebook_text_is_compared_by_its_words_and_numbers(runs):
    current, reference = runs
    notebook = current / "notebooks" / "04_closed_form_exactness.ipynb"
    text = notebook.read_text()
    numbers = re.findall(r"\b1\.00\d\b", text)
    assert numbers, "the notebook shows no ρ near 1"
    notebook.write_text(text.replace(numbers[0], numbers[0] + "1", 1))  # one more digit: 1.003 -> 1.0031
    assert compare_runs(current, reference).reproduced
    notebook.write_text(text.replace("reproduced", "refuted", 1) if "reproduced" in text else text.replace("median", "mean", 1))
    comparison = compare_runs(current, reference)
    assert not comparison.reproduced and "04_closed_form_exactness" in comparison.report()[-1]


def test_every_kind_of_quantity_has_its_reason_and_columns_find_their_kind():
    assert all(t.reason for t in TOLERANCES + (COUNT,))
    assert tolerance_for("model_card", "logits_check_max_abs_error", False).kind == "machine check"
    assert tolerance_for("table1_top_eigvec", "ci_lo", False).kind == "resampled bound"
    assert tolerance_for("calibration_within50", "within_50", False).kind == "share"
    assert tolerance_for("table1_top_eigvec", "median_rho", False).kind == "measured"
    assert tolerance_for("table1_top_eigvec", "n", True) is COUNT
    assert last_digit_unit("1.002") == pytest.approx(1e-3) and last_digit_unit("4.8e-12") == pytest.approx(1e-13)
    assert last_digit_unit("84") == 1 and last_digit_unit("inf") == 0


def test_the_committed_copy_comes_from_git_and_the_command_exits_by_the_verdict(tmp_path, capsys):
    repo = tmp_path / "repo"
    run = repo / "results" / "toy"
    run.mkdir(parents=True)
    (run / "t.csv").write_text("# parameters: {}\nx,n,median_rho\na,3,1.002\n")
    (run / "run.json").write_text(json.dumps({"run": "toy", "complete": True, "notebooks": []}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "run"], check=True)
    with committed_copy(run) as copy:
        assert (copy / "t.csv").read_text() == (run / "t.csv").read_text()
    assert main(["verify", "--results", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("reproduced: 1 tables within tolerance")
    (run / "t.csv").write_text("# parameters: {}\nx,n,median_rho\na,3,1.102\n")
    assert main(["verify", "--results", str(run)]) == 1
    out = capsys.readouterr().out
    assert "not reproduced" in out and "(t)" in out
    assert main(["verify", "--results", str(run), "--against", str(run)]) == 0
    assert main(["verify", "--results", str(tmp_path / "nothing")]) == 2
    assert "AGAINST" in capsys.readouterr().err


def test_the_docs_state_the_tolerances_the_code_applies():
    page = (ROOT / "docs" / "running.md").read_text(encoding="utf-8")
    block = page.split("<!-- tolerances:begin", 1)[1].split("-->", 1)[1].split("<!-- tolerances:end -->", 1)[0]
    assert block.strip() == tolerances_markdown().strip(), "docs/running.md's tolerance table is stale: paste tolerances_markdown()"
