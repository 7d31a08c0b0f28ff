"""Rank-stratified sampling of positions (docs/method.md §6) with an atomic on-disk cache.

A position is one tokenised context and a target index `i` in it; at `i` we keep the post-final-norm
residual `h`, from which `z = W h + b` and `p = softmax(z)` are rebuilt exactly. The sampler draws a
candidate pool `pool_factor` times larger than needed with equal shares per domain, measures each
candidate's effective Fisher rank, cuts the pool at its quintiles and takes equal numbers from each
quintile within each domain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.errors import CorpusError, FisherlibError, ParameterError
from ..core.fisher import effective_rank, entropy, fisher_eigh, top_k_distribution
from ..io.cache import read_folder, write_folder
from ..io.progress import progress as progress_iter
from ..io.progress import progress_bar
from ..io.shards import WHOLE, Shard
from .corpora import Document, check_distinct_domains, duplicate_domains_message, load_corpus
from .corpora import corpus_options as resolve_corpus_options

logger = logging.getLogger("fisherlib")

N_STRATA = 5
SAMPLER_VERSION = 2  # bump when a change alters what a cached sample holds (2: context_ids)
_LOGIT_CHUNK = 256  # positions whose [chunk, V] logits are alive at once
_ROW_CHUNK = 16384  # rows of W converted to float64 at a time (never a float64 copy of the whole of W)

# One corpus: a name or file spec for `load_corpus`, a path, or documents already loaded.
CorpusSource = str | os.PathLike | Iterable[Document]
_CORPORA_ACCEPTED = (
    "corpora must be a corpus name or file spec (str, e.g. 'stdlib-code' or 'math=path/to/file.jsonl'), a path "
    "(os.PathLike), or an iterable of Documents (what load_corpus returns), or a list of these"
)


@dataclass
class PositionSample:
    """Sampled positions: a table (one row per position) and the tensors needed to rebuild `z` and `p`.

    Attributes:
        table: position, domain, doc_id, index, token, next_token, entropy, max_prob, topk_mass,
            eff_rank, participation, trace_fk, trace_f, stratum, top1, top2, p_top1, p_top2, h_norm,
            cos_top_eig_pair.
        h: `[P, d]` float32 post-final-norm residuals.
        topk_ids: `[P, k]` token ids of the `k` most probable tokens (descending).
        topk_probs: `[P, k]` float32 their probabilities.
        params: the resolved sampling parameters.
        context_ids: one 1-D int64 tensor per position, its context through the target token
            (`index + 1` tokens); None for a sample cached before they were recorded.
        manifest: package versions, model id and revision, device, dtype, git commit, timings.
    """

    table: pd.DataFrame
    h: torch.Tensor
    topk_ids: torch.Tensor
    topk_probs: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    context_ids: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def save(self, folder: Path) -> Path:
        """Write the sample to `folder` atomically, with its checksums (`fisherlib.io.cache`)."""
        # A sibling staging folder renamed into place; another run that finished first keeps its copy.
        return write_folder(folder, self._write)

    def _write(self, staging: Path) -> None:
        self.table.to_parquet(staging / "positions.parquet", index=False)
        tensors = {"h": self.h.cpu(), "topk_ids": self.topk_ids.cpu(), "topk_probs": self.topk_probs.cpu()}
        if self.context_ids is not None:
            # One flat tensor and the lengths: a list of tensors would pickle one object per position.
            tensors["context_flat"] = torch.cat([c.reshape(-1).long().cpu() for c in self.context_ids])
            tensors["context_lengths"] = torch.tensor([len(c) for c in self.context_ids], dtype=torch.long)
        torch.save(tensors, staging / "tensors.pt")
        (staging / "params.json").write_text(json.dumps(self.params, indent=2, sort_keys=True) + "\n")
        (staging / "manifest.json").write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str) + "\n")

    @classmethod
    def load(cls, folder: Path) -> PositionSample:
        """Read a sample written by `save`."""
        folder = Path(folder)
        tensors = torch.load(folder / "tensors.pt", weights_only=True)
        context_ids = None
        if "context_flat" in tensors:
            context_ids = list(torch.split(tensors["context_flat"], tensors["context_lengths"].tolist()))
        return cls(
            table=pd.read_parquet(folder / "positions.parquet"),
            h=tensors["h"],
            topk_ids=tensors["topk_ids"],
            topk_probs=tensors["topk_probs"],
            params=json.loads((folder / "params.json").read_text()),
            manifest=json.loads((folder / "manifest.json").read_text()),
            context_ids=context_ids,
        )


def sampling_key(params: dict[str, Any]) -> str:
    """Return the cache key of a sample: a hash of its resolved parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def sample_positions(
    model,
    corpora: CorpusSource | list[CorpusSource],
    n_positions: int,
    seed: int = 0,
    top_k: int = 64,
    min_prefix: int = 8,
    max_context: int = 256,
    pool_factor: int = 4,
    batch_size: int = 16,
    n_docs: int = 0,
    render: str = "plain",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    corpus_options: dict[str, Any] | None = None,
    shard: Shard = WHOLE,
) -> PositionSample:
    """Return `n_positions` rank-stratified positions of `model` (a `LoadedModel`) over `corpora`.

    `corpora` is one corpus or a list of them; a corpus is a name or file spec for `load_corpus` (a
    single str is one corpus, never a list of letters), a path (`os.PathLike`), or an iterable of
    `Document`s (what `load_corpus` returns; a list of Documents is one corpus). Names and paths are
    read with `load_corpus(..., n_docs, seed)`; loaded documents are taken in their own order, the
    first `n_docs` of them (with `n_docs=0` as many as a named corpus would give), and their domains
    come from `Document.domain`. The cache key holds names and paths as given, and loaded documents as
    a hash of their domains, ids and texts. Anything else raises ParameterError (a TypeError).

    Equal shares per domain; within each domain, equal shares per effective-rank quintile of the
    candidate pool. With `cache_dir`, the sample is stored under `cache_dir/positions-<key>/` and the
    same parameters load it back; other parameters make a new entry. `corpus_options` override
    `corpora.CORPUS_OPTION_DEFAULTS` (GSM8K calculator annotations, wikitext escapes, stream spread);
    the resolved options, defaults included, are recorded in the parameters and the manifest.
    `shard` (`fisherlib.io.shards`): this process measures its share of the candidate pool (whole batches)
    and the shares rejoin before the choice, so every process returns the sample; only rank 0 caches it.
    """
    sources = _corpus_sources(corpora)
    options = resolve_corpus_options(**(corpus_options or {}))
    params = dict(
        model_id=model.model_id,
        revision=model.revision,
        dtype=str(model.dtype).removeprefix("torch."),
        corpora=[_corpus_label(source) for source in sources],
        n_positions=int(n_positions),
        seed=int(seed),
        top_k=int(top_k),
        min_prefix=int(min_prefix),
        max_context=int(max_context),
        pool_factor=int(pool_factor),
        n_docs=int(n_docs),
        render=render,
        corpus_options=options,
        sampler_version=SAMPLER_VERSION,
    )
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"positions-{sampling_key(params)}"
        cached = read_folder(folder, PositionSample.load)
        if cached is not None:
            logger.info("positions loaded from cache %s", folder)
            return cached

    rng = np.random.default_rng(seed)
    documents = _documents_by_domain(model, sources, n_positions, pool_factor, n_docs, seed, render, options)
    domains = sorted(documents)
    per_domain = _split_evenly(n_positions, len(domains))
    candidates = []
    for domain, target in zip(domains, per_domain):
        candidates += _draw_candidates(model.tokenizer, documents[domain], pool_factor * target, min_prefix, max_context, rng)
    _check_token_ids(model, candidates)
    pool = _measure_candidates(model, candidates, top_k, batch_size, progress, shard)
    chosen = _stratified_choice(pool, dict(zip(domains, per_domain)), rng)
    table = pool["table"].iloc[chosen].reset_index(drop=True)
    table.insert(0, "position", np.arange(len(table)))
    sample = PositionSample(
        table=table,
        h=pool["h"][chosen],
        topk_ids=pool["topk_ids"][chosen],
        topk_probs=pool["topk_probs"][chosen],
        params=params,
        manifest=_manifest(model, pool_size=len(pool["table"]), strata_edges=pool["edges"], corpus_options=options),
        context_ids=[pool["context_ids"][i] for i in chosen],
    )
    if folder is not None and shard.rank == 0:
        sample.save(folder)
        logger.info("positions written to %s", folder)
    return sample


def _split_evenly(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` integers that differ by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _corpus_sources(corpora) -> list[str | list[Document]]:
    """Return `corpora` as a list of corpora, each a `load_corpus` name or spec (str) or a list of Documents.

    Raises:
        FisherlibError: no corpora at all.
        ParameterError: anything but a str, an os.PathLike, an iterable of Documents, or a list of these.
    """

    def is_collection(x) -> bool:
        return isinstance(x, Iterable) and not isinstance(x, (str, bytes, Mapping, Document))

    def one(source) -> str | list[Document] | None:
        if isinstance(source, (str, os.PathLike)):
            return os.fspath(source)
        if is_collection(source):
            docs = list(source)  # an iterator from load_corpus is read once, here
            return docs if all(isinstance(doc, Document) for doc in docs) else None
        return None

    if isinstance(corpora, (str, os.PathLike)):
        sources = [os.fspath(corpora)]  # one corpus, never a list of one-letter names
    elif not is_collection(corpora):
        raise ParameterError(f"{_CORPORA_ACCEPTED}; got {type(corpora).__name__}")
    else:
        items = list(corpora)
        if items and all(isinstance(item, Document) for item in items):
            sources = [items]  # one loaded corpus
        else:
            sources = []
            for item in items:
                source = one(item)
                if source is None:
                    raise ParameterError(f"{_CORPORA_ACCEPTED}; got a list holding {type(item).__name__} {item!r:.80}")
                sources.append(source)
    if not sources:
        raise FisherlibError("no corpora given: name at least one (e.g. stdlib-code, or a .jsonl file)")
    return sources


def _corpus_label(source: str | list[Document]) -> str:
    """Return how a corpus enters the parameters and the cache key: its name, or a hash of its documents."""
    if isinstance(source, str):
        return source
    digest = hashlib.sha256()
    for doc in source:
        for part in (doc.domain, doc.doc_id, doc.text):
            digest.update(part.encode())
            digest.update(b"\0")
    domains = "+".join(sorted({doc.domain for doc in source}))
    return f"documents:{domains}:{len(source)}:{digest.hexdigest()[:16]}"


def _documents_by_domain(model, sources, n_positions, pool_factor, n_docs, seed, render, options=None) -> dict[str, list[Document]]:
    """Read each corpus (or take its loaded documents); group documents by their domain.

    Raises:
        CorpusError: two corpora give the same domain (checked before reading any, where the names tell).
    """
    # Each domain gets an equal share of the positions, so two corpora under one domain would be merged silently.
    check_distinct_domains([source for source in sources if isinstance(source, str)])
    per_corpus = math.ceil(pool_factor * n_positions / len(sources))
    wanted = n_docs or per_corpus  # one candidate per document where the corpus is large enough
    by_domain: dict[str, list[Document]] = {}
    giver: dict[str, str] = {}
    for source in sources:
        if isinstance(source, str):
            docs = list(load_corpus(source, wanted, seed, render=render, tokenizer=model.tokenizer, **(options or {})))
        else:
            docs = source[:wanted]
        if not docs:
            raise FisherlibError(f"corpus {_corpus_label(source)!r} gave no documents")
        label = _corpus_label(source)
        clashes = {doc.domain: [giver[doc.domain], label] for doc in docs if giver.get(doc.domain, label) != label}
        if clashes:
            raise CorpusError(duplicate_domains_message(clashes))
        for doc in docs:
            giver[doc.domain] = label
            by_domain.setdefault(doc.domain, []).append(doc)
    return by_domain


def _draw_candidates(tokenizer, documents, n_candidates, min_prefix, max_context, rng) -> list[dict]:
    """Return up to `n_candidates` (document, target index) pairs, spread round-robin over documents.

    Each document contributes its tokens `[0, max_context)`; a target index is uniform over
    `[min_prefix, length − 1]`, drawn without replacement within a document.
    """
    encoded = []
    for doc in documents:
        ids = tokenizer(doc.text, truncation=True, max_length=max_context, add_special_tokens=True)["input_ids"]
        if len(ids) > min_prefix:
            encoded.append((doc, ids, rng.permutation(np.arange(min_prefix, len(ids)))))
    if not encoded:
        raise FisherlibError(
            f"no document of domain {documents[0].domain!r} is longer than min_prefix={min_prefix} tokens; lower min_prefix or give longer documents"
        )
    candidates: list[dict] = []
    round_index = 0
    while len(candidates) < n_candidates:
        added = False
        for doc, ids, order in encoded:
            if round_index < len(order) and len(candidates) < n_candidates:
                index = int(order[round_index])
                candidates.append(dict(doc=doc, ids=ids, index=index))
                added = True
        if not added:
            logger.warning("domain %s has only %d candidate positions (wanted %d)", documents[0].domain, len(candidates), n_candidates)
            break
        round_index += 1
    return candidates


def _check_token_ids(model, candidates: list[dict]) -> None:
    """Raise unless every token id of the candidates' contexts indexes a row of the model's input embedding.

    `load_model` checks the tokenizer once; this catches a tokenizer swapped in later, before the
    forward pass would fail with a bare `IndexError: index out of range in self`.
    """
    network = getattr(model, "model", None)
    embedding = network.get_input_embeddings() if callable(getattr(network, "get_input_embeddings", None)) else None
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not candidates:
        return
    rows = int(weight.shape[0])
    worst = max(candidates, key=lambda cand: max(cand["ids"]))
    largest = max(worst["ids"])
    if largest >= rows:
        raise FisherlibError(
            f"the tokenizer gives token ids up to {largest} (document {worst['doc'].doc_id!r} of domain "
            f"{worst['doc'].domain!r}), but the model's input embedding has {rows} rows: the tokenizer belongs to "
            "another model. Use the model's own tokenizer (load_model of a folder holding both)."
        )


def _measure_candidates(model, candidates, top_k, batch_size, progress, shard: Shard = WHOLE) -> dict[str, Any]:
    """Capture `h` at every candidate and measure its distribution and Fisher spectrum (`shard`'s batches of both)."""
    # Group candidates by document so that each context runs once.
    by_doc: dict[tuple[str, str], list[int]] = {}
    for i, cand in enumerate(candidates):
        by_doc.setdefault((cand["doc"].domain, cand["doc"].doc_id), []).append(i)

    # A context runs only up to its last candidate (causal attention: later tokens cannot change h), and
    # contexts of similar needed length share a batch, longest first (an out-of-memory error comes early):
    # the trunk then runs ~1.05x the tokens it needs, not ~2x as with batches cut at their longest context.
    def needed(group: list[int]) -> int:
        return max(candidates[i]["index"] for i in group) + 1

    groups = sorted(by_doc.values(), key=needed, reverse=True)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    h = torch.empty(len(candidates), model.head.hidden_size, dtype=torch.float32)
    bar = progress_bar(total=len(candidates), desc="capturing h", unit="pos", disable=not progress)
    captured: list[tuple[list[int], torch.Tensor]] = []
    for index, start in enumerate(range(0, len(groups), batch_size)):
        if index % shard.world != shard.rank:
            continue
        batch = groups[start : start + batch_size]
        length = max(needed(g) for g in batch)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        rows, cols, order = [], [], []
        for row, group in enumerate(batch):
            ids = candidates[group[0]]["ids"][: needed(group)]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            for i in group:
                rows.append(row)
                cols.append(candidates[i]["index"])
                order.append(i)
        captured.append((order, model.capture(input_ids, attention_mask, rows, cols, batch_size=len(batch)).float().cpu()))
        bar.update(len(order) * shard.world)
    bar.close()
    for order, values in (pair for part in shard.gather(captured) for pair in part):
        h[order] = values

    mine = torch.as_tensor(shard.rows(len(h), _LOGIT_CHUNK))
    stats = position_statistics(model.head.weight, model.head.bias, h[mine], top_k, progress=progress, n_tokens=getattr(model.head, "n_tokens", None))
    if shard.world > 1:  # the shares rejoin in row order
        parts = [(rows, part) for rows, part in shard.gather((mine, stats)) if len(rows)]
        where = torch.argsort(torch.cat([rows for rows, _ in parts]))
        stats = {name: torch.cat([part[name] for _, part in parts])[where] for name in parts[0][1]}
    table = pd.DataFrame(
        dict(
            domain=[c["doc"].domain for c in candidates],
            doc_id=[c["doc"].doc_id for c in candidates],
            index=[c["index"] for c in candidates],
            token=[c["ids"][c["index"]] for c in candidates],
            next_token=[c["ids"][c["index"] + 1] if c["index"] + 1 < len(c["ids"]) else -1 for c in candidates],
        )
    )
    for name, values in stats.items():
        if name not in ("topk_ids", "topk_probs"):
            table[name] = values.numpy()
    edges = np.quantile(table["eff_rank"].to_numpy(), np.linspace(0, 1, N_STRATA + 1)[1:-1])
    table["stratum"] = np.searchsorted(edges, table["eff_rank"].to_numpy(), side="right").astype(np.int64)
    context_ids = [torch.tensor(c["ids"][: c["index"] + 1], dtype=torch.long) for c in candidates]
    return dict(
        table=table, h=h, topk_ids=stats["topk_ids"], topk_probs=stats["topk_probs"], edges=edges.tolist(),
        context_ids=context_ids,
    )  # fmt: skip


def position_statistics(W, b, h, top_k, progress=False, n_tokens=None) -> dict[str, torch.Tensor]:
    """Return per-position statistics of `p = softmax(W h + b)` and of `F_k` for `h [P, d]`.

    Keys: entropy, max_prob, topk_mass, eff_rank, participation, trace_fk, trace_f, top1, top2, p_top1,
    p_top2, h_norm, cos_top_eig_pair (each `[P]`), topk_ids `[P, k]`, topk_probs `[P, k]` (float32).
    Logits live `_LOGIT_CHUNK` positions at a time; everything is computed in float64 on W's device, with
    `W` read in chunks of rows (no float64 copy of the whole of `W`). `n_tokens` (`LMHead.n_tokens`):
    the top-k, top1 and top2 are tokens of the tokenizer, never rows that only pad the vocabulary; the
    padding rows' probability stays in `p` (entropy, trace F, top-k mass are of the model's softmax).
    """
    device = W.device
    V = W.shape[0]
    row_chunks = [(start, min(start + _ROW_CHUNK, V)) for start in range(0, V, _ROW_CHUNK)]
    # ‖w_v‖², for trace F = Σ p‖w‖² − ‖Wᵀp‖²
    row_norms = torch.cat([W[a:c].double().pow(2).sum(-1) for a, c in row_chunks])
    b64 = None if b is None else b.to(device).double()
    out: dict[str, list[torch.Tensor]] = {}
    for start in progress_iter(range(0, h.shape[0], _LOGIT_CHUNK), desc="Fisher spectra", disable=not progress):
        h_chunk = h[start : start + _LOGIT_CHUNK].to(device).double()
        z = torch.empty(h_chunk.shape[0], V, dtype=torch.float64, device=device)
        for a, c in row_chunks:
            torch.matmul(h_chunk, W[a:c].double().T, out=z[:, a:c])
        if b64 is not None:
            z += b64
        p = torch.softmax(z, -1)
        del z
        probs, ids = top_k_distribution(p, top_k, n_tokens)
        eigvals, eigvecs = fisher_eigh(W, p, top_k, n_tokens=n_tokens)
        pair = torch.nn.functional.normalize(W[ids[:, 1]].double() - W[ids[:, 0]].double(), dim=-1)
        mean_row = torch.zeros(h_chunk.shape[0], W.shape[1], dtype=torch.float64, device=device)
        for a, c in row_chunks:
            mean_row += p[:, a:c] @ W[a:c].double()
        values = dict(
            entropy=entropy(p),
            max_prob=probs[:, 0],
            topk_mass=probs.sum(-1),
            eff_rank=effective_rank(eigvals, "entropy"),
            participation=effective_rank(eigvals, "participation"),
            trace_fk=eigvals.sum(-1),
            trace_f=p @ row_norms - (mean_row * mean_row).sum(-1),
            top1=ids[:, 0],
            top2=ids[:, 1],
            p_top1=probs[:, 0],
            p_top2=probs[:, 1],
            h_norm=h_chunk.norm(dim=-1),
            cos_top_eig_pair=(eigvecs[:, :, 0] * pair).sum(-1).abs(),
            topk_ids=ids,
            topk_probs=probs.float(),
        )
        for name, value in values.items():
            out.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def _stratified_choice(pool: dict[str, Any], per_domain: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """Return pool indices: for each domain, equal numbers from each effective-rank quintile.

    A quintile with too few candidates in a domain is topped up from that domain's other quintiles
    (nearest first), with a warning; the table's `stratum` column shows what was taken.
    """
    table = pool["table"]
    chosen: list[int] = []
    for domain, target in per_domain.items():
        in_domain = table.index[table["domain"] == domain].to_numpy()
        by_stratum = {s: rng.permutation(in_domain[table.loc[in_domain, "stratum"].to_numpy() == s]) for s in range(N_STRATA)}
        quotas = _split_evenly(target, N_STRATA)
        leftovers = {s: list(by_stratum[s][quotas[s] :]) for s in range(N_STRATA)}
        for s in range(N_STRATA):
            chosen += [int(i) for i in by_stratum[s][: quotas[s]]]
            short = quotas[s] - min(quotas[s], len(by_stratum[s]))
            if short:
                logger.warning("domain %s: effective-rank quintile %d is %d positions short; topping up from neighbours", domain, s, short)
            for neighbour in sorted(range(N_STRATA), key=lambda n: (abs(n - s), n)):
                extra, leftovers[neighbour] = leftovers[neighbour][:short], leftovers[neighbour][short:]
                chosen += [int(i) for i in extra]
                short -= len(extra)
    if len(chosen) < sum(per_domain.values()):
        logger.warning("only %d positions available (asked for %d)", len(chosen), sum(per_domain.values()))
    # Sorted by pool index keeps the table in a stable (domain, document) order.
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _manifest(model, **extra) -> dict[str, Any]:
    """Return what a cached result needs to be traced back: versions, model, device, commit.

    In the form `PositionSample.load` reads it back (keys sorted, plain JSON values), so a fresh sample and a
    cached one show the same manifest (notebook 01 displays it; its published copy is compared byte for byte).
    """
    import transformers

    from .. import __version__

    manifest = dict(
        fisherlib=__version__,
        torch=torch.__version__,
        transformers=transformers.__version__,
        numpy=np.__version__,
        pandas=pd.__version__,
        python=platform.python_version(),
        model_id=model.model_id,
        revision=model.revision,
        device=str(model.device),
        dtype=str(model.dtype),
        logits_check_error=model.logits_check_error,
        # The load-time checks and the head: folded logit scale, padding rows, causality, placement.
        model_card=model.card() if callable(getattr(model, "card", None)) else None,
        git_commit=_git_commit(),
        **extra,
    )
    return json.loads(json.dumps(manifest, sort_keys=True, default=str))


def strata_counts(positions: pd.DataFrame) -> pd.DataFrame:
    """Return positions per domain (rows) and effective-rank quintile (columns), with totals."""
    counts = positions.groupby(["domain", "stratum"]).size().unstack(fill_value=0)
    counts.columns = [f"quintile {s}" for s in counts.columns]
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index()


def sample_summary(positions: pd.DataFrame) -> pd.DataFrame:
    """Return per-domain medians with 10th–90th percentiles of entropy, max prob, effective rank, top-k mass."""
    rows = []
    for domain, group in [*positions.groupby("domain"), ("all", positions)]:
        row = dict(domain=domain, positions=len(group))
        for column in ("entropy", "max_prob", "eff_rank", "participation", "topk_mass"):
            values = group[column]
            row[column] = f"{values.median():.3g} [{values.quantile(0.1):.3g}, {values.quantile(0.9):.3g}]"
        rows.append(row)
    return pd.DataFrame(rows)
