"""Tests for fisherlib.data.corpora: local files, embedded standard-library split, hub errors (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fisherlib.core.errors import CorpusError
from fisherlib.data.corpora import (
    DEFAULT_CORPORA,
    Document,
    fixture_corpora,
    load_corpus,
    render_messages,
    stdlib_split,
)

SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"


def write_jsonl(path: Path, records: list[dict], newline: str = "\n") -> Path:
    path.write_bytes(newline.join(json.dumps(record) for record in records).encode() + newline.encode())
    return path


class FakeTokenizer:
    """Just enough of a Hugging Face tokenizer for chat rendering."""

    name_or_path = "fake"

    def __init__(self, chat_template: str | None):
        self.chat_template = chat_template

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(f"<|{message['role']}|>{message['content']}<|end|>" for message in messages)


CONVERSATION = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Add 2 and 2."},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture
def mixed_jsonl(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "a", "text": "plain text document"},
            {"question": "What is 2+2?", "answer": "It is 4.\n#### 4"},
            {"id": "c", "messages": CONVERSATION},
            {"id": "d", "messages": CONVERSATION, "text": "original dialogue text"},
        ],
    )


def by_id(documents) -> dict[str, Document]:
    return {document.doc_id: document for document in documents}


def test_jsonl_fields_in_priority_order(mixed_jsonl: Path):
    documents = by_id(load_corpus(str(mixed_jsonl), 10))
    assert len(documents) == 4
    assert documents["a"].text == "plain text document"
    assert documents["mixed:2"].text == "What is 2+2?\nIt is 4.\n#### 4"
    assert documents["c"].text == "User: Hi there\nAssistant: Hello!\nUser: Add 2 and 2.\nAssistant: 4\n"
    assert documents["d"].text == "original dialogue text"  # plain render prefers `text` over `messages`
    assert {document.domain for document in documents.values()} == {"mixed"}  # default domain: file stem


def test_jsonl_chat_render_prefers_messages(mixed_jsonl: Path):
    documents = by_id(load_corpus(str(mixed_jsonl), 10, render="chat", tokenizer=FakeTokenizer("{{ template }}")))
    assert documents["d"].text.startswith("<|user|>Hi there<|end|>")
    assert documents["c"].text == documents["d"].text
    assert documents["a"].text == "plain text document"


def test_chat_render_without_template_raises(mixed_jsonl: Path):
    with pytest.raises(CorpusError, match="no chat template") as error:
        load_corpus(str(mixed_jsonl), 10, render="chat", tokenizer=FakeTokenizer(None))
    assert "render='plain'" in str(error.value)
    with pytest.raises(CorpusError, match="needs the model's tokenizer"):
        load_corpus(str(mixed_jsonl), 10, render="chat")
    with pytest.raises(CorpusError, match="render must be one of"):
        load_corpus(str(mixed_jsonl), 10, render="fancy")


def test_chat_render_ignored_without_dialogues(tmp_path: Path):
    path = write_jsonl(tmp_path / "math.jsonl", [{"question": "q", "answer": "a"}])
    assert [document.text for document in load_corpus(str(path), 5, render="chat")] == ["q\na"]


def test_render_messages_plain_roles():
    rendered = render_messages([{"role": "system", "content": "Be brief."}, *CONVERSATION[:2]])
    assert rendered == "System: Be brief.\nUser: Hi there\nAssistant: Hello!\n"


def test_jsonl_line_without_known_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"body": "no usable field"}])
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2 has none of the fields"):
        load_corpus(str(path), 5)


def test_jsonl_crlf_and_domain_override(tmp_path: Path):
    records = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    path = write_jsonl(tmp_path / "test.jsonl", records, newline="\r\n")
    documents = list(load_corpus(f"math={path}", 10))
    assert len(documents) == 5
    assert {document.domain for document in documents} == {"math"}
    assert all("\r" not in document.text for document in documents)
    assert sorted(document.text for document in documents) == [f"q{i}\na{i}" for i in range(5)]


WIKI = " = First Article = \n \n Intro paragraph .\n \n = = Section = = \n \n Section text .\n = Second Article = \n \n More text about things .\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_txt_wikitext_articles(tmp_path: Path, newline: str):
    path = tmp_path / "wiki.test.raw"
    path.write_bytes(WIKI.replace("\n", newline).encode())
    documents = by_id(load_corpus(f"wiki={path}", 10))
    assert sorted(documents) == ["First Article", "Second Article"]  # the section heading starts no article
    first = documents["First Article"].text
    assert first.startswith(" = First Article = ") and "Section text ." in first and "\r" not in first
    assert "Second" not in first
    assert documents["Second Article"].domain == "wiki"


def test_txt_paragraph_chunks(tmp_path: Path):
    paragraphs = [f"Paragraph {i} " + "word " * 150 for i in range(12)]  # ~760 characters each
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    documents = list(load_corpus(str(path), 100))
    assert len(documents) == 6  # paragraphs packed in pairs to reach 1000 characters
    assert {document.domain for document in documents} == {"notes"}
    assert sorted(document.doc_id for document in documents) == sorted(f"notes:{i}" for i in range(6))
    joined = "".join(document.text for document in documents)
    assert all(f"Paragraph {i} " in joined for i in range(12))


def test_determinism_seed_and_n_docs(tmp_path: Path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"id": str(i), "text": f"document {i}"} for i in range(50)])
    first = [document.doc_id for document in load_corpus(str(path), 20, seed=1)]
    again = [document.doc_id for document in load_corpus(str(path), 20, seed=1)]
    other = [document.doc_id for document in load_corpus(str(path), 20, seed=2)]
    assert first == again
    assert first != other
    assert len(first) == 20 and len(set(first)) == 20
    assert len(list(load_corpus(str(path), 500))) == 50
    assert list(load_corpus(str(path), 0)) == []


def test_unknown_name_lists_valid_names():
    with pytest.raises(CorpusError) as error:
        load_corpus("no-such-corpus", 5)
    message = str(error.value)
    for name in ["gsm8k", "codeparrot", "ultrachat", "wikitext", "stdlib-code", "stdlib-docs", "DOMAIN=PATH"]:
        assert name in message


@pytest.mark.parametrize("spec", ["{tmp}/missing.jsonl", "math={tmp}/missing.jsonl", "{tmp}/missing.txt"])
def test_missing_file_names_the_path(tmp_path: Path, spec: str):
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(CorpusError, match="not found") as error:
        load_corpus(spec, 5)
    assert str(tmp_path / "missing") in str(error.value)


@pytest.mark.parametrize("name", DEFAULT_CORPORA["real"])
def test_hub_corpus_offline_gives_advice(monkeypatch: pytest.MonkeyPatch, name: str):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError) as error:
        load_corpus(name, 5)
    message = str(error.value)
    assert "hub cannot be reached" in message and "offline" in message
    assert "CORPORA=" in message and "stdlib-code" in message


def test_stdlib_split_deterministic_disjoint_nonempty():
    for kind in ("code", "docs"):
        train, heldout = stdlib_split(kind)
        train_again, heldout_again = stdlib_split(f"stdlib-{kind}")
        assert train == train_again and heldout == heldout_again
        train_ids = {document.doc_id for document in train}
        heldout_ids = {document.doc_id for document in heldout}
        assert not train_ids & heldout_ids
        assert len(heldout) >= 20 and len(train) > len(heldout)
        assert sum(len(document.text) for document in heldout) > 50_000
        assert {document.domain for document in train + heldout} == {f"stdlib-{kind}"}
    # A topic cut into chunks stays on one side of the split.
    train_topics = {document.doc_id.split("#")[0] for document in stdlib_split("docs")[0]}
    heldout_topics = {document.doc_id.split("#")[0] for document in stdlib_split("docs")[1]}
    assert not train_topics & heldout_topics
    with pytest.raises(CorpusError, match="'code' or 'docs'"):
        stdlib_split("poetry")


def test_embedded_corpora_sample_heldout_split():
    heldout_ids = {document.doc_id for document in stdlib_split("code")[1]}
    documents = list(load_corpus("stdlib-code", 10, seed=3))
    assert len(documents) == 10
    assert {document.doc_id for document in documents} <= heldout_ids
    assert documents == list(load_corpus("stdlib-code", 10, seed=3))
    assert [document.domain for document in load_corpus("stdlib-docs", 3)] == ["stdlib-docs"] * 3


@pytest.mark.integration
def test_fixture_corpora():
    if not (SHARED_DIR / "fixtures" / "corpora").is_dir():
        pytest.skip(f"no offline corpus fixtures at {SHARED_DIR / 'fixtures' / 'corpora'} (../shared beside the repo)")
    specs = fixture_corpora(SHARED_DIR)
    assert [spec.split("=", 1)[0] for spec in specs] == ["math", "code", "dialogue", "wiki"]
    for spec in specs:
        domain = spec.split("=", 1)[0]
        documents = list(load_corpus(spec, 20, seed=0))
        assert len(documents) == 20, spec
        assert {document.domain for document in documents} == {domain}
        assert all(len(document.text) > 50 for document in documents), spec
        assert len({document.doc_id for document in documents}) == 20
    wiki = list(load_corpus(specs[3], 1000))
    assert 35 <= len(wiki) <= 45  # 41 articles, give or take formula lines that look like titles
    assert all(document.text.startswith(" = ") for document in wiki)


class FakeStream:
    """A stand-in for a streamed `datasets.IterableDataset`."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def shuffle(self, seed: int, buffer_size: int) -> FakeStream:
        import random

        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        return FakeStream(rows)

    def __iter__(self):
        return iter(self.rows)


def fake_datasets(monkeypatch: pytest.MonkeyPatch, rows: list[dict] | Exception) -> list[tuple]:
    import sys
    import types

    calls: list[tuple] = []

    def load_dataset(path, config=None, split=None, streaming=False):
        calls.append((path, config, split, streaming))
        if isinstance(rows, Exception):
            raise rows
        return FakeStream(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return calls


def test_hub_gsm8k_streams_shuffled_first_n(monkeypatch: pytest.MonkeyPatch):
    calls = fake_datasets(monkeypatch, [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)])
    documents = list(load_corpus("gsm8k", 5, seed=4))
    assert calls == [("openai/gsm8k", "main", "train", True)]
    assert len(documents) == 5 and {document.domain for document in documents} == {"math"}
    assert documents == list(load_corpus("gsm8k", 5, seed=4))
    assert [document.text for document in documents] != [f"q{i}\na{i}" for i in range(5)]


def test_hub_ultrachat_renders_messages(monkeypatch: pytest.MonkeyPatch):
    fake_datasets(monkeypatch, [{"prompt_id": "p1", "messages": CONVERSATION}])
    (plain,) = load_corpus("ultrachat", 3)
    assert plain == Document("dialogue", "p1", render_messages(CONVERSATION))
    (chat,) = load_corpus("ultrachat", 3, render="chat", tokenizer=FakeTokenizer("{{ template }}"))
    assert chat.text.startswith("<|user|>Hi there")
    with pytest.raises(CorpusError, match="no chat template"):
        load_corpus("ultrachat", 3, render="chat", tokenizer=FakeTokenizer(None))


def test_hub_wikitext_groups_lines_into_articles(monkeypatch: pytest.MonkeyPatch):
    lines = [line + "\n" for line in WIKI.split("\n")[:-1]] * 3  # rows are lines, as on the hub
    fake_datasets(monkeypatch, [{"text": line} for line in lines])
    documents = list(load_corpus("wikitext", 10, seed=0))
    assert len(documents) == 6
    assert sorted({document.doc_id for document in documents}) == ["First Article", "Second Article"]
    assert all(document.text.startswith(" = ") and document.domain == "wiki" for document in documents)
    assert documents == list(load_corpus("wikitext", 10, seed=0))


def test_hub_connection_error_gives_advice(monkeypatch: pytest.MonkeyPatch):
    fake_datasets(monkeypatch, ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub"))
    with pytest.raises(CorpusError, match="hub cannot be reached") as error:
        load_corpus("gsm8k", 5)
    assert "CORPORA=" in str(error.value) and "Couldn't reach" in str(error.value)


# ---------------------------------------------------------------- issue 9: faithful corpora


def test_gsm8k_calculator_annotations_are_stripped_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    record = {"question": "Natalia sold 48 clips.", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 24"}
    path = write_jsonl(tmp_path / "math.jsonl", [record])
    (document,) = load_corpus(str(path), 5)
    assert document.text == "Natalia sold 48 clips.\nShe sold 48/2 = 24 clips.\n#### 24"
    (kept,) = load_corpus(str(path), 5, strip_calculator=False)
    assert "<<48/2=24>>" in kept.text
    fake_datasets(monkeypatch, [record])
    (hub,) = load_corpus("gsm8k", 5)
    assert hub.text == document.text


def test_wikitext_escapes_are_undone_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    text = " = An Article = \n \n A well @-@ known 1 @,@ 000 @.@ 5 km road .\n"
    path = tmp_path / "wiki.txt"
    path.write_text(text)
    (document,) = load_corpus(str(path), 5)
    assert "A well-known 1,000.5 km road ." in document.text
    (raw,) = load_corpus(str(path), 5, detokenize_wikitext=False)
    assert " @-@ " in raw.text
    fake_datasets(monkeypatch, [{"text": line + "\n"} for line in text.split("\n")[:-1]])
    (hub,) = load_corpus("wikitext", 5)
    assert "A well-known 1,000.5 km road ." in hub.text


class BosChatTokenizer(FakeTokenizer):
    """A tokenizer whose chat template writes BOS itself (Llama 3) and ends with an empty think block (Qwen3)."""

    bos_token, bos_token_id = "<|begin_of_text|>", 7

    def __init__(self, adds_bos: bool):
        super().__init__("{{ template }}")
        self.adds_bos = adds_bos

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([self.bos_token_id] if self.adds_bos and add_special_tokens else []) + [11] * len(text)}

    def apply_chat_template(self, messages, tokenize=False):
        turns = []
        for index, message in enumerate(messages):
            think = "<think>\n\n</think>\n\n" if index == len(messages) - 1 and message["role"] == "assistant" else ""
            turns.append(f"<|{message['role']}|>{think}{message['content']}<|end|>")
        return self.bos_token + "".join(turns)


def test_chat_render_has_one_bos_and_no_empty_think_block():
    text = render_messages(CONVERSATION, "chat", BosChatTokenizer(adds_bos=True))
    assert not text.startswith("<|begin_of_text|>")  # tokenisation adds it: one BOS, not two
    assert "<think>" not in text and text.endswith("<|assistant|>4<|end|>")
    kept = render_messages(CONVERSATION, "chat", BosChatTokenizer(adds_bos=False))
    assert kept.startswith("<|begin_of_text|>")  # nothing else would put it there


class ShardedStream(FakeStream):
    """A streamed data set of several shards (files), as `datasets.IterableDataset` has."""

    def __init__(self, shards: list[list[dict]]):
        super().__init__([row for shard in shards for row in shard])
        self.shards, self.num_shards, self.opened = shards, len(shards), []

    def shard(self, num_shards: int, index: int) -> FakeStream:
        assert num_shards == self.num_shards
        self.opened.append(index)
        return FakeStream(self.shards[index])


def test_hub_sample_spreads_over_shards_and_positions(monkeypatch: pytest.MonkeyPatch):
    shards = [[{"content": f"shard {s} file {i}", "repo_name": "r", "path": f"{s}/{i}.py"} for i in range(200)] for s in range(10)]
    stream = ShardedStream(shards)
    fake_datasets(monkeypatch, [])
    import sys

    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", lambda *args, **kwargs: stream)
    documents = list(load_corpus("codeparrot", 40, seed=1))
    assert len(documents) == 40 and len({d.doc_id for d in documents}) == 40
    shard_of = [int(d.text.split()[1]) for d in documents]
    position = [int(d.text.split()[3]) for d in documents]
    assert len(set(shard_of)) == 10  # every shard, 4 documents each
    assert max(position) >= 8  # not just the first files of each shard
    assert max(position) < 8 * 4  # within the scanned window: stream_scan x share
    assert documents == list(load_corpus("codeparrot", 40, seed=1))
    assert documents != list(load_corpus("codeparrot", 40, seed=2))
    whole = list(load_corpus("codeparrot", 10, seed=0, stream_scan=0))
    assert max(int(d.text.split()[3]) for d in whole) > 32  # stream_scan=0 reads each shard to its end


def test_few_documents_from_many_shards_open_few_shards(monkeypatch: pytest.MonkeyPatch):
    stream = ShardedStream([[{"question": f"q{s}-{i}", "answer": "a"} for i in range(5)] for s in range(50)])
    fake_datasets(monkeypatch, [])
    import sys

    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", lambda *args, **kwargs: stream)
    assert len(list(load_corpus("gsm8k", 3, seed=0))) == 3
    assert len(stream.opened) == 3  # one document from each of three random shards


def test_corpus_options_are_checked():
    from fisherlib.data.corpora import CORPUS_OPTION_DEFAULTS, corpus_options

    assert corpus_options() == CORPUS_OPTION_DEFAULTS == dict(strip_calculator=True, detokenize_wikitext=True, stream_scan=8)
    with pytest.raises(CorpusError, match="unknown corpus options"):
        corpus_options(strip_html=True)
    with pytest.raises(CorpusError, match="stream_scan"):
        corpus_options(stream_scan=-1)
    with pytest.raises(CorpusError, match="True or False"):
        load_corpus("stdlib-code", 3, strip_calculator="yes")


# --- issue 23: a folder as a corpus, one domain per corpus ------------------------------------------


def test_a_folder_is_one_domain_of_its_jsonl_and_text_files(tmp_path: Path):
    folder = tmp_path / "maths"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"text": "second file, first record"}, {"text": "second file, second record"}])
    (folder / "a.txt").write_text("the first file, one paragraph of prose")
    (folder / "SOURCE.md").write_text("where the files came from: not a document")
    named = sorted(load_corpus(f"math={folder}", 10), key=lambda doc: doc.doc_id)
    assert {doc.domain for doc in named} == {"math"}
    assert [doc.text for doc in named] == [
        "the first file, one paragraph of prose", "second file, first record", "second file, second record",
    ]  # fmt: skip
    # Ids name the file, so records of two files never share one; without DOMAIN= the folder names it.
    assert [doc.doc_id for doc in named] == ["a.txt:0", "b.jsonl:1", "b.jsonl:2"]
    assert {doc.domain for doc in load_corpus(str(folder), 10)} == {"maths"}
    # The same seed gives the same documents in the same order.
    assert [d.doc_id for d in load_corpus(str(folder), 10, seed=3)] == [d.doc_id for d in load_corpus(str(folder), 10, seed=3)]


def test_a_folder_without_corpus_files_is_refused_naming_what_it_holds(tmp_path: Path):
    (tmp_path / "notes.md").write_text("nothing to read")
    with pytest.raises(CorpusError) as error:
        load_corpus(f"math={tmp_path}", 5)
    message = str(error.value)
    assert str(tmp_path) in message and "notes.md" in message and ".jsonl" in message and "not found" not in message


def test_two_corpora_of_one_domain_are_refused(tmp_path: Path):
    from fisherlib.data.corpora import check_distinct_domains

    x, y = write_jsonl(tmp_path / "x.jsonl", [{"text": "x"}]), write_jsonl(tmp_path / "y.jsonl", [{"text": "y"}])
    with pytest.raises(CorpusError) as error:
        check_distinct_domains([f"a={x}", f"a={y}"])
    message = str(error.value)
    assert "'a'" in message and f"a={x}" in message and f"a={y}" in message and "rename" in message.lower()
    # A file's stem, a hub corpus's domain and an explicit name all count.
    with pytest.raises(CorpusError, match="'math'"):
        check_distinct_domains(["gsm8k", f"math={x}"])
    with pytest.raises(CorpusError, match="'x'"):
        check_distinct_domains([str(x), f"x={y}"])
    check_distinct_domains([f"a={x}", f"b={y}", "stdlib-code", "stdlib-docs"])
