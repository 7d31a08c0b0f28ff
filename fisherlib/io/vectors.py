"""Steering vectors on disk: `.pt`/`.pth`, `.npy`, `.safetensors`, and llama.cpp control-vector GGUF files.

`load_vector(path, key=None, layer=None)` returns one vector `[d]` as float64, exactly as stored (never
normalised: a budget α is then in units of the vector as saved). `save_vector` writes the same formats (the
tests' round trips, and a way to hand a vector to the other tools).

- `.pt` / `.pth`: a tensor, or a dict holding tensors (`key` picks one; without it, the dict must hold exactly
  one). Read with `torch.load(weights_only=True)`: no pickled code runs.
- `.npy`: one array.
- `.safetensors`: `key` picks a tensor; without it, the file must hold exactly one.
- `.gguf`: a control vector as repeng's `ControlVector.export_gguf` writes it (architecture `controlvector`,
  metadata `controlvector.model_hint` and `controlvector.layer_count`, one tensor `direction.{i}` per layer).

**Layers.** Our `layer` ℓ is the residual stream entering decoder block ℓ (`0 … n_layers`; `n_layers` is
the final norm's input). repeng's `direction.{i}` is added to the *output* of decoder block `i`
(`ControlModule` wraps `model.layers[i]` and adds the control to what the block returns; its training reads
`hidden_states[i + 1]`, the same place), which is the residual entering block `i + 1`. So our layer ℓ reads
`direction.{ℓ - 1}`, and `save_vector(..., layer=ℓ)` writes `direction.{ℓ - 1}`; layer 0 (the embeddings'
output) has no repeng direction. A scalar or `[1, d]` array is accepted as a vector; anything else 2-D is
refused (which row would be meant?).

This module may import torch, numpy, safetensors and gguf, and `fisherlib.core` for its errors only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InputError

FORMATS = (".pt", ".pth", ".npy", ".safetensors", ".gguf")
GGUF_ARCH = "controlvector"
DIRECTION = "direction."


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: unknown vector format {path.suffix or '(no suffix)'!r}; use one of {', '.join(FORMATS)}")
    return suffix


def _pick(path: Path, tensors: dict, key: str | None):
    """The one tensor of `tensors` that `key` names (or the only one when `key` is None)."""
    names = sorted(tensors)
    if key is not None:
        if key not in tensors:
            raise InputError(f"{path}: no key {key!r}; its keys are {', '.join(names) or '(none)'}")
        return tensors[key]
    if len(names) != 1:
        listed = ", ".join(names) if names else "(none)"
        raise InputError(f"{path} holds {len(names)} tensors ({listed}): pick one with --key")
    return tensors[names[0]]


def _as_vector(path: Path, value, what: str = "") -> torch.Tensor:
    tensor = torch.as_tensor(np.array(value) if isinstance(value, np.ndarray) else value)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{path}{what} holds {tensor.dtype} values, not numbers")
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise InputError(f"{path}{what} holds a tensor of shape {tuple(tensor.shape)}, not one vector [d]")
    return tensor.detach().to("cpu", torch.float64).clone()


def _gguf_field(reader, name: str):
    field = reader.fields.get(name)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8", errors="replace")
    return value.tolist()[0]


def read_control_vector(path: str | os.PathLike) -> tuple[dict[int, np.ndarray], dict[str, object]]:
    """Return `({repeng layer i: direction [d] float32}, metadata)` of a control-vector GGUF file."""
    path = Path(path)
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file: say which
        raise InputError(f"{path} cannot be read as a GGUF file ({type(error).__name__}: {error})") from None
    metadata = {name: _gguf_field(reader, name) for name in ("general.architecture", f"{GGUF_ARCH}.model_hint", f"{GGUF_ARCH}.layer_count")}
    directions = {}
    for tensor in reader.tensors:
        suffix = tensor.name.removeprefix(DIRECTION)
        if tensor.name.startswith(DIRECTION) and suffix.isdigit():
            directions[int(suffix)] = np.array(tensor.data).reshape(-1)
    if not directions:
        names = ", ".join(t.name for t in reader.tensors[:6]) or "(none)"
        raise InputError(f"{path} is not a control vector: no tensor named direction.<layer> (architecture "
                         f"{metadata['general.architecture']!r}, tensors {names})")  # fmt: skip
    return directions, metadata


def _load_gguf(path: Path, key: str | None, layer: int | None) -> torch.Tensor:
    directions, _ = read_control_vector(path)
    ours = ", ".join(str(i + 1) for i in sorted(directions))
    if key is not None:
        suffix = key.removeprefix(DIRECTION)
        if not (key.startswith(DIRECTION) and suffix.isdigit() and int(suffix) in directions):
            raise InputError(f"{path}: no key {key!r}; its keys are {', '.join(DIRECTION + str(i) for i in sorted(directions))}")
        if layer is not None and int(suffix) != layer - 1:
            raise InputError(f"{path}: {key} is added after block {suffix}, i.e. our layer {int(suffix) + 1}, not layer {layer} "
                             f"(our layer ℓ reads direction.{{ℓ-1}}): drop --key or pass --layer {int(suffix) + 1}")  # fmt: skip
        return _as_vector(path, directions[int(suffix)], f" ({key})")
    if layer is None:
        if len(directions) != 1:
            raise InputError(f"{path} holds directions for layers {ours} (our numbering): pick one with --layer")
        (only,) = directions.values()
        return _as_vector(path, only)
    if layer - 1 not in directions:
        raise InputError(f"{path} has no direction for layer {layer} (it would be direction.{layer - 1}, added after block "
                         f"{layer - 1}); it holds layers {ours} (our numbering: direction.i is our layer i+1)")  # fmt: skip
    return _as_vector(path, directions[layer - 1], f" (direction.{layer - 1})")


def load_vector(path: str | os.PathLike, key: str | None = None, layer: int | None = None) -> torch.Tensor:
    """Return the steering vector stored at `path` as a float64 tensor `[d]`, as stored (not normalised).

    `key` picks a tensor of a dict-like file (`.pt` dict, `.safetensors`, or a GGUF's `direction.{i}`);
    `layer` (our numbering, the residual entering block ℓ) picks a control-vector GGUF's `direction.{ℓ-1}` and
    is not used by the other formats. Raises InputError: a missing file, an unknown format, a key not in the
    file (its keys listed), several tensors and no key, or a stored value that is not one vector.
    """
    path = Path(path).expanduser()
    suffix = _suffix(path)
    if not path.is_file():
        raise InputError(f"no vector file {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if suffix == ".gguf":
        return _load_gguf(path, key, layer)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise InputError(f"{path} cannot be read as a .npy array ({error})") from None
        if key is not None:
            raise InputError(f"{path}: a .npy file holds one array and no keys; drop --key {key}")
        return _as_vector(path, array)
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                names = list(file.keys())
                _pick(path, dict.fromkeys(names), key)  # a known key, or the only tensor
                name = key if key is not None else names[0]
                return _as_vector(path, file.get_tensor(name), f" ({name})")
        except SafetensorError as error:
            raise InputError(f"{path} cannot be read as a .safetensors file ({error})") from None
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickled code, a damaged file: one line
        raise InputError(
            f"{path} cannot be read as a tensor file ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if isinstance(value, dict):
        tensors = {str(k): v for k, v in value.items() if isinstance(v, (torch.Tensor, np.ndarray))}
        tensor = _pick(path, tensors, key)
        return _as_vector(path, tensor, f" ({key if key is not None else next(iter(tensors))})")
    if key is not None:
        raise InputError(f"{path} holds one tensor and no keys; drop --key {key}")
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        raise InputError(f"{path} holds a {type(value).__name__}, not a tensor or a dict of tensors")
    return _as_vector(path, value)


def save_vector(
    path: str | os.PathLike, v, key: str | None = None, layer: int | None = None, model_hint: str = "",
) -> Path:  # fmt: skip
    """Write the vector `v [d]` to `path` in the format its suffix names; return the path.

    `.pt`/`.pth`: the tensor (a `{key: v}` dict with `key`); `.npy`: the array; `.safetensors`: `{key or
    "vector": v}`; `.gguf`: a repeng control vector holding `direction.{layer - 1}` (float32, as repeng
    writes), `layer` required and at least 1. Tensor formats keep float64.
    """
    path = Path(path)
    suffix = _suffix(path)
    v = torch.as_tensor(v).detach().cpu().reshape(-1)
    if suffix in (".pt", ".pth"):
        torch.save({key: v} if key is not None else v, path)
    elif suffix == ".npy":
        np.save(path, v.numpy())
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key or "vector": v.contiguous()}, str(path))
    else:
        if layer is None or layer < 1:
            raise InputError(f"a control-vector GGUF needs layer >= 1 (our layer ℓ is repeng's direction.{{ℓ-1}}), got {layer!r}")
        from gguf import GGUFWriter

        writer = GGUFWriter(str(path), GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", 1)
        writer.add_tensor(f"{DIRECTION}{layer - 1}", v.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
