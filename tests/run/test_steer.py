"""`fisherlib steer`: vector files round-trip, the command's α is the Python API's, bad input stops with one line."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fisherlib as fl
from fisherlib.core.errors import InputError
from fisherlib.io.vectors import load_vector, read_control_vector, save_vector
from fisherlib.models import loading
from fisherlib.run import steer as S
from fisherlib.run.cli import main

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 256  # tiny's residual width
PROMPTS = ["Once upon a time", "The fox ran."]


def _vector(width: int = WIDTH, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(width, dtype=torch.float64, generator=generator)
    return scale * v / v.norm()  # not unit: α's units are v's


def _write_repeng_gguf(path: Path, directions: dict[int, np.ndarray], model_hint: str = "llama") -> Path:
    """A control vector as repeng's `ControlVector.export_gguf` writes it."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, direction in directions.items():
        writer.add_tensor(f"direction.{layer}", direction)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- vector files ---------------------------------------------------------------------------------------------


def test_each_format_round_trips(tmp_path):
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    v = _vector(16)
    torch.save(v, tmp_path / "a.pt")
    torch.save({"steer": v}, tmp_path / "b.pth")
    np.save(tmp_path / "c.npy", v.numpy())
    save_file({"only": v}, str(tmp_path / "d.safetensors"))
    save_numpy({"x": v.numpy().astype(np.float32), "y": v.numpy()}, str(tmp_path / "e.safetensors"))
    for name in ("a.pt", "b.pth", "c.npy", "d.safetensors"):
        loaded = load_vector(tmp_path / name)
        assert loaded.dtype == torch.float64 and torch.equal(loaded, v), name
    assert torch.equal(load_vector(tmp_path / "b.pth", key="steer"), v)
    assert torch.equal(load_vector(tmp_path / "e.safetensors", key="y"), v)
    assert torch.equal(load_vector(tmp_path / "e.safetensors", key="x"), v.float().double())
    # save_vector writes what load_vector reads, in every format.
    for name in ("f.pt", "g.npy", "h.safetensors"):
        assert torch.equal(load_vector(save_vector(tmp_path / name, v)), v)
    assert torch.equal(load_vector(save_vector(tmp_path / "i.pt", v, key="k"), key="k"), v)


def test_repeng_gguf_direction_i_is_our_layer_i_plus_1(tmp_path):
    directions = {i: _vector(16, seed=i).numpy().astype(np.float32) for i in (0, 1, 3)}
    path = _write_repeng_gguf(tmp_path / "cv.gguf", directions)
    found, metadata = read_control_vector(path)
    assert sorted(found) == [0, 1, 3] and metadata["controlvector.model_hint"] == "llama"
    assert metadata["controlvector.layer_count"] == 3 and metadata["general.architecture"] == "controlvector"
    for layer in (1, 2, 4):
        assert torch.equal(load_vector(path, layer=layer), torch.from_numpy(directions[layer - 1]).double())
    assert torch.equal(load_vector(path, key="direction.3"), torch.from_numpy(directions[3]).double())
    with pytest.raises(InputError, match=r"no direction for layer 3 .*direction\.2.*holds layers 1, 2, 4"):
        load_vector(path, layer=3)
    with pytest.raises(InputError, match=r"our layer 2, not layer 3"):
        load_vector(path, key="direction.1", layer=3)
    with pytest.raises(InputError, match=r"layers 1, 2, 4 .*--layer"):
        load_vector(path)
    # save_vector writes the same convention (float32, as repeng does).
    v = _vector(16)
    written = save_vector(tmp_path / "one.gguf", v, layer=2, model_hint="gpt2")
    assert sorted(read_control_vector(written)[0]) == [1]
    assert torch.equal(load_vector(written, layer=2), v.float().double())


def test_vector_files_refused_with_one_line(tmp_path):
    v = _vector(8)
    torch.save({"a": v, "b": v.clone()}, tmp_path / "two.pt")
    from safetensors.torch import save_file

    save_file({"a": v, "b": v.clone()}, str(tmp_path / "two.safetensors"))
    for name in ("two.pt", "two.safetensors"):
        with pytest.raises(InputError, match=r"holds 2 tensors \(a, b\): pick one with --key"):
            load_vector(tmp_path / name)
        with pytest.raises(InputError, match=r"no key 'c'; its keys are a, b"):
            load_vector(tmp_path / name, key="c")
    with pytest.raises(InputError, match="no vector file"):
        load_vector(tmp_path / "absent.npy")
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(InputError, match=r"unknown vector format '\.txt'"):
        load_vector(tmp_path / "v.txt")
    np.save(tmp_path / "m.npy", np.ones((3, 4)))
    with pytest.raises(InputError, match=r"shape \(3, 4\), not one vector"):
        load_vector(tmp_path / "m.npy")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(InputError, match="cannot be read as a GGUF file"):
        load_vector(tmp_path / "bad.gguf", layer=1)


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert S.read_prompts(tmp_path / "p.txt") == ["first prompt", "second prompt"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"prompt": "two", "id": 3}) + "\n")
    assert S.read_prompts(tmp_path / "p.jsonl") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"other": "x"}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:1: no \"text\" or \"prompt\""):
        S.read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(InputError, match="holds no prompts"):
        S.read_prompts(tmp_path / "empty.txt")


# -- the command ---------------------------------------------------------------------------------------------


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["steer", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    options = [o for a in S.add_arguments(argparse.ArgumentParser())._actions for o in a.option_strings if o.startswith("--")]
    expected = ["--model", "--layer", "--vector", "--key", "--prompts", "--eps", "--quantile", "--method", "--generate",
                "--per-token", "--out", "--device", "--dtype"]  # fmt: skip
    assert set(expected) <= set(options)
    assert [o for o in options if o not in text] == []
    for method in ("closed", "quartic", "exact", "bisection", "corrected"):
        assert method in text


@pytest.fixture(scope="module")
def tiny():
    return fl.load_model("tiny")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_vector(tmp_path / "v.safetensors", _vector(), key="happy")
    return tmp_path


@pytest.fixture
def loaded(tiny, monkeypatch):
    """The command's model load, answered with the module's tiny (one load for every in-process run)."""
    calls = []

    def load_model(arch, device=None, dtype=None, **kwargs):
        calls.append((arch, device, dtype))
        return tiny

    monkeypatch.setattr(loading, "load_model", load_model)
    return calls


def _steer(files: Path, *extra: str, vector: str = "v.safetensors") -> list[str]:
    return ["steer", "--model", "tiny", "--layer", "2", "--vector", str(files / vector), "--prompts", str(files / "prompts.txt"), *extra]


def test_the_command_gives_the_python_apis_alpha(tiny, files, loaded, capsys):
    out = files / "budget.csv"
    argv = _steer(files, "--key", "happy", "--eps", "0.5", "1", "--method", "closed", "quartic", "--out", str(out), "--dtype", "float32")
    assert main(argv) == 0
    assert loaded == [("tiny", None, "float32")]
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert len(table) == 4 and list(table["method"]) == ["closed", "closed", "quartic", "quartic"]
    v = _vector()
    for row in table.itertuples():
        expected = fl.steering_scale(tiny, PROMPTS, 2, v, eps=row.eps, quantile=0.95, method=row.method)
        assert row.alpha == pytest.approx(expected.alpha, rel=1e-9)
        assert row.passes == expected.passes
        assert row.push_norm == pytest.approx(expected.alpha * 3.0, rel=1e-9)  # α·‖v‖, ‖v‖ = 3
        assert row.relative == pytest.approx(row.push_norm / row.mean_residual_norm, rel=1e-12)
        assert f"{row.alpha:.6g}" in printed
    assert table["vector_norm"].iloc[0] == pytest.approx(3.0)
    assert (table["layer"] == 2).all() and (table["key"] == "happy").all()
    # The mean residual norm is the residual stream's at layer 2 over every token but each prompt's first.
    tokens = [torch.tensor(tiny.tokenizer(p)["input_ids"]) for p in PROMPTS]
    r = fl.layers.engine.residuals_by_layer(tiny, [t[: i + 1] for t in tokens for i in range(1, len(t))], [2])[2]
    assert table["mean_residual_norm"].iloc[0] == pytest.approx(float(r.double().norm(dim=-1).mean()), rel=1e-9)
    assert "‖v‖ = 3" in printed and "alpha·v" in printed


def test_a_repeng_gguf_steers_at_its_layer(tiny, files, loaded, capsys):
    directions = {i: _vector(seed=10 + i).numpy().astype(np.float32) for i in range(4)}
    _write_repeng_gguf(files / "cv.gguf", directions, model_hint="tiny")
    out = files / "gguf.csv"
    assert main(_steer(files, "--out", str(out), "--method", "exact", vector="cv.gguf")) == 0
    expected = fl.steering_scale(tiny, PROMPTS, 2, torch.from_numpy(directions[1]).double(), eps=1.0, method="exact")
    row = pd.read_csv(out).iloc[0]
    assert row["alpha"] == pytest.approx(expected.alpha, rel=1e-9) and row["passes"] == expected.passes


def test_per_token_table(tiny, files, loaded, capsys):
    per_token = files / "per_token.csv"
    (files / "prompts.txt").write_text("The fox\n")  # the exact per-token search: one short prompt
    assert main(_steer(files, "--key", "happy", "--eps", "0.3", "--per-token", str(per_token))) == 0
    table = pd.read_csv(per_token)
    n_tokens = len(tiny.tokenizer("The fox")["input_ids"])
    assert len(table) == n_tokens and list(table.columns) == fl.steps.steering.BUDGET_COLUMNS
    assert "per-token budget" in capsys.readouterr().out


def test_generated_budget_is_generated_scales(tiny, files, loaded, capsys):
    generated = pytest.importorskip("fisherlib.steps.generated_steering")
    out = files / "generated.csv"
    assert main(_steer(files, "--key", "happy", "--generate", "2", "--method", "closed", "--out", str(out))) == 0
    expected = generated.generated_scale(tiny, PROMPTS, 2, _vector(), eps=1.0, quantile=0.95, n_generate=2, method="closed",
                                         divergence="steered_base")  # fmt: skip
    row = pd.read_csv(out).iloc[0]
    assert row["alpha"] == pytest.approx(expected.alpha, rel=1e-9) and row["generate"] == 2 and "level" in row
    assert "2 generated tokens per prompt" in capsys.readouterr().out
    assert main(_steer(files, "--key", "happy", "--generate", "2", "--method", "quartic")) == 2
    assert "unknown --method quartic with --generate: use closed|corrected|exact|bisection" in _one_line_error(capsys)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(vector="wide.pt"), r"has 255 entries, but layer 2 of tiny has residual width d = 256"),
        (dict(layer="9"), r"tiny has no layer 9: layers are 0\.\.4"),
        (dict(key="sad"), r"no key 'sad'; its keys are happy"),
        (dict(prompts="empty.txt"), r"holds no prompts"),
        (dict(vector="absent.safetensors"), r"no vector file .*absent\.safetensors"),
        (dict(prompts="absent.txt"), r"no prompt file .*absent\.txt"),
        (dict(vector="v.csv"), r"unknown vector format '\.csv'"),
        (dict(method="newton"), r"unknown --method newton: use closed\|quartic\|exact\|bisection"),
        (dict(eps="-1"), r"every --eps must be a positive number"),
    ],
    ids=["width", "layer", "key", "empty-prompts", "missing-vector", "missing-prompts", "format", "method", "eps"],
)
def test_bad_input_is_one_line_and_status_2(files, loaded, capsys, change, message):
    torch.save(_vector(WIDTH - 1), files / "wide.pt")
    (files / "empty.txt").write_text("\n\n")
    (files / "v.csv").write_text("1,2\n")
    options = dict(layer="2", vector="v.safetensors", prompts="prompts.txt", key="happy", method="closed", eps="1")
    options.update(change)
    if "vector" in change:
        options["key"] = None
    argv = ["steer", "--model", "tiny", "--layer", options["layer"], "--vector", str(files / options["vector"]),
            "--prompts", str(files / options["prompts"]), "--method", options["method"], "--eps", options["eps"]]  # fmt: skip
    if options["key"]:
        argv += ["--key", options["key"]]
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert re.search(message, line), line
    # Inputs readable without the model are checked before it loads.
    if change.get("vector") != "wide.pt" and "layer" not in change:
        assert loaded == []


def test_the_console_command_prints_a_budget(files):
    script = Path(sys.executable).with_name("fisherlib")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fisherlib.run.cli"]
    done = subprocess.run([*command, *_steer(files, "--key", "happy", "--eps", "0.5")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("steering budget of") and "layer 2 of tiny" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["eps", "quantile", "method", "alpha"])
    row = lines[header + 1].split()
    assert row[:3] == ["0.5", "0.95", "closed"] and float(row[3]) > 0
    assert "Traceback" not in done.stderr
