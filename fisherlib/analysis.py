"""The study's statistics, one module per step; this module re-exports their public names.

Where each lives (import from the step module in new code):

| module | notebook | functions |
|---|---|---|
| `fisherlib.stats` | all | `at_eps`, `group_mask`, `select_group`, `attach_documents`, `unit_keys`, bootstrap (`bootstrap_median_ci`, `bootstrap_medians`, `weighted_medians`, `percentile_interval`, `sample_median`), `score` |
| `fisherlib.exactness` | 04 | Table 1 `top_eigvec_exactness`, `rho_by_eig_rank`, `rho_by_eps`, `rho_topk_vs_full`, `cumulant_terms`, `sign_pairs`, `cumulant_summary`, `predictor_accuracy`, `quartic_with_fallback` |
| `fisherlib.direction_classes` | 05 | Table 2 `median_rho_by_class`, `sign_pattern`, `per_position_spearman`, `spearman_summary` |
| `fisherlib.calibration` | 06 | `calibrate_isotonic_cv`, `predictor_comparison`, `out_of_fold_predictions`, `calibrated_predictions`, `isotonic_curve`, `unit_folds`, `position_folds`, `headline` |
| `fisherlib.stratifiers` | 07 | `stratifier_variance`, `stratifier_cells` |
| `fisherlib.stable_regions` | 07 | `kl_slice`, `plane_fisher`, `ellipse_points`, `fisher_ellipse`, `stable_region_slices`, `axis_boundaries`, `representative_positions`, `contour_levels`, `sample_row` |
| `fisherlib.claims` | all | the claims ledger: `CLAIMS`, `evaluate_claims`, `write_ledger`, `ledger_markdown` |
| `fisherlib.claim_rules` | all | the ledger's thresholds and decision rules, `stratifier_ranking` |
| `fisherlib.findings` | all | the sentences each notebook displays about its run |
"""

from __future__ import annotations

from .calibration import (  # noqa: F401
    SPACES,
    calibrate_isotonic_cv,
    calibrated_predictions,
    headline,
    isotonic_curve,
    out_of_fold_predictions,
    position_folds,
    predictor_comparison,
    unit_folds,
)
from .direction_classes import (  # noqa: F401
    CONSTANT_NOTE,
    UNDEFINED_NOTE,
    median_rho_by_class,
    per_position_spearman,
    sign_pattern,
    spearman_summary,
)
from .exactness import (  # noqa: F401
    CLOSED_FORMS,
    common_rows,
    cumulant_summary,
    cumulant_terms,
    predictor_accuracy,
    quartic_with_fallback,
    rho_by_eig_rank,
    rho_by_eps,
    rho_topk_vs_full,
    sign_pairs,
    top_eigvec_exactness,
    with_quartic,
)
from .stable_regions import (  # noqa: F401
    DEFAULT_SLICE_BUDGET,
    PlaneSlice,
    axis_boundaries,
    contour_levels,
    ellipse_points,
    fisher_ellipse,
    kl_slice,
    plane_fisher,
    representative_positions,
    restrict_to_plane,
    sample_row,
    stable_region_slices,
)
from .stats import (  # noqa: F401
    ALL_PREDICTED,
    DOCUMENT_KEYS,
    MAD_TO_SD,
    POSITION_KEYS,
    PREDICTED_CLASSES,
    SIGNED_CLASSES,
    STRATIFIERS,
    TABLE2_GROUPS,
    TOP_EIGVEC,
    UNITS,
    WITHIN_TOLERANCE,
    at_eps,
    attach_documents,
    bootstrap_median_ci,
    bootstrap_medians,
    group_mask,
    percentile_interval,
    sample_median,
    score,
    select_group,
    unit_keys,
    weighted_medians,
)
from .stratifiers import stratifier_cells, stratifier_variance  # noqa: F401
