"""Synthetic revisions (a random head, logits sharpened as training does) and their tables across checkpoints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fisherlib.data.sampling import position_statistics
from fisherlib.run.params import StudyParams
from fisherlib.steps import dynamics
from fisherlib.steps.sweep import measure_boundaries

EPS = (0.01, 1.0)


def revision(revision: str, sharpness: float, n_positions: int = 30, V: int = 40, d: int = 12) -> dynamics.RevisionMeasurement:
    """A synthetic revision: random head and residuals, logits scaled by `sharpness` (training sharpens p)."""
    generator = torch.Generator().manual_seed(0)
    W = torch.randn(V, d, generator=generator)
    h = sharpness * torch.randn(n_positions, d, generator=generator)
    stats = position_statistics(W, None, h, top_k=8)
    # Three positions per document, so that a document bootstrap has clusters to resample.
    positions = pd.DataFrame({"position": np.arange(n_positions), "seed": 0, "domain": "code", "doc_id": np.arange(n_positions) // 3})
    for name, values in stats.items():
        if name not in ("topk_ids", "topk_probs"):
            positions[name] = values.numpy()
    measurements = measure_boundaries(W, None, h, EPS, top_k=8, n_random=3, n_control=2, progress=False)
    return dynamics.RevisionMeasurement(revision, dynamics.revision_step(revision), positions, measurements)


def revisions() -> list[dynamics.RevisionMeasurement]:
    """Three revisions, each sharper than the last."""
    return [revision("step10", 0.3), revision("step100", 1.0), revision("step1000", 4.0)]


def revision_tables(results: list[dynamics.RevisionMeasurement]) -> dict[str, pd.DataFrame]:
    """The dynamics tables of `results`, with a held-out loss per checkpoint."""
    params = StudyParams.create(small_eps=EPS[0], large_eps=EPS[1], eps_grid=list(EPS))
    record = {"checkpoints": [{"step": 10, "heldout_loss": 5.0}, {"step": 100, "heldout_loss": 4.0}, {"step": 1000, "heldout_loss": 3.0}]}
    return dynamics.dynamics_tables(results, params, record)
