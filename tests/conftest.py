"""Fixtures shared by every test: fixed seeds, the path to the offline fixtures, a synthetic sweep.

Helpers that are not fixtures (random models, tokenizers, references) live in `tests/helpers/` and import
as `helpers.<module>`: this folder is on the import path as the folder of the root conftest (pytest's
default `prepend` import mode), so no test imports another test file and no path is added.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 0


@pytest.fixture(autouse=True)
def seed_everything() -> None:
    """Seed random, numpy and torch before each test so that random models and data repeat."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    # Seeds alone do not fix cuDNN's choice of algorithm.
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Return `../shared` next to the repository (the offline fixtures), or skip when it is absent."""
    path = REPO_ROOT.parent / "shared"
    if not path.is_dir():
        pytest.skip("../shared (fixtures) is absent")
    return path


@pytest.fixture(scope="module")
def sweep():
    """`(positions, measurements)` of a synthetic two-seed sweep with the measurement schema (`helpers.sweeps`)."""
    from helpers.sweeps import two_seed_sweep

    return two_seed_sweep()
