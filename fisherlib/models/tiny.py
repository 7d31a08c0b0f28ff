"""The embedded default model "tiny": a small GPT-NeoX trained on the Python standard library.

Its tokenizer is a byte-level BPE with V = 512 tokens (`TinyConfig.vocab_size`, `<|endoftext|>` included);
4 layers, d = 256. The repository ships the weights in `models/tiny/`; without them (a pip install of the
package alone) the same recipe is trained on first use into the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io.atomic import temporary_directory
from ..data.corpora import Document, stdlib_split
from ..core.errors import FisherlibError
from ..io.locations import cache_root
from ..io.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger("fisherlib")

END_OF_TEXT = "<|endoftext|>"
# Bump when training code changes what a given config produces, so old caches are not reused.
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class TinyConfig:
    """Architecture and training hyper-parameters of the tiny model (about 75 minutes on one CPU core).

    The shipped weights (`models/tiny/`) were trained with these defaults by `make tiny-model`.
    """

    # A small vocabulary keeps the top-k truncation of F small (64 of 512 tokens) and lets a
    # 3.4M-parameter model become sharp enough to populate the near-binary regime.
    vocab_size: int = 512
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    context_length: int = 256
    batch_size: int = 16
    steps: int = 2000
    learning_rate: float = 2e-3
    min_learning_rate: float = 2e-4
    warmup_fraction: float = 0.03
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Prose is a tenth of the standard library's text; oversample it (not so far that it is memorised) so both held-out domains are modelled.
    docs_share: float = 0.2
    eval_windows_per_domain: int = 64
    # Intermediate checkpoints on a log-spaced schedule from `first_checkpoint` to the last step.
    n_checkpoints: int = 8
    first_checkpoint: int = 16
    # Every this many steps the training loss (mean since the last record) goes into training.json.
    log_every: int = 50
    # One thread: CPU results are reproducible bit for bit only at a fixed thread count, and one
    # thread does not stall when other work shares the cores (two threads did, 6x slower).
    torch_threads: int = 1


def checkpoint_steps(config: TinyConfig) -> list[int]:
    """Return the log-spaced steps (1-based, after that many updates) whose weights are saved, last step excluded."""
    if config.steps <= config.first_checkpoint:
        return []
    schedule = np.geomspace(config.first_checkpoint, config.steps, config.n_checkpoints + 1)
    return sorted({int(round(step)) for step in schedule[:-1]} - {config.steps})


SHIPPED_FOLDER = Path(__file__).resolve().parents[2] / "models" / "tiny"


def shipped_tiny_model() -> Path | None:
    """Return the repository's shipped tiny model folder (`models/tiny`), or None when it is absent."""
    return SHIPPED_FOLDER if (SHIPPED_FOLDER / "training.json").is_file() else None


def tiny_revisions(folder: Path | None = None) -> list[str]:
    """Return the revisions of the tiny model in `folder` (default: `ensure_tiny_model()`), in training order.

    Each is `"step<N>"`, N the number of updates; the last one is the final model itself.
    """
    record = _training_record(folder or ensure_tiny_model())
    steps = [int(entry["step"]) for entry in record.get("checkpoints", [])] or [int(record["steps"])]
    return [f"step{step}" for step in sorted(set(steps))]


def tiny_revision_folder(revision: str | None = None, folder: Path | None = None) -> Path:
    """Return the Hugging Face folder of the tiny model at `revision` ("step<N>"; empty or "main": the final model)."""
    folder = folder or ensure_tiny_model()
    if not revision or revision == "main":
        return folder
    record = _training_record(folder)
    if revision == f"step{record['steps']}":
        return folder
    candidate = folder / "checkpoints" / revision
    if not (candidate / "config.json").is_file():
        raise FisherlibError(
            f"the tiny model has no revision {revision!r}; its saved revisions are {tiny_revisions(folder)} "
            f"(in {folder})."
        )
    return candidate


def _training_record(folder: Path) -> dict:
    return json.loads((Path(folder) / "training.json").read_text())


def ensure_tiny_model(
    cache_dir: Path | None = None, seed: int = 0, steps: int | None = None, progress: bool = True
) -> Path:
    """Return the folder of the tiny model: the shipped weights, else a cached or freshly trained copy.

    With the defaults (seed 0, the full recipe, no `cache_dir`) this is `models/tiny/` of the
    repository, trained by `make tiny-model`. Otherwise the folder `cache_dir/tiny-<hash>`
    (default `cache_root()`) holds an ordinary Hugging Face model and tokenizer plus
    `training.json`, trained on first use; `steps` overrides the number of training steps (tests
    use a few), and seed and steps are part of the hash, so each combination is cached apart.
    """
    if cache_dir is None and steps is None and seed == 0 and (shipped := shipped_tiny_model()) is not None:
        return shipped
    config = TinyConfig() if steps is None else dataclasses.replace(TinyConfig(), steps=steps)
    if config.steps < 1:
        raise FisherlibError(f"steps must be >= 1, got {config.steps}.")
    parent = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    final = parent / f"tiny-{_cache_key(config, seed)}"
    if (final / "training.json").is_file():
        return final
    if final.exists():
        raise FisherlibError(
            f"{final} exists but has no training.json, so it is not a finished tiny model. Delete it and run again."
        )
    if steps is None:
        logger.warning(
            "the shipped tiny model (%s) is missing, so it is trained now: about 75 minutes on one CPU core",
            SHIPPED_FOLDER,
        )
    return train_tiny_model(final, config, seed, progress, replace=False)


def train_tiny_model(
    destination: Path, config: TinyConfig | None = None, seed: int = 0, progress: bool = True, replace: bool = True
) -> Path:
    """Train the tiny model (tokenizer, weights, checkpoints, `training.json`) into `destination`.

    Training happens in a sibling temporary folder that is renamed into place at the end, so an
    interrupted or concurrent run never leaves a half-written folder at `destination`. An existing
    finished `destination` is replaced once the new model is complete (`replace=True`), or kept
    (`replace=False`: a concurrent run of the same recipe finished first).
    """
    config = config or TinyConfig()
    destination = Path(destination).expanduser().resolve()
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(parent, destination.name)
    # Unique, and readable like any folder this process makes (tempfile alone would make it private).
    temporary = temporary_directory(destination, tag="tmp-")
    try:
        _train_into(temporary, config, seed, progress)
        if not replace and (destination / "training.json").is_file():
            logger.info("another process finished %s first; using its copy", destination)
        else:
            if destination.exists():
                retired = temporary_directory(destination, tag="old-")
                os.replace(destination, retired / destination.name)
                shutil.rmtree(retired, ignore_errors=True)
            os.replace(temporary, destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    logger.info("tiny model written to %s", destination)
    return destination


def _cache_key(config: TinyConfig, seed: int) -> str:
    # The training text is this interpreter's standard library, so its version is part of the key.
    identity = {
        "config": dataclasses.asdict(config),
        "seed": seed,
        "python": platform.python_version(),
        "format": _FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _remove_stale_temporaries(parent: Path, name: str, max_age_s: float = 24 * 3600) -> None:
    """Delete temporary folders left by killed runs (old enough that no live run can own them)."""
    for leftover in parent.glob(f".{name}.tmp-*"):
        try:
            if time.time() - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _train_into(folder: Path, config: TinyConfig, seed: int, progress: bool) -> None:
    """Train tokenizer and model on the standard library's train split and save both into `folder`."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        _train_with_threads(folder, config, seed, progress, started)
    finally:
        torch.set_num_threads(threads)


def _train_with_threads(folder: Path, config: TinyConfig, seed: int, progress: bool, started: float) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    _seed_everything(seed)
    code_train, code_heldout = stdlib_split("code")
    docs_train, docs_heldout = stdlib_split("docs")

    tokenizer = train_tokenizer([document.text for document in code_train + docs_train], config)
    tokenizer_seconds = time.perf_counter() - started
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    train_streams = [_token_stream(tokenizer, code_train, eot), _token_stream(tokenizer, docs_train, eot)]
    heldout_streams = {
        "stdlib-code": _token_stream(tokenizer, code_heldout, eot),
        "stdlib-docs": _token_stream(tokenizer, docs_heldout, eot),
    }

    model_config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.context_length,
        tie_word_embeddings=False,  # Pythia's head is untied from the input embedding
        use_parallel_residual=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config)
    optimizer = _optimizer(model, config)
    warmup = max(1, round(config.warmup_fraction * config.steps))
    generator = torch.Generator().manual_seed(seed)

    checkpoints = set(checkpoint_steps(config))
    checkpoint_records: list[dict[str, object]] = []
    loss_curve: list[dict[str, float]] = []
    recent: list[float] = []
    losses: list[float] = []
    model.train()
    bar = progress_bar(total=config.steps, desc="training tiny model", unit="step", disable=not progress)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config, warmup)
        batch = _sample_batch(train_streams, (1 - config.docs_share, config.docs_share), config, generator)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        recent.append(losses[-1])
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            loss_curve.append({"step": done, "train_loss": float(np.mean(recent))})
            recent = []
        if done in checkpoints:
            heldout = _evaluate(model, heldout_streams, config)
            _save_checkpoint(model, tokenizer, folder / "checkpoints" / f"step{done}")
            checkpoint_records.append(
                {"step": done, "heldout_loss": float(np.mean(list(heldout.values()))), "heldout_loss_by_domain": heldout}
            )
            logger.info("checkpoint step %d: held-out loss %.3f", done, checkpoint_records[-1]["heldout_loss"])
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        bar.update(1)
    bar.close()

    heldout_loss = _evaluate(model, heldout_streams, config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    checkpoint_records.append(
        {"step": config.steps, "heldout_loss": float(np.mean(list(heldout_loss.values()))), "heldout_loss_by_domain": heldout_loss}
    )
    tail = losses[-max(1, len(losses) // 10) :]
    record = {
        "config": dataclasses.asdict(config),
        "seed": seed,
        "steps": config.steps,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "tokenizer_time_s": round(tokenizer_seconds, 2),
        "final_train_loss": float(np.mean(tail)),
        "heldout_loss": float(np.mean(list(heldout_loss.values()))),
        "heldout_loss_by_domain": heldout_loss,
        # Intermediate checkpoints are stored in float16 (half the bytes); their held-out loss was
        # measured on the float32 weights just before rounding. The final model is float32.
        "checkpoints": checkpoint_records,
        "checkpoint_dtype": "float16",
        "loss_curve": loss_curve,
        "n_parameters": sum(parameter.numel() for parameter in model.parameters()),
        "train_tokens": {"stdlib-code": len(train_streams[0]), "stdlib-docs": len(train_streams[1])},
        "tokens_seen": config.steps * config.batch_size * config.context_length,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "format_version": _FORMAT_VERSION,
    }
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "trained tiny model in %.0f s: train loss %.3f, held-out loss %.3f",
        record["wall_time_s"],
        record["final_train_loss"],
        record["heldout_loss"],
    )


def _save_checkpoint(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save a float16 copy of the weights with config and tokenizer: a standalone Hugging Face folder."""
    folder.mkdir(parents=True, exist_ok=True)
    half = {name: tensor.detach().to(torch.float16).clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=half)
    tokenizer.save_pretrained(folder)


def train_tokenizer(texts: list[str], config: TinyConfig = TinyConfig()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        # Every byte is in the vocabulary, so no text ever needs an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        # Padding with end-of-text lets batched callers pad; attention masks hide it.
        pad_token=END_OF_TEXT,
        model_max_length=config.context_length,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _token_stream(tokenizer: PreTrainedTokenizerFast, documents: list[Document], eot: int) -> torch.Tensor:
    """Concatenate the documents' tokens into one stream, each followed by end-of-text (GPT-style packing)."""
    # The Rust tokenizer directly: documents are far longer than model_max_length, which is fine here.
    texts = [document.text for document in documents]
    encoded = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = [token for encoding in encoded for token in [*encoding.ids, eot]]
    return torch.tensor(ids, dtype=torch.long)


def _sample_batch(
    streams: list[torch.Tensor], shares: tuple[float, float], config: TinyConfig, generator: torch.Generator
) -> torch.Tensor:
    """Draw `batch_size` random windows, each from a stream picked with probability `shares`."""
    picks = torch.multinomial(torch.tensor(shares), config.batch_size, replacement=True, generator=generator)
    windows = []
    for pick in picks.tolist():
        stream = streams[pick]
        start = torch.randint(0, len(stream) - config.context_length, (1,), generator=generator).item()
        windows.append(stream[start : start + config.context_length])
    return torch.stack(windows)


def _optimizer(model: torch.nn.Module, config: TinyConfig) -> torch.optim.AdamW:
    # No weight decay on biases and norms, as in GPT-style training.
    decay = [parameter for parameter in model.parameters() if parameter.dim() >= 2]
    no_decay = [parameter for parameter in model.parameters() if parameter.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def _learning_rate(step: int, config: TinyConfig, warmup: int) -> float:
    """Linear warm-up, then cosine decay to `min_learning_rate` at the last step."""
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


@torch.no_grad()
def _evaluate(model: torch.nn.Module, streams: dict[str, torch.Tensor], config: TinyConfig) -> dict[str, float]:
    """Mean next-token loss (nats) per held-out domain on evenly spaced windows, the same for every seed."""
    model.eval()
    losses = {}
    for domain, stream in streams.items():
        span = len(stream) - config.context_length
        starts = np.linspace(0, span, config.eval_windows_per_domain).astype(int)
        windows = torch.stack([stream[start : start + config.context_length] for start in starts])
        batch_losses = [
            model(input_ids=chunk, labels=chunk).loss.item() for chunk in windows.split(config.batch_size)
        ]
        losses[domain] = float(np.mean(batch_losses))
    model.train()
    return losses
