"""The README's results block is the committed run's tables, as `make readme` writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fisherlib.core.errors import FisherlibError
from fisherlib.report.paper import find_runs
from fisherlib.report.readme import BEGIN, END, readme_results, side_by_side_block, write_readme
from fisherlib.report.verify import committed_copy

ROOT = Path(__file__).resolve().parents[2]


def _results_blocks() -> list[str]:
    """The blocks `make readme` writes from results/tiny: as it is now, and as committed.

    A rerun of the study on another CPU rewrites the working copy's last digits (`make verify` judges
    those), not the README, so the committed tables' block is right too; outside a git checkout (an
    unpacked archive) the tables are the committed ones.
    """
    blocks = [readme_results(ROOT / "results" / "tiny")]
    try:
        with committed_copy(ROOT / "results" / "tiny") as committed:
            blocks.append(readme_results(committed))
    except FisherlibError:
        pass
    return blocks


def test_the_readme_holds_the_committed_run_s_results_verbatim():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = _results_blocks()
    assert any(block in text for block in blocks), "README.md's results block is stale: run `make readme` (it rewrites it from results/tiny/)"
    expected = blocks[0]
    # Every section of the run is there: nothing typed in between.
    for heading in ("From `results/tiny/`", "**Every predictor on one denominator**", "**At every layer**", "**Janiak et al.'s plateaus**", "**Over training**"):
        assert heading in expected


def test_the_readme_sets_every_published_run_beside_the_write_up():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [side_by_side_block(ROOT / "results")]
    try:
        with committed_copy(ROOT / "results") as committed:
            blocks.append(side_by_side_block(committed))
    except FisherlibError:
        pass
    assert any(block in text for block in blocks), "README.md's side-by-side block is stale: run `make readme`"
    for run in find_runs(ROOT / "results"):
        assert f"| {run} " in blocks[0] or f" {run} |" in blocks[0]
    assert "write-up Qwen3-1.7B" in blocks[0] and "**The rank-one regime**" in blocks[0]


def test_write_readme_replaces_only_the_block_and_refuses_a_file_without_one(tmp_path):
    run = ROOT / "results" / "tiny"
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{BEGIN.format(run='tiny')}\nold numbers\n{END}\n\nafter\n", encoding="utf-8")
    assert write_readme(readme, run)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old numbers" not in text
    assert not write_readme(readme, run)  # a second pass changes nothing
    (tmp_path / "other.md").write_text("no block here\n")
    with pytest.raises(ValueError, match="no results block"):
        write_readme(tmp_path / "other.md", run)


def test_every_file_the_readme_names_exists():
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"(?:tests|benchmarks|params|notebooks|docs)/[\w/.-]+\.(?:py|yaml|ipynb|md)", text)))
    assert named and [path for path in named if not (ROOT / path).is_file()] == []
