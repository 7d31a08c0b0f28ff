"""`make paper`: the summary reads each run's tables and puts the write-up beside them."""

import shutil
from pathlib import Path

import pandas as pd

from fisherlib.io.tables import read_table_file
from fisherlib.report.paper import EXPECTED_TABLES, find_runs, write_summary
from fisherlib.run.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_summary_has_a_column_per_run_and_the_write_up(tmp_path):
    for run in ("tiny", "another"):
        shutil.copytree(ROOT / "results" / "tiny", tmp_path / run, ignore=shutil.ignore_patterns("cache", "*.parquet"))
    (tmp_path / "not-a-run").mkdir()
    shutil.copytree(ROOT / "results" / "tiny", tmp_path / "scratch", ignore=shutil.ignore_patterns("cache", "*.parquet", "run.json"))
    assert list(find_runs(tmp_path)) == ["another", "tiny"]
    text = write_summary(tmp_path).read_text()
    strata = read_table_file(ROOT / "results" / "tiny" / "sample_strata.csv")
    overview = next(line for line in text.splitlines() if line.startswith("| tiny "))
    assert overview.rstrip(" |").endswith(f" {strata['total'].sum()}")  # the positions each run rests on
    assert "Left out" in text and "`scratch`" in text
    table2 = read_table_file(ROOT / "results" / "tiny" / "table2_rho_by_class.csv").set_index("cls")
    random_row = next(line for line in text.splitlines() if line.startswith("| random "))
    assert f"{table2.loc['random', 'median_rho']:.3g}" in random_row
    assert "0.23" in random_row and "0.45" in random_row and "0.50" in random_row  # Qwen, Llama, Pythia
    for header in ("tiny", "another", "write-up Qwen3-1.7B", "write-up Llama-3.2-1B", "write-up Pythia-1B"):
        assert header in text


def test_committed_embedded_results_hold_every_study_table():
    missing = [name for names in EXPECTED_TABLES.values() for name in names if not (ROOT / "results" / "tiny" / f"{name}.csv").is_file()]
    assert not missing


def test_cli_paper_writes_the_summary(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "results" / "tiny", tmp_path / "results" / "tiny", ignore=shutil.ignore_patterns("cache", "*.parquet"))
    monkeypatch.setattr("fisherlib.report.paper.repo_root", lambda: tmp_path)
    assert main(["paper"]) == 0
    assert (tmp_path / "results" / "summary.md").is_file()
    assert "summary written" in capsys.readouterr().out


def test_summary_has_the_claims_matrix_from_ledgers_or_tables(tmp_path):
    from fisherlib.report.claims import CLAIMS, evaluate_claims
    from helpers.claims import passing_tables

    for run in ("written", "tables-only"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "run.json").write_text('{"complete": true}')
        for name, table in passing_tables().items():
            table.to_csv(tmp_path / run / f"{name}.csv", index=False)
    ledger = evaluate_claims(passing_tables())
    ledger.loc[ledger.claim == "top_eigvec_exact", "verdict"] = "partly"  # the written ledger is read, not recomputed
    ledger.to_csv(tmp_path / "written" / "claims.csv", index=False)
    text = write_summary(tmp_path).read_text()
    assert "## Claims matrix" in text
    row = next(line for line in text.splitlines() if line.startswith("| top_eigvec_exact"))
    assert "**partly**" in row and "**reproduced**" in row and "Qwen3-1.7B: 1.002" in row
    assert "| write-up " in row  # the source column
    header = next(line for line in text.splitlines() if line.startswith("| claim"))
    assert "source" in header and "write-up / paper" in header
    assert all(f"| {claim.id} " in text for claim in CLAIMS)
    assert "## Every predictor on one denominator" in text and "t_quartic (ε = 1)" in text


def test_story_tells_the_newer_papers_results_from_the_tables(tmp_path):
    from fisherlib.report.paper import story
    from helpers.claims import passing_tables

    for name, table in passing_tables().items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    text = story(tmp_path)
    assert "Newer results:" in text and "2.60 vs 2.10 at large ε" in text
    assert "5.0%–15.0% of d" in text and "lens" in text
    assert "| source " in text  # the ledger table carries each claim's source


def test_story_and_summary_tell_the_steering_budget_from_its_tables(tmp_path):
    from fisherlib.report.paper import story, write_summary
    from helpers.claims import passing_tables

    run = tmp_path / "toy"
    run.mkdir()
    tables = passing_tables()
    tables["steering_natural"] = tables["steering_natural"].assign(off_target_ratio=[2.0, 1.0, 5.0])
    tables["steering_population"] = pd.DataFrame({"quantile": [0.9]})
    tables["steering_token_accuracy"] = pd.DataFrame({"mode": ["all", "all", "target"], "sign": "+", "eps": [0.1, 0.1, 0.1],
                                                      "n": [10, 30, 10], "within_50": [1.0, 0.5, 0.0]})  # fmt: skip
    for name, table in tables.items():
        table.to_csv(run / f"{name}.csv", index=False)
    text = story(run)
    assert "Steering (notebook 11)" in text and "the 0.9 quantile" in text
    assert "within 2.0% (at most 6.0%) at ε = 0.1, 5.0% (at most 9.0%) at ε = 1" in text
    assert "62.5% at ε = 0.1" in text and "spends 2.00×" in text
    (run / "run.json").write_text('{"complete": true}')
    summary = write_summary(tmp_path).read_text()
    assert "## Steering budget" in summary and "2.0% (max 6.0%)" in summary


def test_a_damaged_run_is_named_and_left_out_with_what_is_wrong(tmp_path, caplog):
    from fisherlib.report.claims import CLAIMS
    from fisherlib.report.paper import left_out_runs

    for run in ("whole", "truncated", "corrupt", "lost-notebook"):
        shutil.copytree(ROOT / "results" / "tiny", tmp_path / run, ignore=shutil.ignore_patterns("cache", "*.parquet"))
    claims = (tmp_path / "truncated" / "claims.csv").read_text()
    (tmp_path / "truncated" / "claims.csv").write_text(claims[: len(claims) // 2])  # cut mid-row, as a full disk would
    manifest = (tmp_path / "corrupt" / "run.json").read_text()
    (tmp_path / "corrupt" / "run.json").write_text(manifest[: len(manifest) // 2])
    (tmp_path / "lost-notebook" / "notebooks" / "04_closed_form_exactness.ipynb").unlink()

    assert list(find_runs(tmp_path)) == ["whole"]
    reasons = left_out_runs(tmp_path)
    assert set(reasons) == {"truncated", "corrupt", "lost-notebook"}
    assert "claims.csv holds" in reasons["truncated"] and f"of {len(CLAIMS)} claims" in reasons["truncated"]
    assert reasons["corrupt"].startswith("run.json cannot be read") and "no run.json" not in reasons["corrupt"]
    assert "04_closed_form_exactness.ipynb" in reasons["lost-notebook"]
    with caplog.at_level("WARNING", logger="fisherlib"):
        text = write_summary(tmp_path).read_text()
    matrix = text.split("## Claims matrix", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in matrix.splitlines() if line.startswith("| claim"))
    assert "whole" in header and "truncated" not in header and "corrupt" not in header
    assert "`truncated` (claims.csv holds" in text
    assert any("left out results/corrupt: run.json cannot be read" in r.getMessage() for r in caplog.records)
