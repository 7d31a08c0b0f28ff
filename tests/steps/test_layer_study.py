"""Notebook 08's measurements and tables: directions per class, the long table, Table 1 per layer, findings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fisherlib.layers.engine import residuals_by_layer
from fisherlib.layers.passes import Prefilled
from fisherlib.report import layer_findings
from fisherlib.steps import layer_study as LS
from helpers.layers import _contexts, _random_lm


def test_choose_positions_spreads_over_cells():
    table = pd.DataFrame(dict(domain=np.repeat(["a", "b"], 50), stratum=np.tile(np.arange(5), 20)))
    rows = LS.choose_positions(table, 20, seed=0)
    assert len(rows) == 20 == len(set(rows))
    counts = table.iloc[rows].groupby(["domain", "stratum"]).size()
    assert counts.min() == counts.max() == 2
    assert len(LS.choose_positions(table, 0, seed=0)) == 100


def test_measure_layer_directions_and_columns():
    model = _random_lm("gpt_neox")
    contexts = _contexts(lengths=(6, 9, 12, 7, 10))
    docs = np.array(["d0", "d1", "d2", "d3", "d4"])
    residuals = residuals_by_layer(model, contexts, [1, "head"])
    rows = np.array([0, 2, 4])
    prefilled = Prefilled(model, [contexts[i] for i in rows])
    eps = [1e-3, 1e-2, 0.1]
    table = LS.measure_layer(
        model, prefilled, 1, residuals[1], rows, docs, np.arange(5), eps, n_eig=2, n_per_class=2, top_k=8, seed=0,
        rtol=1e-6,
    )  # fmt: skip
    assert list(table.columns) == list(LS.COLUMNS)
    per_position = table.drop_duplicates(["position", "direction"]).groupby("position")["cls"].value_counts().unstack()
    assert (per_position["eigvec"] == 4).all() and (per_position[["random", "covariance", "actdiff"]] == 2).all().all()
    # ρ → 1 as ε → 0 along the top eigenvector (second-order exactness), and ρ = ½ t² curv / ε.
    top = table[(table["cls"] == "eigvec") & (table["eig_rank"] == 1) & (table["eps"] == 1e-3)]
    assert (top["rho"] - 1).abs().max() < 0.05
    finite = table[np.isfinite(table["t_emp"])]
    np.testing.assert_allclose(finite["rho"], 0.5 * finite["t_emp"] ** 2 * finite["curv"] / finite["eps"], rtol=1e-12)
    assert ((table["eigval"] > 0) == (table["cls"] == "eigvec")).all()


def _synthetic(layers=("0", "1", "head"), positions=6):
    rng = np.random.default_rng(0)
    rows = []
    for depth, layer in enumerate(layers):
        for position in range(positions):
            for direction, (cls, rank, sign) in enumerate([("eigvec", 1, 1), ("eigvec", 1, -1), ("random", -1, 1), ("actdiff", -1, 1)]):
                for eps in (1e-3, 1e-2, 1.0):
                    drift = 1 + (0.01 + 0.2 * depth) * eps**0.5 * (1 if cls == "eigvec" else -1)
                    rho = drift * (1 + 0.001 * rng.standard_normal())
                    t_emp = math.inf if (cls == "actdiff" and eps == 1.0 and position < 4) else math.sqrt(2 * eps * rho)
                    rows.append(dict(
                        layer=layer, position=position, direction=direction, cls=cls, eig_rank=rank, sign=sign, eps=eps, eigval=0.0,
                        curv=1.0, curv_topk=0.9, t_pred=math.sqrt(2 * eps) * (1 + 0.1 * direction), t_emp=t_emp,
                        rho=rho if math.isfinite(t_emp) else math.inf, rho_topk=0.9 * rho if math.isfinite(t_emp) else math.inf,
                        censored=not math.isfinite(t_emp), nonmonotone=layer == "0" and direction == 0,
                    ))  # fmt: skip
    return pd.DataFrame(rows)


def test_tables_and_findings_read_the_measurements():
    measurements = _synthetic()
    table1 = LS.table1_by_layer(measurements, 1e-2, n_boot=200)
    assert table1["layer"].astype(str).tolist() == ["0", "1", "head"]
    assert (table1["n"] == 12).all() and (table1["median_rho"] > 1).all()
    by_layer = LS.rho_by_layer(measurements, n_boot=200)
    censored = by_layer[(by_layer["cls"] == "actdiff") & (by_layer["eps"] == 1.0)]
    assert np.isinf(censored["median_rho"]).all() and (censored["n_censored"] == 4).all()
    frontier = LS.exactness_frontier(by_layer, tolerance=0.05)
    eig = frontier[frontier["cls"] == "eigvec"].set_index("layer")["eps_exact"]
    assert eig.loc["0"] == 1.0 and eig.loc["head"] == 1e-2  # drift grows with depth in this synthetic table
    spearman = LS.spearman_by_layer(measurements)
    assert (spearman["n_positions"] == 6).all()
    nonmonotone = LS.nonmonotone_by_layer(measurements)
    assert nonmonotone.set_index(["layer", "cls"]).loc[("0", "eigvec"), "share_nonmonotone"] == 0.5
    text = layer_findings.layer_findings(table1, by_layer, spearman, frontier, nonmonotone, 1e-2, 1.0)
    assert "layer 0" in text and "the head" in text and "nan" not in text.lower()
    assert LS.layer_sort_key("head") > LS.layer_sort_key("12") > LS.layer_sort_key("2")
