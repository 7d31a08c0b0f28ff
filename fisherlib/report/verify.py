"""Did a rerun reproduce a run? `make verify` compares its tables, claims and notebooks' text with a reference copy.

The reference is the committed version of the same run (`git archive HEAD results/<run>`) or any folder
holding one (`AGAINST=`). Another CPU rounds a float32 forward pass differently in its last bits, so no
floating-point number is compared by its bytes: every numeric cell is compared with the tolerance of its
kind of quantity (`TOLERANCES`, the one place they are written down, each with its reason), on top of one
unit in the last digit the table prints (`write_table` keeps
`fisherlib.io.tables.SIGNIFICANT_DIGITS` significant digits, and a value that sits on
a rounding edge flips that digit). Counts, row sets, column sets and the claims' verdicts must be identical.
Text (string cells, the published notebooks' outputs) must read the same once its numbers are set aside,
and those numbers are compared with the loosest relative tolerance. Figures are drawn from these tables
(`report.plots` reads nothing else), so their data is compared here and their bytes never are.

`compare_runs(current, reference)` returns a `Comparison`; `report()` gives its lines, the last one the
verdict (`reproduced: …` or `not reproduced: …`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.errors import FisherlibError
from ..io.tables import read_table_file


@dataclass(frozen=True)
class Tolerance:
    """How far one kind of quantity may move between two runs of the same code, seed and inputs."""

    kind: str
    pattern: str  # fullmatch against "table.column"
    rtol: float = 0.0
    atol: float = 0.0
    reason: str = ""

    def allows(self, a: float, b: float, unit: float) -> bool:
        return abs(a - b) <= max(self.rtol * max(abs(a), abs(b)), self.atol) + unit


# First match wins; integer columns are counts whatever their name (see `tolerance_for`).
TOLERANCES = (
    Tolerance(
        "machine check",
        r"boundary_check\..*|.*\..*_check_.*",
        atol=1e-4,
        reason="a check of machine arithmetic (the model's logits against W h + b, the boundary solver against a "
        "bisection) is rounding noise, different on every CPU; it only has to stay far below what it guards",
    ),
    Tolerance(
        "share",
        r".*\.(within_.*|share_.*|.*_share|hit_rate)",
        atol=5e-3,
        reason="a share of rows within a threshold (within 50%, near-binary) moves by 1/n when last-bit "
        "differences carry one row across the threshold",
    ),
    Tolerance(
        "resampled bound",
        r".*\.(ci_lo|ci_hi)(_.*)?|.*\.(seed_min|seed_max)",
        rtol=1e-2,
        reason="a bootstrap over the same seed draws the same resamples, but a bound is one order statistic "
        "of resampled medians, where two near-tied values can trade places",
    ),
    Tolerance(
        "fitted",
        r"calibration_.*|dynamics_predictors\..*|predictor_.*\..*|stratifier_.*|dynamics_stratifiers\..*",
        rtol=1e-2,
        atol=1e-6,
        reason="isotonic fits, cross-validated choices and cell assignments follow the order of their inputs, "
        "which last-bit differences can change at ties",
    ),
    Tolerance(
        "error against an exact answer",
        r".*\..*(rel_error|_mismatch)",
        rtol=1e-3,
        atol=1e-4,
        reason="a method's error against an exact answer (a bisection to 1e-4, a second computation of the same "
        "curvature): below 1e-4 it is the exact answer's own precision, which another CPU reaches by another path",
    ),
    Tolerance(
        "measured",
        r".*",
        rtol=1e-3,
        atol=1e-6,
        reason="a float32 forward pass on another CPU differs in its last bits (about 1e-6 relative); medians, "
        "ratios and first crossings carry that through, three orders of magnitude below 1e-3, while a "
        "changed model, parameter or bug moves them by percent",
    ),
)
COUNT = Tolerance("count", "", reason="a count (positions, rows, censored lines, jumps) is decided far from rounding noise: it must be equal")
# Numbers inside text (string cells, notebook outputs) carry no column: the loosest relative tolerance.
TEXT = Tolerance(
    "text",
    "",
    rtol=1e-2,
    atol=1e-4,
    reason="numbers inside sentences and displayed tables carry no column: the loosest relative tolerance and the "
    "errors' absolute one (the tables themselves are compared column by column)",
)
# The numbers in text: 1, -0.5, 1.2e-05, 3.1e+02 (a number glued to letters, as step504, is a number too).
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
TABLE_RULE = re.compile(r"-{2,}|={2,}")


def tolerances_markdown() -> str:
    """The tolerances as the README shows them: one row per kind of quantity, with its reason."""
    rows = ["| quantity | columns | allowed difference | why |", "|---|---|---|---|"]
    for tolerance in (COUNT, *TOLERANCES, TEXT):
        allowed = " or ".join(part for part in (f"{tolerance.rtol:g} relative" if tolerance.rtol else "",
                                                f"{tolerance.atol:g} absolute" if tolerance.atol else "") if part) or "none"  # fmt: skip
        columns = {"count": "integer columns", "text": "strings, notebook outputs"}.get(tolerance.kind, f"`{tolerance.pattern}`")
        rows.append(f"| {tolerance.kind} | {columns.replace('|', chr(92) + '|')} | {allowed} | {tolerance.reason} |")
    return "\n".join(rows)


def tolerance_for(table: str, column: str, integer: bool) -> Tolerance:
    """The tolerance of `table.column` (an integer column is a count)."""
    if integer:
        return COUNT
    key = f"{table}.{column}"
    return next(t for t in TOLERANCES if re.fullmatch(t.pattern, key))


def last_digit_unit(text: str) -> float:
    """One unit in the last digit `text` shows (`1.002` → 0.001, `4.8e-12` → 1e-13, `inf` → 0)."""
    match = re.fullmatch(r"[-+]?(\d*)\.?(\d*)(?:[eE]([-+]?\d+))?", text.strip())
    if not match or not (match.group(1) or match.group(2)):
        return 0.0
    return 10.0 ** (int(match.group(3) or 0) - len(match.group(2)))


@dataclass
class Moved:
    """The largest difference found in one table (or notebook), and whether anything went beyond tolerance."""

    name: str
    compared: int = 0
    largest: float = 0.0  # relative difference, over cells that moved by more than their absolute tolerance
    where: str = ""  # "median_rho at row 3 (cls=eigvec, eps=0.01)", "output 12"
    problems: list[str] = field(default_factory=list)
    noise: float = 0.0  # the largest absolute difference among cells within their absolute tolerance
    noise_where: str = ""

    def note(self, relative: float, where: str) -> None:
        if relative > self.largest:
            self.largest, self.where = relative, where

    def note_noise(self, absolute: float, where: str) -> None:
        if absolute > self.noise:
            self.noise, self.noise_where = absolute, where

    @property
    def place(self) -> str:
        """Where the largest difference sits, short: `table.column` or `notebook, output k`."""
        head = self.where.split(" at row ")[0]
        return f"{self.name}, {head}" if head.startswith("output") else f"{self.name}.{head}"


@dataclass
class Comparison:
    tables: list[Moved]
    notebooks: list[Moved]
    verdicts: tuple[int, int]  # (identical, compared)
    problems: list[str]  # files missing from this run, damaged files
    notes: list[str] = field(default_factory=list)  # what this run has beyond the reference

    @property
    def reproduced(self) -> bool:
        return not self.problems and all(not m.problems for m in self.tables + self.notebooks) and self.verdicts[0] == self.verdicts[1]

    def report(self) -> list[str]:
        """One line per table or notebook that moved, its problems beneath it; the verdict last."""
        lines = list(self.notes) + list(self.problems)
        for moved in self.tables + self.notebooks:
            if moved.largest > 0:
                lines.append(f"{moved.name}: {moved.compared} cells compared, largest relative difference {moved.largest:.1e} in {moved.where}")
            elif moved.noise > 0:
                lines.append(f"{moved.name}: {moved.compared} cells compared, only below the absolute tolerance "
                             f"(largest difference {moved.noise:.1e} in {moved.noise_where})")  # fmt: skip
            elif moved.problems:
                lines.append(f"{moved.name}: {moved.compared} cells compared")
            lines.extend(f"  {problem}" for problem in moved.problems)
        worst = max(self.tables + self.notebooks, key=lambda m: m.largest, default=None)
        largest = (
            f"largest relative difference {worst.largest:.1e} in {worst.place}"
            if worst and worst.largest
            else "no number moved beyond rounding noise"
        )
        failed_tables = [m.name for m in self.tables if m.problems]
        failed_notebooks = [m.name for m in self.notebooks if m.problems]
        tables = f"{len(self.tables) - len(failed_tables)} tables within tolerance"
        if failed_tables:
            tables += f", {len(failed_tables)} not ({', '.join(failed_tables)})"
        notebooks = f"{len(self.notebooks) - len(failed_notebooks)} notebooks' text within tolerance"
        if failed_notebooks:
            notebooks += f", {len(failed_notebooks)} not ({', '.join(failed_notebooks)})"
        verdicts = f"{self.verdicts[0]}/{self.verdicts[1]} verdicts identical"
        head = "reproduced" if self.reproduced else "not reproduced"
        extra = f", {len(self.problems)} file problem(s)" if self.problems else ""
        lines.append(f"{head}: {tables}, {verdicts}, {notebooks}{extra} ({largest})")
        return lines


def compare_runs(current: Path | str, reference: Path | str) -> Comparison:
    """Compare the run folder `current` (`results/<run>`) with `reference`, a copy of the same run."""
    current, reference = Path(current), Path(reference)
    for folder in (current, reference):
        if not folder.is_dir():
            raise FisherlibError(f"{folder} is not a run folder: run `make reproduce` first, or give AGAINST=<folder>")
    problems: list[str] = []
    ours, theirs = _tables(current), _tables(reference)
    problems += [f"table {name} is in {reference} but not in {current}" for name in sorted(set(theirs) - set(ours))]
    # A table the reference lacks (a notebook it did not publish) reproduces nothing and contradicts nothing: said, not failed.
    notes = [f"table {name} is new in this run (the reference has none): not compared" for name in sorted(set(ours) - set(theirs))]
    tables = [compare_table(name, ours[name], theirs[name]) for name in sorted(set(ours) & set(theirs))]
    verdicts = _compare_verdicts(current / "claims.csv", reference / "claims.csv", problems)
    problems += _compare_manifests(current / "run.json", reference / "run.json")
    notebooks = _compare_notebooks(current / "notebooks", reference / "notebooks", problems)
    return Comparison(tables, notebooks, verdicts, problems, notes)


@contextmanager
def committed_copy(run_dir: Path | str, revision: str = "HEAD") -> Iterator[Path]:
    """Yield a temporary folder holding `run_dir` as committed at `revision` (git archive)."""
    run_dir = Path(run_dir).resolve()
    try:
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=run_dir.parent, capture_output=True,
                                  text=True, check=True).stdout.strip())  # fmt: skip
        relative = run_dir.relative_to(top).as_posix()
        archive = subprocess.run(["git", "archive", "--format=tar", revision, relative], cwd=top, capture_output=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError, ValueError) as error:
        detail = getattr(error, "stderr", b"") or b""
        detail = detail.decode(errors="replace").strip() if isinstance(detail, bytes) else str(detail)
        raise FisherlibError(
            f"no committed copy of {run_dir} at {revision} ({detail or error}); give AGAINST=<folder> to compare with a copy"
        ) from None
    with tempfile.TemporaryDirectory(prefix="verify-") as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(scratch, filter="data")
        yield Path(scratch) / relative


def _tables(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.glob("*.csv"))}


def _raw(path: Path) -> list[list[str]]:
    """The CSV's cells as written (the digits a reader sees), without the parameters comment."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[1:] if rows and rows[0] and rows[0][0].startswith("#") else rows


def _row_label(frame: pd.DataFrame, row: int) -> str:
    keys = [c for c in frame.columns if c in ("eps", "layer", "step") or not pd.api.types.is_float_dtype(frame[c])][:4]
    values = ", ".join(f"{c}={frame[c].iloc[row]}" for c in keys if len(str(frame[c].iloc[row])) <= 40)
    return f"row {row + 1}" + (f" ({values})" if values else "")


def compare_table(name: str, current_path: Path, reference_path: Path) -> Moved:
    """Compare two copies of one table cell by cell, each with the tolerance of its kind of quantity."""
    moved = Moved(name)
    try:
        ours, theirs = read_table_file(current_path), read_table_file(reference_path)
        ours_raw, theirs_raw = _raw(current_path), _raw(reference_path)
    except (ValueError, OSError) as error:
        moved.problems.append(f"cannot be read: {error}")
        return moved
    if list(ours.columns) != list(theirs.columns):
        gone, new = [c for c in theirs.columns if c not in ours.columns], [c for c in ours.columns if c not in theirs.columns]
        moved.problems.append(f"different columns: {gone or 'none'} only in the reference, {new or 'none'} only in this run")
        return moved
    if len(ours) != len(theirs):
        moved.problems.append(f"different rows: {len(ours)} in this run, {len(theirs)} in the reference")
        return moved
    for j, column in enumerate(ours.columns):
        integer = pd.api.types.is_integer_dtype(ours[column]) and pd.api.types.is_integer_dtype(theirs[column])
        numeric = pd.api.types.is_numeric_dtype(ours[column]) and pd.api.types.is_numeric_dtype(theirs[column])
        tolerance = tolerance_for(name, str(column), integer) if numeric else TEXT
        for i in range(len(ours)):
            a_text, b_text = ours_raw[i + 1][j], theirs_raw[i + 1][j]
            moved.compared += 1
            if a_text == b_text:
                continue
            where = f"{column} at {_row_label(theirs, i)}"
            if numeric:
                _compare_number(moved, a_text, b_text, tolerance, where)
            else:
                _compare_text(moved, a_text, b_text, where)
    return moved


def _compare_number(moved: Moved, a_text: str, b_text: str, tolerance: Tolerance, where: str) -> None:
    try:
        a, b = float(a_text or "nan"), float(b_text or "nan")
    except ValueError:
        return _compare_text(moved, a_text, b_text, where)
    if (math.isnan(a) and math.isnan(b)) or a == b:
        return
    if not (math.isfinite(a) and math.isfinite(b)):
        moved.problems.append(f"{where}: {a_text} in this run, {b_text} in the reference")
        moved.note(math.inf, where)
        return
    relative = abs(a - b) / max(abs(a), abs(b))
    if abs(a - b) > tolerance.atol:
        moved.note(relative, where)
    else:
        moved.note_noise(abs(a - b), where)
    unit = 0.0 if tolerance is COUNT else max(last_digit_unit(a_text), last_digit_unit(b_text))
    if not tolerance.allows(a, b, unit):
        bound = "equal" if tolerance is COUNT else f"rtol {tolerance.rtol:g}, atol {tolerance.atol:g}"
        moved.problems.append(f"{where}: {a_text} in this run, {b_text} in the reference "
                              f"(relative difference {relative:.1e}; {tolerance.kind}: {bound})")  # fmt: skip


def _compare_text(moved: Moved, a_text: str, b_text: str, where: str) -> None:
    if a_text == b_text:
        return
    a_words, b_words = _skeleton(a_text), _skeleton(b_text)
    if a_words != b_words:
        moved.problems.append(f"{where}: the text differs: {_excerpt(a_text, b_text)}")
        moved.note(math.inf, where)
        return
    for a_number, b_number in zip(NUMBER.findall(a_text), NUMBER.findall(b_text)):
        _compare_number(moved, a_number, b_number, TEXT, where)


def _skeleton(text: str) -> list[str]:
    """The words of `text` with its numbers, its spacing and its table rules' widths set aside."""
    return TABLE_RULE.sub("-", NUMBER.sub("#", text)).split()


def _excerpt(a: str, b: str, width: int = 60) -> str:
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, start - 20)
    return f"{a[start : start + width]!r} in this run, {b[start : start + width]!r} in the reference"


def _compare_verdicts(current: Path, reference: Path, problems: list[str]) -> tuple[int, int]:
    if not reference.is_file():
        return (0, 0)
    if not current.is_file():
        return (0, len(read_table_file(reference)))
    ours = read_table_file(current).set_index("claim")["verdict"]
    theirs = read_table_file(reference).set_index("claim")["verdict"]
    same = 0
    for claim, verdict in theirs.items():
        if claim not in ours.index:
            problems.append(f"claim {claim}: {verdict!r} in the reference, missing from this run")
        elif ours[claim] != verdict:
            problems.append(f"claim {claim}: the verdict is {ours[claim]!r} in this run, {verdict!r} in the reference")
        else:
            same += 1
    return same, len(theirs)


def _compare_manifests(current: Path, reference: Path) -> list[str]:
    problems = []
    manifests = []
    for path in (current, reference):
        try:
            manifests.append(json.loads(path.read_text()) if path.is_file() else None)
        except (ValueError, OSError) as error:
            problems.append(f"{path} cannot be read ({error})")
            manifests.append(None)
    ours, theirs = manifests
    if theirs and not ours:
        problems.append(f"{current} is missing or unreadable: the run did not publish")
    elif ours and theirs:
        if not ours.get("complete"):
            problems.append(f"{current} says the run is not complete")
        missing = sorted(set(theirs.get("notebooks", [])) - set(ours.get("notebooks", [])))
        if missing:
            problems.append(f"the reference published notebooks this run did not: {', '.join(missing)}")
    return problems


def _notebook_texts(path: Path) -> list[str]:
    """Every output's text of a published notebook, one string per output (figures are links, compared as text)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    texts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]) if isinstance(output["text"], list) else output["text"])
            for mime in ("text/plain", "text/markdown"):
                value = output.get("data", {}).get(mime)
                if value is not None:
                    texts.append("".join(value) if isinstance(value, list) else value)
            if output.get("output_type") == "error":
                texts.append(f"{output.get('ename')}: {output.get('evalue')}")
    return texts


def compare_notebook(current: Path, reference: Path) -> Moved:
    """Compare the outputs of two published copies of one notebook: the same words, numbers within `TEXT`."""
    moved = Moved(reference.stem)
    a_texts, b_texts = _notebook_texts(current), _notebook_texts(reference)
    if len(a_texts) != len(b_texts):
        moved.problems.append(f"{len(a_texts)} outputs in this run, {len(b_texts)} in the reference")
    for k, (a, b) in enumerate(zip(a_texts, b_texts)):
        moved.compared += len(NUMBER.findall(b)) or 1
        _compare_text(moved, a, b, f"output {k + 1}")
    return moved


def _compare_notebooks(current: Path, reference: Path, problems: list[str]) -> list[Moved]:
    if not reference.is_dir():
        return []
    compared = []
    for path in sorted(reference.glob("*.ipynb")):
        if (current / path.name).is_file():
            compared.append(compare_notebook(current / path.name, path))
        else:
            problems.append(f"notebook {path.stem} is in the reference but not in this run")
    return compared
