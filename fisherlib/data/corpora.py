"""Text corpora for sampling positions: hub datasets, local files, and the embedded standard-library split."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CorpusError
from ..io.jsonl import jsonl_records


@dataclass(frozen=True)
class Document:
    """One document of a corpus, tagged with the domain it stands for."""

    domain: str
    doc_id: str
    text: str


RENDERS = ("plain", "chat")

# How corpus text is cleaned and streamed; `corpus_options()` resolves them for a manifest.
#   strip_calculator: drop GSM8K's calculator annotations `<<48/2=24>>` (True: they are a tool-use
#       artefact of the data set that the models were not trained to read; the answer keeps its numbers).
#   detokenize_wikitext: undo wikitext's ` @-@ `, ` @,@ `, ` @.@ ` (True: they are wikitext's own
#       tokenisation, never in the text the models were trained on).
#   stream_scan: hub corpora are streamed shard by shard in a seeded random order; from each shard the
#       documents are a uniform sample (reservoir) of its first `stream_scan` × (its quota) documents, so a
#       sample spreads over the whole stream instead of its first files (0: read every shard to its end).
CORPUS_OPTION_DEFAULTS: dict[str, Any] = dict(strip_calculator=True, detokenize_wikitext=True, stream_scan=8)

DEFAULT_CORPORA: dict[str, list[str]] = {
    "real": ["gsm8k", "codeparrot", "ultrachat", "wikitext"],
    "tiny": ["stdlib-code", "stdlib-docs"],
}

# A title line of a wikitext article: " = Title = " with single `=`; sections are " = = Section = = ".
_WIKI_TITLE = re.compile(r"^ = (?!=)(.*?[^=]) = $")
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_WIKI_ESCAPES = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
# An empty reasoning block, as Qwen3's chat template writes before the last assistant turn.
_EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
_OFFLINE_VALUES = {"1", "true", "yes", "on"}
_PATH_SYNTAX = (
    "a local file given as PATH or DOMAIN=PATH (.jsonl with `text`, `question`+`answer` or `messages` per line; "
    "any other file is read as plain text), e.g. 'math=../shared/fixtures/corpora/gsm8k/test.jsonl', or a folder "
    "of .jsonl, .txt and .raw files read as one domain"
)
# The files of a folder given as a corpus that are read (any other file, a README or SOURCE.md, is not).
FOLDER_SUFFIXES = (".jsonl", ".txt", ".raw")
_HUB_ADVICE = (
    'use local files instead (e.g. CORPORA="math=path/to/file.jsonl wiki=path/to/file.txt", '
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


def corpus_options(**overrides: Any) -> dict[str, Any]:
    """Return the corpus options (`CORPUS_OPTION_DEFAULTS` with `overrides`), checked, for a manifest.

    Raises:
        CorpusError: an unknown option or a value of the wrong type.
    """
    unknown = sorted(set(overrides) - set(CORPUS_OPTION_DEFAULTS))
    if unknown:
        raise CorpusError(f"unknown corpus options {unknown}; known: {sorted(CORPUS_OPTION_DEFAULTS)}")
    options = {**CORPUS_OPTION_DEFAULTS, **overrides}
    for name in ("strip_calculator", "detokenize_wikitext"):
        if not isinstance(options[name], bool):
            raise CorpusError(f"{name} must be True or False, got {options[name]!r}")
    scan = options["stream_scan"]
    if isinstance(scan, bool) or not isinstance(scan, int) or scan < 0:
        raise CorpusError(f"stream_scan must be an integer >= 0 (0: whole shards), got {scan!r}")
    return options


def strip_calculator_annotations(text: str) -> str:
    """Return GSM8K text without its calculator annotations: `48/2 = <<48/2=24>>24` becomes `48/2 = 24`."""
    return _CALCULATOR_ANNOTATION.sub("", text)


def detokenize_wikitext(text: str) -> str:
    """Return wikitext with its escaped separators undone: ` @-@ ` → `-`, ` @,@ ` → `,`, ` @.@ ` → `.`."""
    for escaped, plain in _WIKI_ESCAPES:
        text = text.replace(escaped, plain)
    return text


def load_corpus(
    name: str,
    n_docs: int,
    seed: int = 0,
    *,
    render: str = "plain",
    tokenizer: Any = None,
    strip_calculator: bool = CORPUS_OPTION_DEFAULTS["strip_calculator"],
    detokenize_wikitext: bool = CORPUS_OPTION_DEFAULTS["detokenize_wikitext"],
    stream_scan: int = CORPUS_OPTION_DEFAULTS["stream_scan"],
) -> Iterator[Document]:
    """Yield `n_docs` documents of corpus `name` in an order fixed by `seed`.

    `name` is a hub corpus (gsm8k, codeparrot, ultrachat, wikitext), an embedded one
    (stdlib-code, stdlib-docs), or a local file or folder as `PATH` or `DOMAIN=PATH`. A folder is one
    domain (`DOMAIN`, else the folder's name) made of the `FOLDER_SUFFIXES` files directly inside it,
    read in sorted order, each document's id prefixed with its file's name; other files (a README) are
    not read, and a folder with none of those files is refused. Names, files and the hub are checked
    now, so a bad corpus fails here rather than mid-iteration.
    `render` ("plain" or "chat") applies to dialogues only, so one setting serves all corpora.
    `strip_calculator`, `detokenize_wikitext` and `stream_scan`: see `CORPUS_OPTION_DEFAULTS`; the
    first applies to GSM8K and to every `question`+`answer` record, the second to hub wikitext and to
    local text files in wikitext's format (" = Title = " lines).
    """
    if render not in RENDERS:
        raise CorpusError(f"render must be one of {RENDERS}, got {render!r}.")
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 0:
        raise CorpusError(f"n_docs must be an integer >= 0, got {n_docs!r}.")
    options = corpus_options(strip_calculator=strip_calculator, detokenize_wikitext=detokenize_wikitext, stream_scan=stream_scan)

    if name in _HUB_CORPORA:
        return _load_hub(name, n_docs, seed, render, tokenizer, options)
    if name in _EMBEDDED_CORPORA:
        _, heldout = stdlib_split(_EMBEDDED_CORPORA[name])
        return iter(_seeded_sample(heldout, n_docs, seed))

    domain, path = _parse_local_spec(name)
    if path is None:
        raise CorpusError(
            f"Unknown corpus {name!r}. Valid names: {', '.join(sorted(_HUB_CORPORA))} (Hugging Face hub), "
            f"{', '.join(sorted(_EMBEDDED_CORPORA))} (embedded, offline), or {_PATH_SYNTAX}."
        )
    if path.is_dir():
        documents = []
        for file in _folder_files(path, name):
            documents += _read_local(file, domain or path.name, render, tokenizer, options, in_folder=True)
        return iter(_seeded_sample(documents, n_docs, seed))
    if not path.is_file():
        raise CorpusError(f"Corpus file not found: {str(path)!r} (from {name!r}). Check the path; {_PATH_SYNTAX}.")
    documents = _read_local(path, domain or path.stem, render, tokenizer, options)
    return iter(_seeded_sample(documents, n_docs, seed))


def corpus_domain(name: str) -> str | None:
    """Return the domain that corpus `name` gives its documents (without reading it), or None if unknown.

    A hub corpus's own domain (gsm8k: math), an embedded corpus's name, a local spec's `DOMAIN`, else
    its file's stem or its folder's name.
    """
    if name in _HUB_CORPORA:
        return _HUB_CORPORA[name].domain
    if name in _EMBEDDED_CORPORA:
        return name
    domain, path = _parse_local_spec(name)
    if path is None:
        return None
    return domain or (path.name if path.is_dir() else path.stem)


def duplicate_domains(names: Sequence[str]) -> dict[str, list[str]]:
    """Return `{domain: [names]}` for each domain that two or more of the corpora `names` would give."""
    by_domain: dict[str, list[str]] = {}
    for name in names:
        domain = corpus_domain(str(name))
        if domain is not None:
            by_domain.setdefault(domain, []).append(str(name))
    return {domain: given for domain, given in by_domain.items() if len(given) > 1}


def duplicate_domains_message(duplicates: dict[str, list[str]]) -> str:
    """Return the sentence that refuses `duplicates` (from `duplicate_domains`) and says how to rename."""
    clashes = "; ".join(f"domain {domain!r} from {', '.join(repr(name) for name in names)}" for domain, names in duplicates.items())
    domain, names = next(iter(duplicates.items()))
    path = names[-1].partition("=")[2] if "=" in names[-1] else names[-1]
    return (
        f"two corpora give the same {clashes}: each domain is one corpus with an equal share of the positions, "
        f"so they would be merged silently. Rename one (e.g. '{domain}2={path}'), or put the files in one folder "
        f"and give it as '{domain}=<folder>' to read them as one domain."
    )


def check_distinct_domains(names: Sequence[str]) -> None:
    """Raise CorpusError when two of the corpora `names` give the same domain (see `duplicate_domains`)."""
    duplicates = duplicate_domains(names)
    if duplicates:
        raise CorpusError(duplicate_domains_message(duplicates))


def _folder_files(folder: Path, name: str) -> list[Path]:
    """Return the `FOLDER_SUFFIXES` files directly inside `folder`, sorted; raise CorpusError if there are none."""
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix in FOLDER_SUFFIXES)
    if not files:
        held = sorted(path.name for path in folder.iterdir())
        shown = ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "") if held else "nothing"
        raise CorpusError(
            f"Corpus folder {str(folder)!r} (from {name!r}) holds no {', '.join(FOLDER_SUFFIXES)} files (it holds "
            f"{shown}). Put the corpus files directly in it, or give one file as DOMAIN=PATH."
        )
    return files


def render_messages(messages: Sequence[dict[str, str]], render: str = "plain", tokenizer: Any = None) -> str:
    """Render `[{"role", "content"}, ...]` as `User:`/`Assistant:` turns ("plain") or the tokenizer's chat template.

    A chat rendering is tokenised later with the tokenizer's special tokens, so a BOS that the template
    writes itself (Llama 3's `<|begin_of_text|>`) is removed when the tokenizer adds one anyway: the
    context starts with one BOS, not two. Empty reasoning blocks (`<think>\n\n</think>\n\n`, which
    Qwen3's template writes before the last assistant turn only) are removed, so every assistant turn
    is rendered alike and no position is spent predicting template boilerplate.
    """
    if render == "chat":
        _require_chat_template(tokenizer)
        return _clean_chat(tokenizer.apply_chat_template(list(messages), tokenize=False), tokenizer)
    if render != "plain":
        raise CorpusError(f"render must be one of {RENDERS}, got {render!r}.")
    speakers = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "".join(f"{speakers.get(message['role'], message['role'].capitalize())}: {message['content']}\n" for message in messages)


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Return whether encoding text with special tokens puts the tokenizer's BOS first."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None or not callable(tokenizer):
        return False
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode adds nothing we can see
        return False
    return bool(ids) and ids[0] == bos_id


def _clean_chat(text: str, tokenizer: Any) -> str:
    """Drop a template-written BOS that tokenisation would double, and empty reasoning blocks."""
    text = _EMPTY_THINK.sub("", text)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _tokenizer_adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


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


@functools.cache
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
            "This interpreter has no pydoc_data module, so 'stdlib-docs' is unavailable. Use 'stdlib-code', local files, or hub corpora."
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
    if Path(name).expanduser().is_file() or Path(name).expanduser().is_dir():
        return None, Path(name).expanduser()
    domain, separator, rest = name.partition("=")
    if separator and re.fullmatch(r"[\w.-]+", domain) and rest:
        return domain, Path(rest).expanduser()
    looks_like_path = os.sep in name or "/" in name or Path(name).suffix in (".jsonl", ".txt", ".raw")
    return (None, Path(name).expanduser()) if looks_like_path else (None, None)


def _read_local(path: Path, domain: str, render: str, tokenizer: Any, options: dict[str, Any], in_folder: bool = False) -> list[Document]:
    """Return the documents of one local file; `in_folder`: ids start with the file's name (unique in its folder)."""
    try:
        # Text mode with universal newlines reads CRLF and LF files alike.
        with path.open(encoding="utf-8") as handle:
            content = handle.read()
    except UnicodeDecodeError as error:
        raise CorpusError(f"Corpus file {str(path)!r} is not UTF-8 text ({error}).") from error
    if path.suffix == ".jsonl":
        return _parse_jsonl(content, path, domain, render, tokenizer, options, in_folder)
    documents = []
    for index, (doc_id, text) in enumerate(split_text_documents(content)):
        # Titled articles are wikitext's format, and so are its escaped separators.
        if doc_id is not None and options["detokenize_wikitext"]:
            text = detokenize_wikitext(text)
        if in_folder:
            doc_id = f"{path.name}:{doc_id if doc_id is not None else index}"
        documents.append(Document(domain, doc_id or f"{path.stem}:{index}", text))
    return documents


def _parse_jsonl(
    content: str, path: Path, domain: str, render: str, tokenizer: Any, options: dict[str, Any], in_folder: bool = False
) -> list[Document]:
    documents = []

    def bad_line(line_number, error):
        return CorpusError(f"{path}:{line_number} is not valid JSON ({error}).")

    for line_number, record in jsonl_records(content.splitlines(), bad_line):
        if not isinstance(record, dict):
            raise CorpusError(f"{path}:{line_number} should be a JSON object, got {type(record).__name__}.")
        text = _record_text(record, render, tokenizer, options)
        if text is None:
            raise CorpusError(f"{path}:{line_number} has none of the fields `text`, `question`+`answer` or `messages` (keys: {sorted(record)}).")
        if text.strip():
            if in_folder:
                doc_id = f"{path.name}:{record.get('id', line_number)}"
            else:
                doc_id = str(record.get("id", f"{path.stem}:{line_number}"))
            documents.append(Document(domain, doc_id, text))
    return documents


def _record_text(record: dict[str, Any], render: str, tokenizer: Any, options: dict[str, Any]) -> str | None:
    """Pick a record's text: chat-rendered messages, else `text`, else question + answer, else plain messages."""
    if render == "chat" and "messages" in record:
        return render_messages(record["messages"], render, tokenizer)
    if "text" in record:
        return str(record["text"])
    if "question" in record and "answer" in record:
        return _question_answer(record, options)
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


def _question_answer(record: dict[str, Any], options: dict[str, Any]) -> str:
    """Return GSM8K's `question\nanswer`, without calculator annotations unless told to keep them."""
    text = f"{record['question']}\n{record['answer']}"
    return strip_calculator_annotations(text) if options["strip_calculator"] else text


# --- Hugging Face hub ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HubCorpus:
    path: str
    config: str | None
    split: str
    domain: str
    # None where rows are not documents by themselves (wikitext lines).
    to_document: Callable[[dict[str, Any], str, Any, dict[str, Any]], Document] | None = None


def _gsm8k_document(row: dict[str, Any], render: str, tokenizer: Any, options: dict[str, Any]) -> Document:
    return Document("math", f"gsm8k:{_short_hash(row['question'])}", _question_answer(row, options))


def _codeparrot_document(row: dict[str, Any], render: str, tokenizer: Any, options: dict[str, Any]) -> Document:
    doc_id = f"{row.get('repo_name', '?')}/{row.get('path', _short_hash(row['content']))}"
    return Document("code", doc_id, row["content"])


def _ultrachat_document(row: dict[str, Any], render: str, tokenizer: Any, options: dict[str, Any]) -> Document:
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


def _load_hub(name: str, n_docs: int, seed: int, render: str, tokenizer: Any, options: dict[str, Any]) -> Iterator[Document]:
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

    def documents_of(rows: Iterable[dict[str, Any]]) -> Iterator[Document]:
        if name == "wikitext":
            # Rows are lines: group them into articles within the shard (never shuffle lines).
            for title, text in group_wikitext_articles(row["text"] for row in rows):
                if options["detokenize_wikitext"]:
                    text = detokenize_wikitext(text)
                yield Document("wiki", title or f"wikitext:{_short_hash(text)}", text)
        else:
            for row in rows:
                yield corpus.to_document(row, render, tokenizer, options)

    shards = [lambda shard=shard: documents_of(shard()) for shard in stream_shards(stream)]
    return _take_from_hub(name, corpus, shards, n_docs, seed, options["stream_scan"])


def stream_shards(stream: Any) -> list[Callable[[], Iterable[Any]]]:
    """Return one opener per shard of a streamed data set (`datasets.IterableDataset.shard`), or one for all."""
    n_shards = getattr(stream, "num_shards", None) or getattr(stream, "n_shards", None) or 1
    if isinstance(n_shards, int) and n_shards > 1 and callable(getattr(stream, "shard", None)):
        return [lambda index=index: stream.shard(num_shards=n_shards, index=index) for index in range(n_shards)]
    return [lambda: stream]


def sample_across_shards(shards: Sequence[Callable[[], Iterable[Document]]], n_docs: int, seed: int, stream_scan: int) -> list[Document]:
    """Return up to `n_docs` non-empty documents spread over `shards`, in an order fixed by `seed`.

    Shards are visited in a seeded random order, each giving an equal share of what is still missing
    (a shard that falls short passes its deficit on). Within a shard the share is a uniform sample
    (reservoir) of its first `stream_scan` × share documents, or of all of them when `stream_scan` is 0.
    So a sample of a large corpus (codeparrot-clean's many files, wikitext-103's 28 000 articles)
    covers the whole stream rather than the first documents of its first file.
    """
    rng = random.Random(seed)
    order = list(range(len(shards)))
    rng.shuffle(order)
    chosen: list[Document] = []
    for visited, index in enumerate(order):
        share = math.ceil((n_docs - len(chosen)) / (len(order) - visited))
        if share <= 0:
            break
        limit = stream_scan * share if stream_scan else None
        reservoir: list[Document] = []
        seen = 0
        for document in shards[index]():
            if limit is not None and seen >= limit:
                break
            if not document.text.strip():
                continue
            seen += 1
            if len(reservoir) < share:
                reservoir.append(document)
            else:
                slot = rng.randrange(seen)
                if slot < share:
                    reservoir[slot] = document
        chosen += reservoir
    rng.shuffle(chosen)
    return chosen[:n_docs]


def _take_from_hub(
    name: str, corpus: _HubCorpus, shards: list[Callable[[], Iterable[Document]]], n_docs: int, seed: int, stream_scan: int
) -> Iterator[Document]:
    if n_docs == 0:
        return
    try:
        documents = sample_across_shards(shards, n_docs, seed, stream_scan)
    except CorpusError:
        raise
    except Exception as error:
        raise _hub_error(name, corpus, error) from error
    yield from documents


def _hub_error(name: str, corpus: _HubCorpus, error: Exception) -> CorpusError:
    return CorpusError(
        f"Could not stream corpus {name!r} ({corpus.path}) from the Hugging Face hub "
        f"({type(error).__name__}: {error}). If the hub cannot be reached from this machine, {_HUB_ADVICE}"
    )


def _require_chat_template(tokenizer: Any) -> None:
    if tokenizer is None:
        raise CorpusError("render='chat' needs the model's tokenizer (tokenizer=...); or use render='plain'.")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise CorpusError(
            f"The tokenizer {name!r} has no chat template, so dialogues cannot be rendered with render='chat'. "
            "Use render='plain' (User:/Assistant: turns), or an instruction-tuned model whose tokenizer has one."
        )
