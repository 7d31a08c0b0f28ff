"""The run's model, positions and LM head, from its parameters: loaded once per process, cached on disk.

Every measurement step starts here: `load_model_for` (one load per process), `load_sample` (notebook
01's positions, sampled once and cached under the sample's key) and `load_head` (`W`, `b` beside them).

Cache entries are found by `read_entry`: in the caches of the published (complete) runs under the same
`results_root` first, read-only, then in the run's own cache; what is computed goes to the run's own
cache only. So a notebook run by hand in a scratch run reuses `make reproduce`'s measurements with the
same key, and computes (with a progress bar) what no run has: it never asks for another notebook first.
Every entry used or made is named in one log line.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from ..core.errors import ParameterError
from ..io.cache import read_file, read_folder, write_file
from ..layers.engine import context_length
from ..layers.passes import engine_path
from .params import StudyParams

logger = logging.getLogger("fisherlib")


def published_caches(params: StudyParams) -> list[tuple[str, Path]]:
    """Return `(run, cache folder)` of every complete run under `params`' results root, other than its own.

    The run named for `params`' model (`make`'s name: the arch with `/` as `--`, plus `-<revision>`) comes first.
    """
    own = params.cache_path.resolve()
    runs = []
    for record in sorted(params.results_dir.parent.glob("*/run.json")):
        try:
            complete = json.loads(record.read_text()).get("complete", False)
        except (OSError, ValueError):
            continue
        cache = record.parent / "cache"
        if complete and cache.is_dir() and cache.resolve() != own:
            runs.append((record.parent.name, cache))
    model_run = params.arch.replace("/", "--") + (f"-{params.revision}" if params.revision else "")
    return sorted(runs, key=lambda run: run[0] != model_run)


def read_entry(params: StudyParams, name: str, read, what: str, folder: bool = False):
    """Return the cache entry `name` read by `read`, from a published run's cache or the run's own; None if none has it."""
    reader = read_folder if folder else read_file
    for run, cache in published_caches(params):
        value = reader(cache / name, read, discard=False)
        if value is not None:
            logger.info("%s: read from %s (published run %s, read-only)", what, cache / name, run)
            return value
    path = params.cache_path / name
    value = reader(path, read)
    if value is not None:
        logger.info("%s: read from %s", what, path)
    return value


def wrote_entry(what: str, path: Path) -> None:
    logger.info("%s: computed and written to %s", what, path)


SAMPLE_KEYS = ("arch", "revision", "corpora", "render", "n_positions", "top_k", "max_context", "min_prefix", "pool_factor", "n_docs", "dtype")


@functools.lru_cache(maxsize=2)
def _load_model_cached(arch: str, revision: str, device: str, dtype: str):
    from ..models.loading import load_model

    if device == "auto":  # a model larger than one GPU: accelerate spreads its modules over every GPU
        return load_model(arch, device_map="auto", dtype=dtype or None, revision=revision or None)
    return load_model(arch, device=device or None, dtype=dtype or None, revision=revision or None)


def load_model_for(params: StudyParams, revision: str | None = None):
    """Return the `LoadedModel` of `params` (loaded once per process), at `revision` if given, else `params.revision`."""
    return _load_model_cached(params.arch, params.revision if revision is None else revision, params.device, params.dtype)


def check_against_model(params: StudyParams, model) -> None:
    """Raise ParameterError (one line) when `params` cannot run on `model`: checked before any work.

    `top_k` must be below the vocabulary (F_k keeps the k most probable tokens) and, when control
    directions are asked for, below the width d (they are orthogonal to the top-k unembedding rows);
    `max_context` must fit the model's positions.
    """
    head = model.head
    vocab = head.n_tokens or head.vocab_size
    problems = []
    if params.top_k >= vocab:
        problems.append(f"top_k={params.top_k} must be below the vocabulary V={vocab} (e.g. top_k={min(64, vocab // 2)})")
    if params.n_control > 0 and params.top_k >= head.hidden_size:
        problems.append(
            f"top_k={params.top_k} must be below the width d={head.hidden_size} for the control directions "
            f"(e.g. top_k={max(2, head.hidden_size // 2)}), or set n_control=0"
        )
    limit = context_length(model.model.config) if getattr(model, "model", None) else None
    if limit is not None and params.max_context > limit:
        problems.append(f"max_context={params.max_context} exceeds the model's {limit} positions")
    if problems:
        raise ParameterError(f"{model.model_id}: " + "; ".join(problems) + ". Change it with papermill's -p or the params file.")


def check_sample_size(params: StudyParams, sample, seed: int) -> None:
    """Raise ParameterError when the corpora gave fewer positions than `n_positions` asked."""
    if len(sample) < params.n_positions:
        raise ParameterError(
            f"the corpora gave {len(sample)} positions of the n_positions={params.n_positions} asked (seed {seed}); "
            "give larger corpora (n_docs=0 reads every document), lower n_positions, or lower min_prefix"
        )


def model_card(params: StudyParams, model) -> pd.DataFrame:
    """Return the run's model card (one row): the model, its revision and head, and for tiny its training record.

    For the embedded default, `heldout_loss` is the mean next-token loss (nats per token) on the
    held-out split of the standard library at the loaded revision, as `training.json` records it.
    `layer_engine` says which engine the layer study runs on (`prefix-cached`, or `full-context` with
    `layer_engine_reason`), `layer_jvp` how its JVPs are taken.
    """
    card = model.card() if callable(getattr(model, "card", None)) else {}
    # Which layer engine notebooks 08, 09 and 11 run on this model (probed once), and why.
    card |= engine_path(model, params.max_context).card()
    row = dict(run=params.name) | {
        # A table holds no missing values: say what None means instead.
        name: ("(final / local folder)" if name == "revision" else "none") if value is None else value
        for name, value in card.items()
    }
    if params.arch == "tiny":
        from ..models.tiny import ensure_tiny_model

        record = json.loads((ensure_tiny_model() / "training.json").read_text())
        step = int(model.revision.removeprefix("step")) if model.revision else int(record["steps"])
        at_step = {int(entry["step"]): entry for entry in record.get("checkpoints", [])}
        row["n_layers"] = int(record["config"]["num_layers"])
        row["n_parameters"] = int(record["n_parameters"])
        row["training_step"] = step
        row["heldout_loss"] = float(at_step[step]["heldout_loss"]) if step in at_step else float(record["heldout_loss"])
    return pd.DataFrame([row])


def sample_folder(params: StudyParams, seed: int) -> Path:
    """Return where the positions of `params` for `seed` are cached (the sampler's version in the name)."""
    from ..data.sampling import SAMPLER_VERSION

    return params.cache_path / f"positions-seed{seed}-{params.key(*SAMPLE_KEYS)}-v{SAMPLER_VERSION}"


def load_sample(params: StudyParams, seed: int, progress: bool = True):
    """Return the sampled positions for `seed`: from the cache, else sampled now (and cached)."""
    sample = cached_sample(params, seed)
    return sample if sample is not None else sample_positions_for(params, seed, progress=progress)


def cached_sample(params: StudyParams, seed: int):
    """Return the cached positions for `seed` (this run's cache or a published run's), else None."""
    from ..data.sampling import PositionSample

    folder = sample_folder(params, seed)
    sample = read_entry(params, folder.name, PositionSample.load, f"positions (seed {seed})", folder=True)
    if sample is not None:
        check_sample_size(params, sample, seed)
    return sample


def sample_positions_for(params: StudyParams, seed: int, shard=None, progress: bool = True):
    """Sample the positions of `params` for `seed` now and cache them (on rank 0 of `shard`, a `fisherlib.io.shards.Shard`)."""
    from ..data.sampling import sample_positions
    from ..io.shards import WHOLE

    shard = WHOLE if shard is None else shard
    model = load_model_for(params)
    sample = sample_positions(
        model, params.corpus_list, params.n_positions, seed=seed, top_k=params.top_k,
        min_prefix=params.min_prefix, max_context=params.max_context, pool_factor=params.pool_factor,
        batch_size=params.batch_size, n_docs=params.n_docs, render=params.render, progress=progress, shard=shard,
    )  # fmt: skip
    # A short sample is not cached: the study would run on a fraction of the positions it reports.
    check_sample_size(params, sample, seed)
    if shard.rank == 0:
        sample.params["study"] = params.as_dict()
        folder = sample_folder(params, seed)
        sample.save(folder)
        wrote_entry(f"positions (seed {seed})", folder)
    return sample


def load_head(params: StudyParams):
    """Return the LM head (`W`, `b`, float32) of `params`' model, cached beside the positions."""
    from ..models.surgery import LMHead

    path = params.cache_path / f"head-v2-{params.key('arch', 'revision', 'dtype')}.pt"
    stored = read_entry(params, path.name, lambda file: torch.load(file, weights_only=True), "LM head")
    if stored is not None:
        return LMHead(
            weight=stored["weight"], bias=stored["bias"], module=None, logit_scale=stored.get("logit_scale", 1.0),
            logit_scale_source=stored.get("logit_scale_source"), n_tokens=stored.get("n_tokens"),
        )  # fmt: skip
    head = load_model_for(params).head
    stored = {
        "weight": head.weight.cpu(), "bias": None if head.bias is None else head.bias.cpu(),
        # Padding rows and a folded logit scale travel with W, so a cached head is the loaded one.
        "logit_scale": head.logit_scale, "logit_scale_source": head.logit_scale_source, "n_tokens": head.n_tokens,
    }  # fmt: skip
    # A unique temporary name: notebooks 02 and 03 may get here at once under `make -j`.
    write_file(path, lambda file: torch.save(stored, file))
    wrote_entry("LM head", path)
    return head
