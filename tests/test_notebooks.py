"""The notebooks: one parameters cell each, committed without outputs, a smoke run of all, and hand runs.

The smoke run executes every notebook through papermill with small parameters on the embedded default
(`tiny`, published as a run) and 01→09 on the stories260K fixture (the local tier), then checks every
expected table and figure. The hand runs then tweak one parameter of each notebook, as a reader would: a
notebook stands on its own, reusing the published run's caches read-only and computing the rest.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from fisherlib.data.corpora import fixture_corpora
from fisherlib.io.tables import read_table_file
from fisherlib.report.paper import EXPECTED_FIGURES, EXPECTED_TABLES
from fisherlib.run.parameter_docs import notebook_cell_source, notebook_reads_file, parameters_cell
from fisherlib.run.params import OUTPUT_LOCATION_FIELDS, RUN_IDENTITY, StudyParams

ROOT = Path(__file__).resolve().parents[1]
ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The smoke runs execute, in order, every notebook whose outputs fisherlib.report.paper lists.
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.stem in EXPECTED_TABLES]
SMOKE = dict(
    n_positions=40, eps_grid=[0.01, 0.1, 1.0], small_eps=0.01, large_eps=1.0, n_random=4, n_control=2,
    max_context=96, pool_factor=2, batch_size=8, layer_positions=8, layer_eig=1, layer_per_class=2, plateau_pairs=6,
    plateau_steps=21, steer_texts=3, steer_tokens=12, steer_target_tokens=4, steer_generate=4,
)  # fmt: skip
NOTEBOOK = {path.stem[:2]: path for path in ALL_NOTEBOOKS}


def _smoke_revisions() -> list[str]:
    """Two of tiny's shipped revisions, an early checkpoint and the final model: notebook 10 kept small."""
    from fisherlib.models.tiny import tiny_revisions

    revisions = tiny_revisions()
    return [revisions[3], revisions[-1]]


REVISIONS = _smoke_revisions()


def _parameters(path: Path) -> dict:
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}"
    tree = ast.parse(cells[0].source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_every_listed_notebook_exists_in_order():
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED_TABLES)
    assert set(EXPECTED_FIGURES) <= set(EXPECTED_TABLES)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_declares_its_own_parameters(path):
    """The parameters cell holds the run's identity and exactly the parameters the notebook reads, at their defaults."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} holds outputs: clear them"
    declared = _parameters(path)
    reads = notebook_reads_file(path) - set(OUTPUT_LOCATION_FIELDS)
    assert set(declared) == set(RUN_IDENTITY) | reads, (
        f"{path.name}: its parameters cell lacks {sorted(set(RUN_IDENTITY) | reads - set(declared))} and holds "
        f"{sorted(set(declared) - set(RUN_IDENTITY) - reads)} it does not read: run `python tools/sync_parameters.py`"
    )
    assert parameters_cell(path) == notebook_cell_source(path)  # at their defaults, in declaration order
    StudyParams.create(**declared)  # the defaults themselves are valid


def test_every_parameter_is_read_by_some_notebook_and_notebook_11_shows_few():
    shown = set().union(*(_parameters(p) for p in ALL_NOTEBOOKS))
    fields = set(StudyParams.__dataclass_fields__)
    assert shown | set(OUTPUT_LOCATION_FIELDS) == fields, f"no notebook reads {sorted(fields - shown - set(OUTPUT_LOCATION_FIELDS))}"
    assert len(_parameters(NOTEBOOK["11"])) < 25


@pytest.mark.parametrize("params_file", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_only_set_declared_parameters(params_file):
    values = yaml.safe_load(params_file.read_text()) or {}
    # make passes the file to every notebook: a name another notebook reads is accepted by all of them.
    declared = set(StudyParams.__dataclass_fields__)
    assert set(values) <= declared, f"{params_file.name} sets undeclared {set(values) - declared}"
    StudyParams.create(**values)


def _run_all(tmp_path: Path, notebooks=NOTEBOOKS, **parameters) -> Path:
    import papermill

    parameters = SMOKE | parameters | _locations(tmp_path)
    (tmp_path / "runs").mkdir(parents=True)
    for path in notebooks:
        papermill.execute_notebook(
            str(path), str(tmp_path / "runs" / path.name), parameters=parameters, kernel_name="python3",
            cwd=str(ROOT / "notebooks"), progress_bar=False,
        )  # fmt: skip
    return tmp_path


def _locations(root: Path) -> dict[str, str]:
    return dict(results_root=str(root / "results"), figures_root=str(root / "figures"))


def _check_outputs(root: Path, run: str, notebooks=None) -> None:
    for notebook, names in EXPECTED_TABLES.items():
        if notebooks is not None and notebook not in notebooks:
            continue
        for name in names:
            csv = root / "results" / run / f"{name}.csv"
            assert csv.is_file(), f"{notebook} did not write {csv}"
            table = read_table_file(csv)
            assert len(table) > 0, f"{csv} is empty"
            assert not table.select_dtypes("number").isna().any().any(), f"{csv} holds NaN"
            assert "parameters:" in (root / "results" / run / f"{name}.md").read_text()
    for notebook, names in EXPECTED_FIGURES.items():
        if notebooks is not None and notebook not in notebooks:
            continue
        for name in names:
            for suffix in (".png", ".pdf"):
                figure = root / "figures" / run / f"{name}{suffix}"
                assert figure.is_file() and figure.stat().st_size > 1000, f"{notebook} did not write {figure}"


@pytest.fixture(scope="module")
def tiny_smoke_run(tmp_path_factory):
    """Every notebook (10 over two checkpoints) on the embedded default, published as run `tiny` (its run.json)."""
    root = _run_all(tmp_path_factory.mktemp("smoke"), ALL_NOTEBOOKS, arch="tiny", run_name="tiny", revisions=REVISIONS)
    (root / "results" / "tiny" / "run.json").write_text(json.dumps({"run": "tiny", "complete": True}) + "\n")
    return root


@pytest.mark.notebooks
@pytest.mark.slow
def test_all_notebooks_run_on_the_embedded_default(tiny_smoke_run):
    _check_outputs(tiny_smoke_run, "tiny")


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.integration
def test_all_notebooks_run_on_the_local_tier(tmp_path, shared_dir):
    model = shared_dir / "fixtures" / "models" / "stories260K" / "hf"
    # stories260K is 64 wide: the control directions need top_k below that.
    root = _run_all(tmp_path, arch=str(model), run_name="stories-smoke", corpora=fixture_corpora(shared_dir), top_k=32)
    _check_outputs(root, "stories-smoke")
    manifest = json.loads(next((root / "results" / "stories-smoke" / "cache").glob("positions-*/manifest.json")).read_text())
    assert manifest["model_id"].endswith("stories260K/hf")


def _random_folder(config, folder: Path) -> Path:
    """`config`'s model with tiny's tokenizer (V = 512) as an HF folder: random init, 2-D weights scaled by 3 so that its
    distributions are peaked enough for the study's thresholds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _gpt_neo_folder(folder: Path) -> Path:
    """A GPT-Neo folder: 4 blocks alternating global and 32-token local attention. GPT-Neo keeps its own attention
    code, and its local window binds on the run's 96-token contexts: the layer engine's full-context path."""
    from transformers import GPTNeoConfig

    config = GPTNeoConfig(
        hidden_size=64, num_layers=4, num_heads=4, attention_types=[[["global", "local"], 2]], window_size=32,
        max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return _random_folder(config, folder)


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.integration
def test_the_layer_notebooks_run_on_a_gpt_neo_folder(tmp_path, shared_dir):
    folder = _gpt_neo_folder(tmp_path / "gpt-neo")
    layer_notebooks = [NOTEBOOK[n] for n in ("01", "08", "09", "11")]
    root = _run_all(
        tmp_path / "run", layer_notebooks, arch=str(folder), run_name="neo-smoke", corpora=fixture_corpora(shared_dir),
        top_k=32, layer_positions=4, steer_texts=2,
    )  # fmt: skip
    _check_outputs(root, "neo-smoke", [p.stem for p in layer_notebooks])
    card = read_table_file(root / "results" / "neo-smoke" / "model_card.csv").iloc[0]
    assert card["layer_engine"] == "full-context" and "GPTNeoForCausalLM" in card["layer_engine_reason"]
    executed = nbformat.read(root / "runs" / "08_layer_pullback.ipynb", as_version=4)
    said = "".join(o.get("data", {}).get("text/markdown", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "ran on the full-context engine" in said


ALL_ARCHITECTURES = os.environ.get("FISHERLIB_ALL_ARCHITECTURES") == "1"


def _battery_folder(name: str, folder: Path) -> Path:
    """The layer-engine battery's `name` (tests/helpers/battery.py) as an HF folder."""
    from helpers.battery import configs

    return _random_folder(configs()[name], folder)


def _battery_names() -> list[str]:
    from helpers.battery import configs

    return sorted(configs())


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not ALL_ARCHITECTURES, reason="notebooks 01, 08 and 09 on every architecture: make test-architectures")
@pytest.mark.parametrize("name", _battery_names())
def test_the_layer_notebooks_run_on_every_architecture(tmp_path, shared_dir, name):
    folder = _battery_folder(name, tmp_path / name)
    layer_notebooks = [NOTEBOOK[n] for n in ("01", "08", "09")]
    # The battery's models are 32 wide with 64 positions: top_k and the contexts fit inside.
    root = _run_all(
        tmp_path / "run", layer_notebooks, arch=str(folder), run_name=f"{name}-smoke", corpora=fixture_corpora(shared_dir),
        top_k=16, max_context=48, layer_positions=4,
    )  # fmt: skip
    _check_outputs(root, f"{name}-smoke", [p.stem for p in layer_notebooks])


# --- hand runs: a tweaked notebook stands on its own ------------------------------------------------

TWEAKS = {  # one analysis parameter per notebook: none of them is in a measurement's cache key
    "02": dict(resample_unit="position"),
    "03": dict(large_eps=0.1),
    "04": dict(small_eps=0.1),
    "05": dict(large_eps=0.1),
    "06": dict(calibration_space="log"),
    "07": dict(resample_unit="position"),
    "08": dict(small_eps=0.1),
    "09": dict(plateau_jump=3.0),
    "10": dict(resample_unit="position"),
    "11": dict(resample_unit="position"),  # every steering parameter is in the measurement's key
}


def _hand_run(path: Path, out: Path, root: Path, **tweak) -> str:
    """Run `path` as a reader would (no run_name, no cache_dir) after `tweak`; return what it printed."""
    import papermill

    parameters = SMOKE | dict(revisions=REVISIONS) | _locations(root) | tweak
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    outputs = [o for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", [])]
    return "".join("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "") for o in outputs)


def _tree(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def _scratch_entries(root: Path) -> list[str]:
    cache = root / "results" / "scratch" / "cache"
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(TWEAKS))
def test_a_tweaked_notebook_reuses_the_published_caches(tiny_smoke_run, number, tmp_path):
    root = tiny_smoke_run
    before = _tree(root / "results" / "tiny", root / "figures" / "tiny")
    printed = _hand_run(NOTEBOOK[number], tmp_path / f"{number}.ipynb", root, **TWEAKS[number])
    assert _scratch_entries(root) == [], "the hand run measured what the published run holds"
    assert _tree(root / "results" / "tiny", root / "figures" / "tiny") == before
    assert "(published run tiny, read-only)" in printed  # the one line that says which cache it used


@pytest.mark.notebooks
@pytest.mark.slow
def test_a_measurement_parameter_recomputes_only_its_step(tiny_smoke_run, tmp_path):
    root = tiny_smoke_run
    before = _tree(root / "results" / "tiny", root / "figures" / "tiny")
    try:
        printed = _hand_run(NOTEBOOK["04"], tmp_path / "04.ipynb", root, top_k=32)
        made = _scratch_entries(root)
        tabled = (root / "results" / "scratch" / "table1_top_eigvec.csv").is_file()
    finally:
        shutil.rmtree(root / "results" / "scratch", ignore_errors=True)  # the other hand runs start from none
    assert "direction sweep (seed 0): computed and written to" in printed
    assert any(name.startswith("sweep-seed0-") for name in made) and any(name.startswith("positions-seed0-") for name in made)
    assert _tree(root / "results" / "tiny", root / "figures" / "tiny") == before and tabled
