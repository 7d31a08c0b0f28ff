"""Notebook 10 (training dynamics) end to end on the shipped embedded model's checkpoints, small parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from fisherlib.io.tables import read_table_file
from fisherlib.models.tiny import shipped_tiny_model, tiny_revisions

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(
    n_positions=20, eps_grid=[0.01, 1.0], small_eps=0.01, large_eps=1.0, n_random=4, n_control=2, max_context=96,
    pool_factor=2, batch_size=8,
)  # fmt: skip
TABLES = ("checkpoints", "distributions", "rank_one", "table1", "table2", "predictors", "stratifiers")

pytestmark = [
    pytest.mark.notebooks,
    pytest.mark.skipif(shipped_tiny_model() is None, reason="the shipped model models/tiny is absent"),
]


def test_notebook_10_writes_every_dynamics_table_and_figure(tmp_path: Path):
    import papermill

    revisions = tiny_revisions()
    chosen = [revisions[0], revisions[len(revisions) // 2], revisions[-1]]
    parameters = SMALL | dict(results_root=str(tmp_path / "results"), figures_root=str(tmp_path / "figures"), revisions=chosen, run_name="tiny")
    for name in ("01_sample_positions", "10_training_dynamics"):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"), parameters=parameters,
            kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False,
        )  # fmt: skip
    results = tmp_path / "results" / "tiny"
    for table in TABLES:
        frame = read_table_file(results / f"dynamics_{table}.csv")
        assert list(dict.fromkeys(frame["revision"])) == chosen, table
        assert not frame.isna().any().any(), table
    for figure in ("dynamics_overview", "dynamics_classes"):
        assert (tmp_path / "figures" / "tiny" / f"{figure}.png").stat().st_size > 0
    executed = (tmp_path / "10_training_dynamics.ipynb").read_text()
    assert f"from `{chosen[0]}` to `{chosen[-1]}`" in executed  # the computed findings were displayed
