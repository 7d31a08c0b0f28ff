"""Notebook 07's stratifier statistics (`fisherlib.steps.stratifiers`)."""

import numpy as np
import pandas as pd
import pytest

from fisherlib.steps import stats as st
from fisherlib.steps import stratifiers as sf
from helpers.sweeps import no_nan


def test_stratifier_that_determines_log_rho_wins_by_a_large_ratio():
    rng = np.random.default_rng(2)
    n_pos = 500
    positions = pd.DataFrame(
        {
            "seed": 0,
            "position": np.arange(n_pos),
            "entropy": rng.uniform(0, 4, n_pos),
            "max_prob": rng.uniform(0, 1, n_pos),
            "eff_rank": rng.uniform(1, 8, n_pos),
        }
    )
    measurements = pd.DataFrame(
        {"seed": 0, "position": np.arange(n_pos), "cls": "eigvec", "eig_rank": 1, "eps": 0.01, "rho": np.exp(2 * positions.entropy)}  # fmt: skip
    )
    measurements.loc[0, "rho"] = np.inf  # censored: dropped from log ρ, counted
    table = sf.stratifier_variance(measurements, positions, 0.01).set_index("stratifier")
    assert table.loc["entropy", "best"] and table.loc["entropy", "ratio_to_best"] == 1
    assert table.loc["eff_rank", "ratio_to_best"] > 10 and table.loc["max_prob", "ratio_to_best"] > 10
    assert table.loc["entropy", "robust_ratio_to_best"] == 1 and table.loc["eff_rank", "robust_ratio_to_best"] > 10
    assert (table.dropped == 1).all() and (table.n == n_pos - 1).all()
    # Hand-computed pooled within-cell variance for entropy.
    usable = positions.iloc[1:]
    bins = sf._quantile_bins(usable.entropy, 5)
    log_rho = 2 * usable.entropy.to_numpy()
    cells = [log_rho[bins == b] for b in range(5)]
    expected = sum((c.size - 1) * c.var(ddof=1) for c in cells) / sum(c.size - 1 for c in cells)
    assert table.loc["entropy", "within_var"] == pytest.approx(expected)
    no_nan(table.reset_index())


def test_stratifier_tables_on_a_sweep(sweep):
    positions, measurements = sweep
    cells = sf.stratifier_cells(measurements, positions, 1.0, cls="all")
    assert set(cells.stratifier) == set(st.STRATIFIERS) and set(cells.bin) == set(range(5))
    variance = sf.stratifier_variance(measurements, positions, 1.0, cls="all")
    assert variance.best.sum() >= 1 and (variance.ratio_to_best >= 1).all()
    no_nan(cells)
    no_nan(variance)
