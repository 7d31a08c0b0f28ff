"""Notebook parameters are validated with clear messages; outputs record them and hold no NaN."""

import math

import pandas as pd
import pytest

from fisherlib.core.errors import ParameterError
from fisherlib.run.outputs import read_table, save_table
from fisherlib.run.params import StudyParams


def test_defaults_and_conversions():
    params = StudyParams.create(n_positions=50.0, eps_grid=[1, 0.01], small_eps=0.01, large_eps=1, seeds="0 1 2", corpora="a.jsonl b.txt")
    assert params.n_positions == 50 and params.eps_grid == [1.0, 0.01]
    assert params.seed_list == [0, 1, 2] and params.corpus_list == ["a.jsonl", "b.txt"]
    assert StudyParams.create().corpus_list == ["stdlib-code", "stdlib-docs"]
    assert StudyParams.create(arch="pythia").corpus_list == ["gsm8k", "codeparrot", "ultrachat", "wikitext"]
    # A hand run writes to the scratch run; make (and anyone else) names the run.
    assert StudyParams.create(arch="/models/my-model/").name == "scratch"
    assert StudyParams.create(arch="/models/my-model/", run_name="my-model").name == "my-model"
    with pytest.raises(ParameterError, match="run_name"):
        StudyParams.create(run_name="../results/tiny")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n_positions="400"), "n_positions='400' has type str; expected int"),
        (dict(eps_grid="0.1"), "expected a list of positive numbers"),
        (dict(top_k=True), "top_k=True has type bool"),
        (dict(seeds=[0, "1"]), "expected a list of integers"),
        (dict(n_position=3), "unknown parameter 'n_position' (did you mean n_positions?)"),
        (dict(divergence="js"), "divergence must be 'forward' or 'reverse'"),
        (dict(large_eps=0.7), "must be in eps_grid"),
        (dict(n_positions=2), "at least 5"),
    ],
)
def test_wrong_parameters_are_refused_with_what_to_fix(bad, message):
    with pytest.raises(ParameterError) as error:
        StudyParams.create(**bad)
    assert message in str(error.value)


def test_from_namespace_picks_known_names_only():
    params = StudyParams.from_namespace({"arch": "qwen", "n_positions": 10, "unrelated": object(), "__name__": "x"})
    assert params.arch == "qwen" and params.n_positions == 10


def test_save_table_records_parameters_and_refuses_nan(tmp_path):
    params = StudyParams.create(results_root=str(tmp_path), run_name="unit")
    table = pd.DataFrame({"cls": ["a", "b"], "rho": [1.0, math.inf]})
    path = save_table(table, "example", params, caption="An example")
    assert path == tmp_path / "unit" / "example.csv"
    assert '"run_name": "unit"' in path.read_text().splitlines()[0]
    assert "An example" in path.with_suffix(".md").read_text()
    pd.testing.assert_frame_equal(read_table("example", params), table)
    with pytest.raises(ValueError, match="NaN"):
        save_table(pd.DataFrame({"rho": [float("nan")]}), "bad", params)
    assert not (tmp_path / "unit" / "bad.csv").exists()


def test_cache_keys_follow_the_parameters():
    a, b = StudyParams.create(), StudyParams.create(n_positions=50)
    assert a.key("arch", "top_k") == b.key("arch", "top_k")
    assert a.key("n_positions") != b.key("n_positions")


def _fake_model(vocab: int, width: int, positions: int):
    from types import SimpleNamespace

    head = SimpleNamespace(n_tokens=vocab, vocab_size=vocab, hidden_size=width)
    return SimpleNamespace(head=head, model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions)), model_id="m")


def test_parameters_are_checked_against_the_model_before_any_work():
    from fisherlib.run.inputs import check_against_model

    check_against_model(StudyParams.create(top_k=64), _fake_model(512, 256, 2048))
    with pytest.raises(ParameterError, match=r"top_k=600 must be below the vocabulary V=512"):
        check_against_model(StudyParams.create(top_k=600), _fake_model(512, 1024, 2048))
    with pytest.raises(ParameterError, match=r"top_k=64 must be below the width d=64 .* or set n_control=0"):
        check_against_model(StudyParams.create(top_k=64), _fake_model(512, 64, 2048))
    check_against_model(StudyParams.create(top_k=64, n_control=0), _fake_model(512, 64, 2048))
    with pytest.raises(ParameterError, match=r"max_context=256 exceeds the model's 128 positions"):
        check_against_model(StudyParams.create(), _fake_model(512, 256, 128))


def test_a_short_sample_is_an_error_not_a_warning():
    from types import SimpleNamespace

    from fisherlib.run.inputs import check_sample_size

    check_sample_size(StudyParams.create(n_positions=40), [SimpleNamespace()] * 40, seed=0)
    with pytest.raises(ParameterError, match=r"the corpora gave 28 positions of the n_positions=400 asked"):
        check_sample_size(StudyParams.create(), [SimpleNamespace()] * 28, seed=0)


def test_a_list_parameter_of_the_wrong_type_says_how_to_pass_a_list():
    with pytest.raises(ParameterError, match=r'-y "eps_grid: \['):
        StudyParams.create(eps_grid="0.1")


def test_a_misspelled_parameter_is_refused_with_the_closest_name():
    from fisherlib.core.errors import ParameterError

    with pytest.raises(ParameterError, match=r"unknown parameter 'n_postions' \(did you mean n_positions\?\): nothing was run"):
        StudyParams.create(n_postions=100)
    with pytest.raises(ParameterError, match=r"unknown parameters 'lyers' \(did you mean layers\?\), 'zzz'"):
        StudyParams.create(lyers=[1], zzz=1)


def test_from_namespace_reads_the_parameter_cells_a_kernel_ran():
    """papermill's injected cell (or the parameters cell edited by hand) is in IPython's `In`."""
    from fisherlib.core.errors import ParameterError
    from fisherlib.run.params import parameters_cell_source

    for injected in ('# Parameters\nn_postions = 100\nrun_name = "x"\n', "# Parameters\nn_postions = 100\n"):
        with pytest.raises(ParameterError, match="did you mean n_positions"):
            StudyParams.from_namespace({"In": ["", parameters_cell_source(), injected], "n_postions": 100})
    # Analysis cells that assign (a computed value, or a literal but no parameter) are not parameter cells.
    analysis = ["seed0 = params.seed_list[0]\nunit = params.resample_unit", "threshold = 0.5\nlabel = 'x'"]
    assert StudyParams.from_namespace({"In": ["", parameters_cell_source(), *analysis]}).n_positions == 400


def test_two_corpora_of_one_domain_are_refused_before_any_work(tmp_path):
    with pytest.raises(ParameterError) as error:
        StudyParams.create(corpora=[f"a={tmp_path}/x.jsonl", f"a={tmp_path}/y.jsonl"])
    message = str(error.value)
    assert "domain 'a'" in message and "y.jsonl" in message and "rename" in message.lower()
