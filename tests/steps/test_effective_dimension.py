"""Effective dimension of the pulled-back metric: exact on metrics of known rank and known spectrum."""

import numpy as np
import pandas as pd
import pytest

from fisherlib.steps import effective_dimension as ed


def test_a_metric_of_known_rank_has_that_effective_rank_and_differs_fully_from_the_identity():
    d, r = 40, 5
    flat = np.r_[np.full(r, 3.0), np.zeros(d - r)]  # rank r, equal eigenvalues: both definitions give r
    summary = ed.spectrum_summary(np.stack([flat, np.ones(d), np.zeros(d)]))
    low, identity, zero = summary.iloc[0], summary.iloc[1], summary.iloc[2]
    assert low["eff_rank"] == pytest.approx(r) and low["participation"] == pytest.approx(r)
    assert low["eff_rank_share"] == pytest.approx(r / d)
    assert low["rel_spectral"] == pytest.approx(1.0) and low["rel_spectral_best"] == pytest.approx(0.5)
    assert low["rel_frobenius_best"] == pytest.approx(np.sqrt(1 - r / d))
    assert identity["eff_rank_share"] == pytest.approx(1.0)
    assert identity["rel_spectral"] == pytest.approx(0.0) and identity["rel_frobenius_best"] == pytest.approx(0.0)
    assert zero["eff_rank"] == 0 and zero["rel_spectral"] == 1.0


def test_the_best_multiple_of_the_identity_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    lam = rng.exponential(size=12)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    G = Q @ np.diag(lam) @ Q.T
    cs = np.linspace(0, lam.max() * 1.5, 20001)
    spectral = min(np.linalg.norm(G - c * np.eye(12), 2) for c in cs[::50]) / np.linalg.norm(G, 2)
    frobenius = min(np.linalg.norm(G - c * np.eye(12)) for c in cs[::50]) / np.linalg.norm(G)
    row = ed.spectrum_summary(np.linalg.eigvalsh(G)[None]).iloc[0]
    assert row["rel_spectral_best"] == pytest.approx(spectral, abs=2e-3)
    assert row["rel_frobenius_best"] == pytest.approx(frobenius, abs=2e-3)
    assert row["rel_spectral"] == pytest.approx(np.linalg.norm(G / np.linalg.norm(G, 2) - np.eye(12), 2))


def test_layers_are_summarised_by_medians():
    d = 20
    spectra = []
    for layer, rank in (("0", 2), ("head", 4)):
        for position in range(5):
            lam = np.r_[np.ones(rank), np.zeros(d - rank)]
            spectra.append(ed.spectrum_summary(lam[None]).assign(layer=layer, position=position))
    table = ed.effective_dimension_by_layer(pd.concat(spectra, ignore_index=True))
    assert table["layer"].tolist() == ["0", "head"]
    assert table["eff_rank_share"].tolist() == pytest.approx([0.1, 0.2]) and (table["n_positions"] == 5).all()
    assert not table.isna().any().any()
