"""The write-up's numbers (`fisherlib.report.reference`) and where they are printed beside ours."""

import pytest

from fisherlib.report import reference
from fisherlib.steps import calibration as cal
from fisherlib.steps import direction_classes as dc
from fisherlib.steps import exactness as ex


def test_reference_numbers_exist_for_the_three_architectures():
    for key in ("qwen", "llama", "pythia"):
        ref = reference.WRITE_UP[key]
        assert set(ref["table2"]) == {"structured", "tangent", "random", "eigvec"}
        assert ref["table1"]["ci"][0] < ref["table1"]["median"] < ref["table1"]["ci"][1]
        assert 0 < ref["calibration"]["raw"] < ref["calibration"]["calibrated_pooled"] < 1
    assert reference.WRITE_UP["qwen"]["table1"]["median"] == 1.002
    assert reference.WRITE_UP["pythia"]["table2"]["eigvec"] == 0.72
    hub_ids = [("Qwen/Qwen3-1.7B", "qwen"), ("meta-llama/Llama-3.2-1B", "llama"), ("EleutherAI/pythia-1b", "pythia")]
    for arch, key in hub_ids + [("llama", "llama")]:
        assert reference.arch_key(arch) == key
    assert reference.arch_key("tiny") is None and reference.arch_key("/models/stories260K/hf") is None


def test_with_reference_adds_a_column_only_for_the_study_models(sweep):  # noqa: F811
    _, measurements = sweep
    table = dc.median_rho_by_class(measurements, 1.0, n_boot=50)
    assert reference.with_reference(table, "table2_rho_by_class", "tiny") is table
    with_ref = reference.with_reference(table, "table2_rho_by_class", "EleutherAI/pythia-1b").set_index("cls")
    assert with_ref.loc["eigvec", "write-up"] == "0.72" and with_ref.loc["control", "write-up"] == ""
    table1 = ex.top_eigvec_exactness(measurements, 0.01, n_boot=50)
    table1 = reference.with_reference(table1, "table1_top_eigvec", "qwen")
    assert table1["write-up"].iloc[-1].startswith("1.002 [0.999, 1.005]") and table1["write-up"].iloc[0] == ""
    calibration = cal.calibrate_isotonic_cv(measurements, n_splits=4, eps=1.0, spaces=cal.SPACES)
    calibration = reference.with_reference(calibration, "calibration_within50", "llama")
    linear = calibration[(calibration.cls == "all") & (calibration.space != "log")].set_index("method")["write-up"]
    assert linear["raw"] == "51%" and linear["calibrated_pooled"] == "68%"
    # The write-up calibrated in linear space: log-space rows have no counterpart.
    assert (calibration[calibration.space == "log"]["write-up"] == "").all()
    with pytest.raises(KeyError):
        reference.with_reference(table, "no_such_table", "qwen")
