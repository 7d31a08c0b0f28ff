"""fisherlib.report.notebooks: an executed notebook made byte-stable for results/<run>/notebooks/."""

from __future__ import annotations

import nbformat

from fisherlib.report.notebooks import link_target, publishable, publishable_text

ROOT = "/abs/repo"


def _executed(stage: str = f"{ROOT}/runs/r/staged", cache_line: str = "positions written to") -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.update(
        widgets={"application/vnd.jupyter.widget-state+json": {"state": {}}},
        papermill={"duration": 1.5, "start_time": "2026", "end_time": "2026", "output_path": f"{ROOT}/runs/r/.x.ipynb",
                   "input_path": "notebooks/01_x.ipynb", "parameters": {"run_name": "r"}, "exception": None},
    )  # fmt: skip
    injected = nbformat.v4.new_code_cell('run_name = "r"', metadata={"tags": ["injected-parameters"], "papermill": {"duration": 0.1}})
    injected["id"] = "5f3a1b2c"
    work = nbformat.v4.new_code_cell("work()", execution_count=3, metadata={"execution": {"iopub.status.idle": "2026"}})
    work.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"tables -> {stage}/results/r\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "abc"}, "text/plain": "0%|"}),
        nbformat.v4.new_output("stream", name="stderr", text=f"INFO fisherlib: {cache_line} {ROOT}/results/r/cache/positions-seed0\n"),
        nbformat.v4.new_output("stream", name="stderr", text=f"INFO fisherlib: figure spectra written to {stage}/figures/r/spectra (.png, .pdf)\n"),
        nbformat.v4.new_output("stream", name="stdout", text="400 positions\n"),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 700x400 with 1 Axes>"}),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"PosixPath('{stage}/results/r/t.csv')"}, execution_count=3),
    ]  # fmt: skip
    work.outputs.append(nbformat.v4.new_output("execute_result", data={"text/plain": "{'git_commit': 'b1bcd117acab'}"}, execution_count=4))
    notebook.cells = [nbformat.v4.new_markdown_cell("# 01 · x"), injected, work]
    for number, cell in enumerate(notebook.cells[::2]):
        cell["id"] = f"cell-{number}"
    return notebook


REPLACEMENTS = [(f"{ROOT}/runs/r/staged/", ""), (f"{ROOT}/", "")]


def _link(name: str) -> str:
    return f"../../../figures/r/{name}.png"


def test_volatile_metadata_goes_and_the_injected_parameters_stay():
    published = publishable(_executed(), REPLACEMENTS, _link)
    assert "widgets" not in published.metadata
    assert published.metadata.papermill == {"input_path": "notebooks/01_x.ipynb", "parameters": {"run_name": "r"}, "exception": None}
    injected, work = published.cells[1], published.cells[2]
    assert injected.id == "injected-parameters" and injected.source == 'run_name = "r"' and "papermill" not in injected.metadata
    assert "execution" not in work.metadata and work.execution_count == 3


def test_outputs_lose_paths_widgets_and_cache_traffic_and_figures_become_links():
    outputs = publishable(_executed(), REPLACEMENTS, _link).cells[2].outputs
    assert [o.output_type for o in outputs] == ["stream", "stream", "display_data", "execute_result", "execute_result"]
    assert outputs[0].name == "stdout" and outputs[0].text == "tables -> results/r\n400 positions\n"
    assert outputs[1].name == "stderr" and outputs[1].text == "INFO fisherlib: figure spectra written to figures/r/spectra (.png, .pdf)\n"
    assert outputs[2].data["text/markdown"] == "![spectra](../../../figures/r/spectra.png)" and "image/png" not in outputs[2].data
    assert link_target(outputs[2]) == "../../../figures/r/spectra.png"
    assert outputs[3].data["text/plain"] == "PosixPath('results/r/t.csv')"
    assert outputs[4].data["text/plain"] == "{'git_commit': '<commit>'}"  # the commit a notebook cannot hold


def test_a_warm_and_a_cold_cache_publish_the_same_bytes_from_any_checkout():
    cold = nbformat.writes(_executed(cache_line="positions written to"))
    warm = nbformat.writes(_executed(cache_line="positions loaded from cache"))
    other = nbformat.writes(_executed(stage="/elsewhere/runs/r/staged")).replace(ROOT, "/elsewhere")
    first = publishable_text(cold, REPLACEMENTS, _link)
    assert publishable_text(warm, REPLACEMENTS, _link) == first
    assert publishable_text(other, [(p.replace(ROOT, "/elsewhere"), r) for p, r in REPLACEMENTS], _link) == first
    assert publishable_text(first, REPLACEMENTS, _link) == first  # publishing a published notebook changes nothing
    assert ROOT not in first and first.endswith("}\n")


def test_an_image_no_log_line_names_stays_embedded():
    notebook = _executed()
    notebook.cells[2].outputs = [o for o in notebook.cells[2].outputs if "figure spectra" not in o.get("text", "")]
    outputs = publishable(notebook, REPLACEMENTS, _link).cells[2].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)
