"""The sentences the notebooks display about a run follow its tables: change the table, the sentence changes."""

import pandas as pd

from fisherlib.report import findings
from fisherlib.steps import calibration, direction_classes, exactness, stats, stratifiers


def test_table1_and_sign_sentences_quote_the_table(sweep):  # noqa: F811
    positions, measurements = sweep
    measurements = stats.attach_documents(measurements, positions)
    table1 = exactness.top_eigvec_exactness(measurements, 0.01, n_boot=100, unit="document")
    text = findings.table1_findings(table1)
    row = table1.iloc[-1]
    assert f"{row['median_rho']:.4f}" in text and "documents resampled" in text
    assert ("within its 8%" in text) == (abs(row["median_rho"] - 1) <= 0.08)
    by_sign = pd.DataFrame({"sign": [1, -1], "median_rho": [0.97, 1.02], "ci_lo": [0.96, 1.01], "ci_hi": [0.98, 1.03]})
    assert "opposite sides of 1" in findings.sign_findings(by_sign)
    assert "same side of 1" in findings.sign_findings(by_sign.assign(median_rho=[0.97, 0.99]))


def test_stratifier_sentence_calls_a_tie_a_tie():
    def table(entropy, eff_rank):
        return pd.DataFrame({"cls": "all", "eps": 1.0, "stratifier": ["entropy", "max_prob", "eff_rank"],
                             "within_var": [entropy, 2.0, eff_rank], "robust_within_var": [entropy, 2.0, eff_rank],
                             "explained": [0.1, 0.05, 0.01]})  # fmt: skip

    tied = findings.stratifier_findings(table(1.0, 1.02))
    assert "entropy and eff_rank tie" in tied and "is best" not in tied
    clear = findings.stratifier_findings(table(1.0, 40.0))
    assert "entropy is best (runner-up max_prob at 2.00×)" in clear and "eff_rank's spread is 40× entropy's" in clear


def test_calibration_sentence_says_when_calibration_hurts():
    rows = [("all", "raw", "none", 0.86), ("all", "calibrated_pooled", "linear", 0.84),
            ("all", "calibrated_per_class", "linear", 0.88), ("random", "calibrated_per_class", "linear", 0.91),
            ("all", "calibrated_pooled", "log", 0.90), ("all", "calibrated_per_class", "log", 0.92),
            ("random", "calibrated_per_class", "log", 0.95)]  # fmt: skip
    table = pd.DataFrame([dict(eps=1.0, cls=c, method=m, space=s, within_50=v, resampled="document") for c, m, s, v in rows])
    text = findings.calibration_findings(table, 1.0, "linear")
    assert "in linear space (the headline), pooled calibration lowers the fraction within 50% from 86.0% (raw) to 84.0%" in text
    assert "in log space, pooled calibration raises the fraction within 50% from 86.0% (raw) to 90.0%" in text
    assert "grouped by document" in text


def test_sign_pattern_and_predictor_sentences_on_a_sweep(sweep):  # noqa: F811
    positions, measurements = sweep
    table2 = direction_classes.median_rho_by_class(measurements, 1.0, n_boot=50, with_full=True)
    text = findings.table2_findings(table2)
    assert "with F_k:" in text and "with full F:" in text
    comparison = calibration.predictor_comparison(measurements, eps=1.0, n_splits=4)
    text = findings.comparison_findings(comparison, 1.0)
    pooled = comparison[comparison.cls == "all"].set_index("predictor")
    assert f"{100 * pooled.loc['t_quartic', 'within_50']:.1f}%" in text
    beats = pooled.loc["t_quartic", "within_50"] > pooled[pooled.index.str.startswith("iso_")]["within_50"].max()
    assert ("quartic root beats the best" in text) == beats
    cells = stratifiers.stratifier_variance(measurements, positions, 1.0, cls="all")
    assert "eff_rank's spread" in findings.stratifier_findings(cells)


def test_lens_table1_sentence_quotes_the_table():
    table = pd.DataFrame({
        "layer": ["0", "1", "head"], "eps": 0.01, "n_positions": 4, "n": 8, "n_censored": [0, 1, 0],
        "median_rho_lens": [3.99512, 0.61234, 1.0021], "ci_lo_lens": [2.5, 0.4, 0.999], "ci_hi_lens": [9.7, 1.2, 1.004],
        "median_rho_true": [0.9422, 1.0042, 1.0021], "ci_lo_true": 0.9, "ci_hi_true": 1.1,
        "table1_median_rho": [1.0096, 1.0044, 1.0024], "table1_median_rho_same": [1.0079, 1.0051, 1.0015],
    })  # fmt: skip
    text = findings.lens_table1_findings(table)
    assert "from 0.6123 (layer 1) to 3.995 (layer 0)" in text  # rounded as save_table writes them
    assert "its 95% CI containing 1 at 2 of 3 layers (layer 1, the head)" in text
    assert "same lines gives 0.9422–1.004" in text and "same positions) 1.002–1.008" in text
    assert "1 of 8 lines censored" in text and text.count("\n- ") == 3
    assert findings.lens_table1_findings(table.iloc[:0]).startswith("**This run:** no layer")
