"""The power law of the divergence by class: exact on a synthetic law D = c t^p, censoring and plateaus counted."""

import numpy as np
import pandas as pd
import pytest

from fisherlib.report import claims, findings, plots
from fisherlib.report.claims import NOT_REPRODUCED, NOT_TESTABLE, PARTLY, REPRODUCED
from fisherlib.steps import power_law
from helpers.sweeps import no_nan, synthetic_sweep

GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 5.0)


def exact_law(exponents: dict[str, float], n_positions: int = 12, per_class: int = 3, layer=None) -> pd.DataFrame:
    """Measurements whose boundaries follow D = c t^p exactly: t_emp = (ε / c)^(1/p), c varying per direction."""
    rng = np.random.default_rng(0)
    rows = []
    for position in range(n_positions):
        direction = 0
        for cls, p in exponents.items():
            for _ in range(per_class):
                c = float(rng.uniform(0.1, 10))
                for eps in GRID:
                    rows.append(dict(seed=0, position=position, direction=direction, cls=cls, eps=eps,
                                     t_emp=(eps / c) ** (1 / p), domain="d", doc_id=f"doc{position // 2}"))  # fmt: skip
                direction += 1
    frame = pd.DataFrame(rows)
    if layer is not None:
        frame = frame.drop(columns="seed").assign(layer=layer)
    return frame


def test_eps_bands_split_the_grid_in_thirds():
    bands = power_law.eps_bands(GRID)
    assert bands["band"].tolist() == ["small"] * 3 + ["medium"] * 3 + ["large"] * 2
    assert bands.loc[0, "band_hi"] == 0.03 and bands.loc[7, "band_lo"] == 1.0
    assert power_law.eps_bands((0.01, 0.1, 1.0))["band"].tolist() == ["small", "large"]
    with pytest.raises(ValueError):
        power_law.eps_bands((1.0,))


def test_an_exact_power_law_gives_its_exponent_in_every_band():
    measurements = exact_law({"structured": 3.0, "tangent": 4.0, "random": 2.0, "eigvec": 2.0})
    exponents = power_law.local_exponents(measurements)
    assert len(exponents) == measurements.shape[0] // len(GRID) * (len(GRID) - 1)
    truth = exponents["cls"].map({"structured": 3.0, "tangent": 4.0, "random": 2.0, "eigvec": 2.0})
    np.testing.assert_allclose(exponents["p"], truth, rtol=1e-9)
    table = power_law.exponents_by_class(exponents, unit="document", n_boot=200)
    no_nan(table)
    assert set(table["band"]) == {"small", "medium", "large"}
    by = table.set_index(["band", "cls"])
    for band in ("small", "medium", "large"):
        assert by.loc[(band, "random"), "median_p"] == pytest.approx(2.0)
        assert by.loc[(band, "tangent"), "ci_lo"] == pytest.approx(4.0) and by.loc[(band, "tangent"), "ci_hi"] == pytest.approx(4.0)
        assert 3.0 - 1e-9 <= by.loc[(band, "contrastive"), "median_p"] <= 4.0 + 1e-9
    assert (table["resampled"] == "document").all() and (table["n_units"] == 6).all()
    assert "above 2" in findings.power_law_findings(table) and "≈ 2" in findings.power_law_findings(table)


def test_censored_pairs_are_dropped_and_a_boundary_that_did_not_move_is_a_plateau():
    measurements = exact_law({"structured": 3.0, "random": 2.0}, n_positions=4, per_class=1)
    top = measurements["eps"] == 5.0
    measurements.loc[top & (measurements["cls"] == "random"), "t_emp"] = np.inf
    second = measurements["eps"] == 2.0
    for position in range(4):
        rows = (measurements["position"] == position) & (measurements["cls"] == "structured")
        measurements.loc[rows & top, "t_emp"] = measurements.loc[rows & second, "t_emp"].to_numpy()
    exponents = power_law.local_exponents(measurements)
    last = exponents[exponents["eps_lo"] == 2.0]
    random, structured = last[last["cls"] == "random"], last[last["cls"] == "structured"]
    assert not random["usable"].any() and (random["p"] == 0).all()
    assert structured["plateau"].all() and np.isinf(structured["p"]).all()
    table = power_law.exponents_by_class(exponents, n_boot=100).set_index(["band", "cls"])
    assert table.loc[("large", "random"), "n_dropped"] == 4 and table.loc[("large", "random"), "n"] == 4
    assert table.loc[("large", "structured"), "n_plateau"] == 4


def test_the_real_core_gives_the_quadratic_exponent_at_small_eps():
    positions, measurements = synthetic_sweep()
    exponents = power_law.local_exponents(measurements)
    table = power_law.exponents_by_class(exponents, n_boot=200).set_index(["band", "cls"])
    for cls in ("structured", "random", "eigvec"):  # KL = ½ uᵀFu t² + O(t³): p → 2 as ε → 0
        assert abs(table.loc[("small", cls), "median_p"] - 2) < 0.1, cls


def _ledger(tables):
    return claims.evaluate_claims(tables).set_index("claim")


@pytest.mark.parametrize(
    "laws, verdict",
    [
        ({"structured": 3.0, "tangent": 3.0, "random": 2.0}, REPRODUCED),
        ({"structured": 3.0, "tangent": 3.0, "random": 3.0}, PARTLY),
        ({"structured": 2.0, "tangent": 2.0, "random": 2.0}, NOT_REPRODUCED),
    ],
)
def test_the_claim_is_decided_from_the_table(laws, verdict):
    table = power_law.exponents_by_class(power_law.local_exponents(exact_law(laws)), n_boot=100)
    ledger = _ledger({"power_law_by_class": table})
    assert ledger.loc["power_law_by_class", "verdict"] == verdict
    assert ledger.loc["power_law_by_class", "source"] == claims.POWER_LAW_SOURCE
    assert _ledger({}).loc["power_law_by_class", "verdict"] == NOT_TESTABLE


def test_inner_layers_are_measured_with_actdiff_as_the_contrastive_class_and_the_head_left_out():
    parts = [exact_law({"actdiff": 3.0, "random": 2.0, "covariance": 2.0}, layer="1"),
             exact_law({"actdiff": 2.0, "random": 2.0, "covariance": 2.0}, layer="head")]  # fmt: skip
    measurements = pd.concat(parts, ignore_index=True)
    positions = measurements[["position", "domain", "doc_id"]].drop_duplicates("position")
    exponents = power_law.layer_exponents(measurements.drop(columns=["domain", "doc_id"]), positions, seed=3)
    table = power_law.exponents_by_class(exponents, power_law.LAYER_GROUPS, by=["layer"], unit="document", n_boot=100)
    no_nan(table)
    assert table["layer"].drop_duplicates().tolist() == ["1", "head"]
    assert _ledger({"layer_power_law": table}).loc["power_law_inner_layers", "verdict"] == REPRODUCED
    head_only = table[table["layer"] == "head"]
    assert _ledger({"layer_power_law": head_only}).loc["power_law_inner_layers", "verdict"] == NOT_TESTABLE
    text = findings.layer_power_law_findings(table)
    assert "1/small" in text and "head/" not in text
    fig = plots.plot_power_law(table, ["actdiff", "random", "covariance"])
    assert len(fig.axes) == 2
