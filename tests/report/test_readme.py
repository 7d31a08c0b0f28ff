"""The README's and docs/results.md's generated blocks are the committed runs' tables, as `make readme` writes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fisherlib.core.errors import FisherlibError
from fisherlib.report.paper import find_runs
from fisherlib.report.readme import (
    BEGIN,
    END,
    FULL_BEGIN,
    FULL_END,
    RESULTS_PAGE,
    readme_results,
    results_page_block,
    runs_block,
    side_by_side_block,
    wrap_markdown,
    write_readme,
)
from fisherlib.report.verify import committed_copy

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGE = ROOT / RESULTS_PAGE
WIDE = 300  # no generated line is wider than this


def _blocks(write, path: Path) -> list[str]:
    """A block as `make readme` writes it from `path` now, and from the committed copy of `path`.

    A rerun of the study on another CPU rewrites the working copy's last digits (`make verify` judges
    those), not the README, so the committed tables' block is right too; outside a git checkout (an
    unpacked archive) the tables are the committed ones.
    """
    blocks = [write(path)]
    try:
        with committed_copy(path) as committed:
            blocks.append(write(committed))
    except FisherlibError:
        pass
    return blocks


def test_the_readme_holds_the_committed_run_s_headline_verbatim():
    text = README.read_text(encoding="utf-8")
    blocks = _blocks(readme_results, ROOT / "results" / "tiny")
    assert any(block in text for block in blocks), "README.md's results block is stale: run `make readme` (it rewrites it from results/tiny/)"
    assert "From `results/tiny/`" in blocks[0] and "The claims by verdict" in blocks[0]
    assert max(map(len, blocks[0].splitlines())) <= WIDE


def test_the_results_page_holds_the_committed_run_s_whole_story_verbatim():
    text = PAGE.read_text(encoding="utf-8")
    blocks = _blocks(results_page_block, ROOT / "results" / "tiny")
    assert any(block in text for block in blocks), f"{RESULTS_PAGE}'s results block is stale: run `make readme`"
    expected = blocks[0]
    # Every section of the run is there: nothing typed in between.
    for heading in (
        "From `results/tiny/`",
        "**The claims ledger**",
        "**Every predictor on one denominator**",
        "**At every layer**",
        "**Janiak et al.'s plateaus**",
        "**Over training**",
    ):
        assert heading in expected
    assert max(map(len, expected.splitlines())) <= WIDE


def test_the_results_page_sets_every_published_run_beside_the_write_up():
    text = PAGE.read_text(encoding="utf-8")
    blocks = _blocks(side_by_side_block, ROOT / "results")
    assert any(block in text for block in blocks), f"{RESULTS_PAGE}'s side-by-side block is stale: run `make readme`"
    for run in find_runs(ROOT / "results"):
        assert f"| {run} " in blocks[0] or f" {run} |" in blocks[0]
    assert "write-up Qwen3-1.7B" in blocks[0] and "**The rank-one regime**" in blocks[0]


def test_the_readme_lists_every_published_run():
    text = README.read_text(encoding="utf-8")
    blocks = _blocks(runs_block, ROOT / "results")
    assert any(block in text for block in blocks), "README.md's table of runs is stale: run `make readme`"
    for run in find_runs(ROOT / "results"):
        assert f"`{run}`" in blocks[0]


def test_write_readme_replaces_only_the_blocks_and_refuses_a_file_without_one(tmp_path):
    run = ROOT / "results" / "tiny"
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{BEGIN.format(run='tiny')}\nold numbers\n{END}\n\nafter\n", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    page = tmp_path / RESULTS_PAGE
    page.write_text(f"# results\n\n{FULL_BEGIN.format(run='tiny')}\nold story\n{FULL_END}\n", encoding="utf-8")
    assert write_readme(readme, run)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old numbers" not in text
    assert readme_results(run) in text
    assert "old story" not in page.read_text(encoding="utf-8") and results_page_block(run) in page.read_text(encoding="utf-8")
    assert not write_readme(readme, run)  # a second pass changes nothing
    (tmp_path / "other.md").write_text("no block here\n")
    with pytest.raises(ValueError, match="no results block"):
        write_readme(tmp_path / "other.md", run)


def test_wrapping_keeps_the_markdown_and_its_words():
    line = "word " * 40 + "- not a list item, 1. not a numbered one, # not a heading " + "word " * 40
    wrapped = wrap_markdown(line.strip(), width=50)
    assert wrapped.split() == line.split()
    for row in wrapped.splitlines()[1:]:
        assert not re.match(r"(-|\d+\.|#+)( |$)", row), row
    table = "| a | " + "b " * 200 + "|"
    assert wrap_markdown(table, width=50) == table  # tables are left alone
    item = "- " + "word " * 60
    assert all(row.startswith("  ") for row in wrap_markdown(item.strip(), width=50).splitlines()[1:])


def test_every_file_the_readme_and_the_docs_name_exists():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        named = sorted(set(re.findall(r"(?:tests|benchmarks|params|notebooks|docs|tools)/[\w/.-]+\.(?:py|yaml|ipynb|md)", text)))
        assert [path for path in named if not (ROOT / path).is_file()] == [], page.name
    assert re.findall(r"docs/[\w.-]+\.md", README.read_text(encoding="utf-8"))


def test_every_link_of_the_readme_and_the_docs_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_is_a_front_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150
