"""Text corpora for sampling positions: hub datasets, local files, and the embedded standard-library split."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorpusError


@dataclass(frozen=True)
class Document:
    """One document of a corpus, tagged with the domain it stands for."""

    domain: str
    doc_id: str
    text: str


RENDERS = ("plain", "chat")

DEFAULT_CORPORA: dict[str, list[str]] = {
    "real": ["gsm8k", "codeparrot", "ultrachat", "wikitext"],
    "tiny": ["stdlib-code", "stdlib-docs"],
}

# A title line of a wikitext article: " = Title = " with single `=`; sections are " = = Section = = ".
_WIKI_TITLE = re.compile(r"^ = (?!=)(.*?[^=]) = $")
_OFFLINE_VALUES = {"1", "true", "yes", "on"}
_PATH_SYNTAX = (
    "a local file given as PATH or DOMAIN=PATH (.jsonl with `text`, `question`+`answer` or `messages` per line; "
    "any other file is read as plain text), e.g. 'math=../shared/fixtures/corpora/gsm8k/test.jsonl'"
)
_HUB_ADVICE = (
    "use local files instead (e.g. CORPORA=\"math=path/to/file.jsonl wiki=path/to/file.txt\", "
    "see fixture_corpora() for the offline samples) or the embedded corpora 'stdlib-code' and 'stdlib-docs'."
)


def fixture_corpora(shared_dir: Path) -> list[str]:
    """Return the `domain=path` specs of the four offline corpus samples under `shared_dir/fixtures/corpora`."""
    root = Path(shared_dir) / "fixtures" / "corpora"
    files = {
        "math": "gsm8k/test.jsonl",
        "code": "code_python/cpython_stdlib_sample.jsonl",
        "dialogue": "dialogue_hh_rlhf/harmless_base_test_multiturn.jsonl",
        "wiki": "wikitext2/wiki.test.raw.head",
    }
    return [f"{domain}={root / relative}" for domain, relative in files.items()]


def load_corpus(
    name: str,
    n_docs: int,
    seed: int = 0,
    *,
    render: str = "plain",
    tokenizer: Any = None,
    shuffle_buffer: int = 1000,
) -> Iterator[Document]:
    """Yield `n_docs` documents of corpus `name` in an order fixed by `seed`.

    `name` is a hub corpus (gsm8k, codeparrot, ultrachat, wikitext), an embedded one
    (stdlib-code, stdlib-docs), or a local file as `PATH` or `DOMAIN=PATH`. Names, files
    and the hub are checked now, so a bad corpus fails here rather than mid-iteration.
    `render` ("plain" or "chat") applies to dialogues only, so one setting serves all corpora.
    """
    if render not in RENDERS:
        raise CorpusError(f"render must be one of {RENDERS}, got {render!r}.")
    if n_docs < 0:
        raise CorpusError(f"n_docs must be >= 0, got {n_docs}.")

    if name in _HUB_CORPORA:
        return _load_hub(name, n_docs, seed, render, tokenizer, shuffle_buffer)
    if name in _EMBEDDED_CORPORA:
        _, heldout = stdlib_split(_EMBEDDED_CORPORA[name])
        return iter(_seeded_sample(heldout, n_docs, seed))

    domain, path = _parse_local_spec(name)
    if path is None:
        raise CorpusError(
            f"Unknown corpus {name!r}. Valid names: {', '.join(sorted(_HUB_CORPORA))} (Hugging Face hub), "
            f"{', '.join(sorted(_EMBEDDED_CORPORA))} (embedded, offline), or {_PATH_SYNTAX}."
        )
    if not path.is_file():
        raise CorpusError(f"Corpus file not found: {str(path)!r} (from {name!r}). Check the path; {_PATH_SYNTAX}.")
    documents = _read_local(path, domain or path.stem, render, tokenizer)
    return iter(_seeded_sample(documents, n_docs, seed))


def render_messages(messages: Sequence[dict[str, str]], render: str = "plain", tokenizer: Any = None) -> str:
    """Render `[{"role", "content"}, ...]` as `User:`/`Assistant:` turns ("plain") or the tokenizer's chat template."""
    if render == "chat":
        _require_chat_template(tokenizer)
        return tokenizer.apply_chat_template(list(messages), tokenize=False)
    if render != "plain":
        raise CorpusError(f"render must be one of {RENDERS}, got {render!r}.")
    speakers = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "".join(
        f"{speakers.get(message['role'], message['role'].capitalize())}: {message['content']}\n" for message in messages
    )


def stdlib_split(kind: str) -> tuple[list[Document], list[Document]]:
    """Return `(train, heldout)` documents of the running interpreter's standard library.

    `kind` is "code" (top-level `.py` modules) or "docs" (`pydoc_data` topics). A module or
    topic is held out by a hash of its name alone (~20%), so the split is the same on every
    run and the tiny model never trains on what sampling measures.
    """
    kind = kind.removeprefix("stdlib-")
    if kind not in ("code", "docs"):
        raise CorpusError(f"stdlib_split kind must be 'code' or 'docs', got {kind!r}.")
    train, heldout = _stdlib_split_cached(kind)
    return list(train), list(heldout)


def is_heldout(kind: str, name: str) -> bool:
    """Return whether the standard-library module or topic `name` belongs to the held-out split."""
    return hashlib.sha256(f"{kind}:{name}".encode()).digest()[0] % 10 < 2


# --- embedded standard-library corpora -------------------------------------------------------------

_EMBEDDED_CORPORA = {"stdlib-code": "code", "stdlib-docs": "docs"}
# pydoc topics run from 200 characters to 60k; cutting them at paragraphs gives the held-out
# docs enough documents (not just ~16 topics) while whole topics stay on one side of the split.
_DOCS_CHUNK_CHARS = 2000


@functools.lru_cache(maxsize=None)
def _stdlib_split_cached(kind: str) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    named_documents = _stdlib_code() if kind == "code" else _stdlib_docs()
    train: list[Document] = []
    heldout: list[Document] = []
    for name, document in named_documents:
        (heldout if is_heldout(kind, name) else train).append(document)
    if not train or not heldout:
        raise CorpusError(
            f"The standard library of this interpreter has too little {kind} for the embedded corpora "
            f"({len(train)} train, {len(heldout)} held-out documents). Use local files or hub corpora instead."
        )
    return tuple(train), tuple(heldout)


def _stdlib_code() -> list[tuple[str, Document]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    named = []
    # Top-level modules only: that leaves out test/, site-packages/ and vendored packages.
    for path in sorted(stdlib.glob("*.py")):
        if path.name.startswith("_sysconfigdata"):
            continue  # generated build settings of this machine, not code anyone wrote
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            named.append((path.stem, Document("stdlib-code", f"Lib/{path.name}", text)))
    return named


def _stdlib_docs() -> list[tuple[str, Document]]:
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise CorpusError(
            "This interpreter has no pydoc_data module, so 'stdlib-docs' is unavailable. "
            "Use 'stdlib-code', local files, or hub corpora."
        ) from error
    named = []
    for topic in sorted(topics):
        chunks = _pack_paragraphs(topics[topic], _DOCS_CHUNK_CHARS)
        for index, chunk in enumerate(chunks):
            doc_id = topic if len(chunks) == 1 else f"{topic}#{index}"
            named.append((topic, Document("stdlib-docs", doc_id, chunk)))
    return named


# --- local files -----------------------------------------------------------------------------------

_LOCAL_TEXT_CHUNK_CHARS = 1000


def _parse_local_spec(name: str) -> tuple[str | None, Path | None]:
    """Split `DOMAIN=PATH` or `PATH`; return `(None, None)` when `name` does not look like a file at all."""
    if Path(name).expanduser().is_file():
        return None, Path(name).expanduser()
    domain, separator, rest = name.partition("=")
    if separator and re.fullmatch(r"[\w.-]+", domain) and rest:
        return domain, Path(rest).expanduser()
    looks_like_path = os.sep in name or "/" in name or Path(name).suffix in (".jsonl", ".txt", ".raw")
    return (None, Path(name).expanduser()) if looks_like_path else (None, None)


def _read_local(path: Path, domain: str, render: str, tokenizer: Any) -> list[Document]:
    try:
        # Text mode with universal newlines reads CRLF and LF files alike.
        with path.open(encoding="utf-8") as handle:
            content = handle.read()
    except UnicodeDecodeError as error:
        raise CorpusError(f"Corpus file {str(path)!r} is not UTF-8 text ({error}).") from error
    if path.suffix == ".jsonl":
        return _parse_jsonl(content, path, domain, render, tokenizer)
    return [
        Document(domain, doc_id or f"{path.stem}:{index}", text)
        for index, (doc_id, text) in enumerate(split_text_documents(content))
    ]


def _parse_jsonl(content: str, path: Path, domain: str, render: str, tokenizer: Any) -> list[Document]:
    documents = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(f"{path}:{line_number} is not valid JSON ({error}).") from error
        if not isinstance(record, dict):
            raise CorpusError(f"{path}:{line_number} should be a JSON object, got {type(record).__name__}.")
        text = _record_text(record, render, tokenizer)
        if text is None:
            raise CorpusError(
                f"{path}:{line_number} has none of the fields `text`, `question`+`answer` or `messages` "
                f"(keys: {sorted(record)})."
            )
        if text.strip():
            doc_id = str(record.get("id", f"{path.stem}:{line_number}"))
            documents.append(Document(domain, doc_id, text))
    return documents


def _record_text(record: dict[str, Any], render: str, tokenizer: Any) -> str | None:
    """Pick a record's text: chat-rendered messages, else `text`, else question + answer, else plain messages."""
    if render == "chat" and "messages" in record:
        return render_messages(record["messages"], render, tokenizer)
    if "text" in record:
        return str(record["text"])
    if "question" in record and "answer" in record:
        return f"{record['question']}\n{record['answer']}"
    if "messages" in record:
        return render_messages(record["messages"], "plain")
    return None


def split_text_documents(text: str) -> list[tuple[str | None, str]]:
    """Split plain text into `(title or None, text)` pairs: wikitext articles if titled, else paragraph chunks."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if any(_WIKI_TITLE.match(line) for line in lines):
        return [(title, article) for title, article in group_wikitext_articles(lines)]
    return [(None, chunk) for chunk in _pack_paragraphs(text, _LOCAL_TEXT_CHUNK_CHARS)]


def group_wikitext_articles(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """Group wikitext lines into `(title, article)` pairs; an article starts at a " = Title = " line."""
    title: str | None = None
    body: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n")
        match = _WIKI_TITLE.match(line)
        if match:
            if "".join(body).strip():
                yield title, "\n".join(body).strip("\n")
            title, body = match.group(1).strip(), []
        body.append(line)
    if "".join(body).strip():
        yield title, "\n".join(body).strip("\n")


def _pack_paragraphs(text: str, min_chars: int) -> list[str]:
    """Join consecutive blank-line-separated paragraphs until each chunk has at least `min_chars` characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [paragraph.strip("\n") for paragraph in re.split(r"\n[ \t]*\n", text)]
    chunks: list[str] = []
    current: list[str] = []
    for paragraph in paragraphs:
        if not paragraph.strip():
            continue
        current.append(paragraph)
        if sum(len(part) for part in current) >= min_chars:
            chunks.append("\n\n".join(current))
            current = []
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _seeded_sample(documents: Sequence[Document], n_docs: int, seed: int) -> list[Document]:
    shuffled = list(documents)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:n_docs]


# --- Hugging Face hub ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HubCorpus:
    path: str
    config: str | None
    split: str
    domain: str
    # None where rows are not documents by themselves (wikitext lines).
    to_document: Callable[[dict[str, Any], str, Any], Document] | None = None


def _gsm8k_document(row: dict[str, Any], render: str, tokenizer: Any) -> Document:
    text = f"{row['question']}\n{row['answer']}"
    return Document("math", f"gsm8k:{_short_hash(row['question'])}", text)


def _codeparrot_document(row: dict[str, Any], render: str, tokenizer: Any) -> Document:
    doc_id = f"{row.get('repo_name', '?')}/{row.get('path', _short_hash(row['content']))}"
    return Document("code", doc_id, row["content"])


def _ultrachat_document(row: dict[str, Any], render: str, tokenizer: Any) -> Document:
    doc_id = str(row.get("prompt_id") or _short_hash(json.dumps(row["messages"])))
    return Document("dialogue", doc_id, render_messages(row["messages"], render, tokenizer))


_HUB_CORPORA: dict[str, _HubCorpus] = {
    "gsm8k": _HubCorpus("openai/gsm8k", "main", "train", "math", _gsm8k_document),
    "codeparrot": _HubCorpus("codeparrot/codeparrot-clean", None, "train", "code", _codeparrot_document),
    "ultrachat": _HubCorpus("HuggingFaceH4/ultrachat_200k", None, "train_sft", "dialogue", _ultrachat_document),
    "wikitext": _HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1", "train", "wiki"),
}


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _hub_offline() -> bool:
    # Checked here rather than through huggingface_hub, which reads the variables once at import.
    variables = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(variable, "").strip().lower() in _OFFLINE_VALUES for variable in variables)


def _load_hub(
    name: str, n_docs: int, seed: int, render: str, tokenizer: Any, shuffle_buffer: int
) -> Iterator[Document]:
    corpus = _HUB_CORPORA[name]
    if render == "chat" and corpus.domain == "dialogue":
        _require_chat_template(tokenizer)  # fail before streaming anything
    if _hub_offline():
        raise CorpusError(
            f"Corpus {name!r} streams from the Hugging Face hub ({corpus.path}), but the hub cannot be reached: "
            f"offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). Unset it, or {_HUB_ADVICE}"
        )
    try:
        import datasets
    except ImportError as error:
        raise CorpusError(f"Hub corpora need the `datasets` package: pip install datasets; or {_HUB_ADVICE}") from error
    try:
        stream = datasets.load_dataset(corpus.path, corpus.config, split=corpus.split, streaming=True)
    except Exception as error:  # datasets wraps network failures in many exception types
        raise _hub_error(name, corpus, error) from error
    if name == "wikitext":
        # Shuffling lines would tear articles apart: group first, then shuffle whole articles.
        articles = (
            Document("wiki", title or f"wikitext:{_short_hash(text)}", text)
            for title, text in group_wikitext_articles(row["text"] for row in stream)
        )
        documents = _buffer_shuffle(articles, shuffle_buffer, seed)
    else:
        shuffled = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        documents = (corpus.to_document(row, render, tokenizer) for row in shuffled)
    return _take_from_hub(name, corpus, documents, n_docs)


def _take_from_hub(name: str, corpus: _HubCorpus, documents: Iterator[Document], n_docs: int) -> Iterator[Document]:
    if n_docs == 0:
        return
    taken = 0
    try:
        for document in documents:
            if not document.text.strip():
                continue
            yield document
            taken += 1
            if taken >= n_docs:
                return
    except CorpusError:
        raise
    except Exception as error:
        raise _hub_error(name, corpus, error) from error


def _hub_error(name: str, corpus: _HubCorpus, error: Exception) -> CorpusError:
    return CorpusError(
        f"Could not stream corpus {name!r} ({corpus.path}) from the Hugging Face hub "
        f"({type(error).__name__}: {error}). If the hub cannot be reached from this machine, {_HUB_ADVICE}"
    )


def _buffer_shuffle(items: Iterable[Document], buffer_size: int, seed: int) -> Iterator[Document]:
    """Shuffle a stream approximately with a fixed-size buffer, as `datasets.IterableDataset.shuffle` does."""
    rng = random.Random(seed)
    buffer_size = max(1, buffer_size)
    buffer: list[Document] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def _require_chat_template(tokenizer: Any) -> None:
    if tokenizer is None:
        raise CorpusError("render='chat' needs the model's tokenizer (tokenizer=...); or use render='plain'.")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise CorpusError(
            f"The tokenizer {name!r} has no chat template, so dialogues cannot be rendered with render='chat'. "
            "Use render='plain' (User:/Assistant: turns), or an instruction-tuned model whose tokenizer has one."
        )
