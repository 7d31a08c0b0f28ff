"""The run's cached measurements: a corrupt entry is reported in one line and recomputed to the same table."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from fisherlib.io.cache import checksum_file
from fisherlib.run import measurements
from fisherlib.run.inputs import sample_folder
from fisherlib.run.measurements import load_sweep, run_layer_spectra, run_lens_top_eigvec, run_sweep, sweep_path
from fisherlib.run.params import StudyParams


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    return StudyParams.create(
        n_positions=10, n_random=2, n_control=1, eps_grid=[0.01, 1.0], results_root=str(root), figures_root=str(root),
        run_name="corrupt",
    )  # fmt: skip


@pytest.mark.slow
def test_a_truncated_sweep_is_recomputed_to_the_same_table(params, caplog):
    clean = run_sweep(params, 0, progress=False)
    path = sweep_path(params, 0)
    path.write_bytes(path.read_bytes()[:100])  # today: ArrowInvalid "Parquet magic bytes not found in footer"
    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        with pytest.raises(FileNotFoundError, match="no sweep"):  # the reading notebooks say where it comes from
            load_sweep(params, 0)
        again = run_sweep(params, 0, progress=False)
    corrupt = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert corrupt and corrupt[0].startswith(f"cache entry {path} is corrupt (") and corrupt[0].endswith("; recomputing it")
    pd.testing.assert_frame_equal(again.measurements, clean.measurements)
    assert checksum_file(path).is_file() and load_sweep(params, 0).measurements.equals(clean.measurements)


@pytest.mark.slow
def test_a_damaged_sample_is_resampled_to_the_same_positions(params, caplog):
    from fisherlib.run.inputs import load_sample

    clean = load_sample(params, 0, progress=False)
    (sample_folder(params, 0) / "tensors.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        again = load_sample(params, 0, progress=False)
    assert "tensors.pt: 0 bytes where" in caplog.text
    pd.testing.assert_frame_equal(again.table, clean.table)
    assert again.h.equal(clean.h)


@pytest.mark.slow
def test_the_lens_top_eigvec_is_cached_apart_from_the_dense_pass(tmp_path, monkeypatch):
    from fisherlib.steps import jacobian_lens

    values = dict(n_positions=10, n_random=2, n_control=1, eps_grid=[0.01, 1.0], layers=[2, "head"], layer_positions=4,
                  layer_dense_positions=2, layer_per_class=1, results_root=str(tmp_path), figures_root=str(tmp_path), run_name="lens")  # fmt: skip
    params = StudyParams.create(**values)
    lines = run_lens_top_eigvec(params, 0, progress=False)
    assert len(lines) == 2 * 2 * 2 * 2 and set(lines["layer"]) == {"2", "head"}  # layers × positions × signs × ε
    paths = measurements.dense_layer_cache_files(params, 0)
    written = {name: path.read_bytes() for name, path in paths.items()}

    def measured(*args, **kwargs):
        raise AssertionError("a cached dense pass was measured again")

    with monkeypatch.context() as patch:
        patch.setattr(jacobian_lens, "measure_lens", measured)
        pd.testing.assert_frame_equal(run_lens_top_eigvec(params, 0, progress=False), lines)
        run_layer_spectra(params, 0, progress=False)  # its entries were written by the same pass
    # layer_rtol is in the boundaries' key only: a new entry for them, the spectra and lens entries untouched.
    finer = StudyParams.create(**values, layer_rtol=1e-5)
    finer_paths = measurements.dense_layer_cache_files(finer, 0)
    assert finer_paths["spectra"] == paths["spectra"] and finer_paths["lens-top-eigvec"] != paths["lens-top-eigvec"]
    again = run_lens_top_eigvec(finer, 0, progress=False)
    assert {name: path.read_bytes() for name, path in paths.items()} == written
    assert finer_paths["lens-top-eigvec"].is_file() and checksum_file(finer_paths["lens-top-eigvec"]).is_file()
    np.testing.assert_allclose(again["t_emp"], lines["t_emp"], rtol=1e-3)
