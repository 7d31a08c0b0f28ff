"""Every figure draws from its table, and the figures the issue named look as their prose says."""

import matplotlib

from fisherlib.steps import calibration as cal
from fisherlib.steps import direction_classes as dc
from fisherlib.steps import exactness as ex
from fisherlib.steps import stratifiers as sf

matplotlib.use("Agg")


def test_figures_draw_from_the_tables(sweep):  # noqa: F811
    from fisherlib.report import plots

    positions, measurements = sweep
    comparison = cal.predictor_comparison(measurements, eps=[0.1, 1.0], n_splits=4)
    figures = [
        plots.plot_predictor_comparison(comparison),
        plots.plot_rho_by_eig_rank(ex.rho_by_eig_rank(measurements, 0.01, n_boot=50)),
        plots.plot_rho_by_eps(ex.rho_by_eps(measurements, n_boot=50)),
        plots.plot_rho_topk_vs_full(ex.rho_topk_vs_full(measurements)),
        plots.plot_cumulant_check(ex.cumulant_terms(measurements, 0.1)),
        plots.plot_predictor_accuracy(ex.predictor_accuracy(measurements)),
        plots.plot_rho_by_class(measurements, 1.0),
        plots.plot_spearman_histogram(dc.per_position_spearman(measurements, positions, 1.0), reference_range=(0.66, 0.98)),
        plots.plot_calibration_within50(cal.calibrate_isotonic_cv(measurements, n_splits=4, spaces=cal.SPACES)),
        plots.plot_calibration_curve(measurements, cal.isotonic_curve(measurements, 1.0)),
        plots.plot_stratifier_variance(sf.stratifier_variance(measurements, positions, 1.0, cls="all")),
        plots.plot_stratifier_cells(sf.stratifier_cells(measurements, positions, 1.0, cls="all")),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figures)
    matplotlib.pyplot.close("all")


def test_stratifier_bars_are_linear_for_close_values_and_labels_sit_inside_the_bars(sweep):  # noqa: F811
    import pandas as pd

    from fisherlib.report import plots

    table = pd.DataFrame({"cls": "all", "eps": 1.0, "stratifier": ["entropy", "max_prob", "eff_rank"],
                          "within_var": [1.0, 1.001, 1.07], "robust_within_var": [0.5, 0.48, 0.38],
                          "total_var": 1.1, "ratio_to_best": [1.0, 1.001, 1.07],
                          "robust_ratio_to_best": [1.3, 1.26, 1.0]})  # fmt: skip
    fig = plots.plot_stratifier_variance(table)
    top = fig.axes[0]
    assert top.get_yscale() == "linear" and "linear axis" in top.get_ylabel()
    for text in top.texts:
        x, y = text.get_position()
        assert 0 < y < 1.0  # inside the bar, below the dashed total-variance line
    matplotlib.pyplot.close("all")


def test_stable_region_panels_are_square_or_say_their_scale_ratio():
    import torch

    from fisherlib.report import plots
    from fisherlib.steps import stable_regions as sr

    g = torch.Generator().manual_seed(0)
    W, h = torch.randn(40, 12, generator=g), 1.5 * torch.randn(12, generator=g)
    slices = sr.stable_region_slices(W, None, h, eps_levels=(0.1, 1.0), top_k=6, n_grid=31)
    fig = plots.plot_stable_regions([("a position", slices)])
    for ax, plane in zip(fig.axes, slices):
        ratio = (plane.y[-1] - plane.y[0]) / (plane.x[-1] - plane.x[0])
        if max(ratio, 1 / ratio) <= 3:
            assert ax.get_aspect() == 1.0
        else:
            assert "spans" in ax.get_ylabel()
    matplotlib.pyplot.close("all")
