"""Tests for fisherlib.report.dynamics_report: notebook 10's figures and computed findings."""

from __future__ import annotations

import pandas as pd
import pytest

from fisherlib.report import dynamics_report
from helpers.dynamics import revision_tables, revisions


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return revision_tables(revisions())


def test_findings_quote_the_tables(tables):
    text = dynamics_report.dynamics_findings(tables)
    assert "from `step10` to `step1000`" in text
    first, last = tables["dynamics_table1"].query("curvature == 'F_k'")["median_rho"].iloc[[0, -1]]
    assert f"{first:.3f} to {last:.3f}" in text
    assert "5.00 to 3.00 nats" in text


def test_findings_say_when_no_position_is_near_binary(tables):
    quiet = dict(tables)
    quiet["dynamics_rank_one"] = tables["dynamics_rank_one"].assign(share_near_binary=0.0, n_near_binary=0)
    assert "none is near-binary" in dynamics_report.dynamics_findings(quiet)


def test_figures_draw(tables):
    import matplotlib.pyplot as plt

    for figure in (dynamics_report.plot_dynamics(tables), dynamics_report.plot_dynamics_classes(tables)):
        assert len(figure.axes) >= 3
        plt.close(figure)
