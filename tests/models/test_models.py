"""Tests of fisherlib.models.surgery and fisherlib.models.loading on small random models, offline."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
import transformers
from huggingface_hub.errors import GatedRepoError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM

import fisherlib.models.loading
from fisherlib.core.errors import (
    FisherlibError,
    GatedModelError,
    HubUnreachableError,
    MissingWeightsError,
    NotACausalLMError,
    UnknownArchitectureError,
)
from fisherlib.models.surgery import (
    LMHead,
    capture_final_residual,
    check_head_reproduces_logits,
    find_lm_head,
    logits_from_residual,
)
from fisherlib.models.loading import REGISTRY, load_model, resolve_model_id, run_with_oom_backoff
from helpers.models import COLS, HIDDEN, ROWS, TINY_CONFIGS, VOCAB, WORDS, make_batch, make_model, make_tokenizer, save_random_qwen3

def full_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the model's own logits [B, T, V] float32."""
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


# ---------------------------------------------------------------- model_surgery


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_capture_reproduces_logits_without_running_the_head(kind: str) -> None:
    model = make_model(kind)
    input_ids, attention_mask = make_batch()
    head = find_lm_head(model)
    head_calls = []
    model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))

    h = capture_final_residual(model, input_ids, attention_mask, ROWS, COLS)

    assert head_calls == [], "the LM head ran during capture"
    assert h.shape == (len(ROWS), HIDDEN) and h.dtype == torch.float32
    assert not h.is_inference()
    expected = full_logits(model, input_ids, attention_mask)[ROWS, COLS]
    assert len(head_calls) == 1  # the counting hook does see a real call
    torch.testing.assert_close(logits_from_residual(h, head), expected, atol=1e-4, rtol=0)
    assert check_head_reproduces_logits(model, head, input_ids, attention_mask) < 1e-4


def test_head_keeps_every_row_of_a_padded_vocabulary() -> None:
    model, tokenizer = make_model("llama_tied"), make_tokenizer()
    head = find_lm_head(model)
    assert head.weight.shape == (VOCAB, HIDDEN) and VOCAB > len(tokenizer)
    batch = tokenizer(["once upon a time there was a little girl"], return_tensors="pt")
    h = capture_final_residual(model, batch["input_ids"], batch["attention_mask"], [0], [3])
    assert logits_from_residual(h, head).shape == (1, VOCAB)


@pytest.mark.parametrize("tied", [True, False])
def test_head_is_a_float32_copy_with_bias(tied: bool) -> None:
    config = TINY_CONFIGS["gpt2_tied"]()
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_config(config).eval()
    # GPT-2 has no LM-head bias; give it one to check that b is read and used.
    model.lm_head.bias = torch.nn.Parameter(torch.randn(VOCAB))
    head = find_lm_head(model)
    assert head.bias is not None and torch.equal(head.bias, model.lm_head.bias.detach())
    assert head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    input_ids, attention_mask = make_batch()
    h = capture_final_residual(model, input_ids, attention_mask, ROWS, COLS)
    expected = full_logits(model, input_ids, attention_mask)[ROWS, COLS]
    torch.testing.assert_close(logits_from_residual(h, head), expected, atol=1e-4, rtol=0)


def test_find_lm_head_rejects_a_model_without_one() -> None:
    backbone = transformers.AutoModel.from_config(TINY_CONFIGS["gpt2_tied"]())
    with pytest.raises(NotACausalLMError, match="AutoModelForCausalLM"):
        find_lm_head(backbone)


def test_logits_check_fails_loudly_when_head_is_wrong() -> None:
    model = make_model("gpt_neox")
    head = find_lm_head(model)
    off_by_a_bias = LMHead(weight=head.weight, bias=torch.full((VOCAB,), 0.5), module=head.module)
    input_ids, attention_mask = make_batch()
    with pytest.raises(FisherlibError, match="does not reproduce the logits"):
        check_head_reproduces_logits(model, off_by_a_bias, input_ids, attention_mask)


def test_capture_removes_its_hook_even_on_error() -> None:
    model = make_model("gpt2_tied")
    input_ids, attention_mask = make_batch()
    with pytest.raises(IndexError):
        capture_final_residual(model, input_ids, attention_mask, [0], [99])
    assert not model.get_output_embeddings()._forward_pre_hooks


# ---------------------------------------------------------------- load_model on a saved folder


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder holding a random Qwen3 (untied, padded vocabulary) and its tokenizer."""
    return save_random_qwen3(tmp_path_factory.mktemp("qwen3_tiny"))


def test_load_model_from_local_folder(saved_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fisherlib"):
        loaded = load_model(str(saved_model_dir), device="cpu")
    assert loaded.model_id == str(saved_model_dir.resolve()) and loaded.revision is None
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert loaded.logits_check_error < 1e-4
    assert "reproduces the model's logits" in caplog.text
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.tokenizer.padding_side == "right"
    assert loaded.head.weight.shape == (VOCAB, HIDDEN)

    batch = loaded.tokenizer(
        ["once upon a time there was a little girl named lily", "the quick brown fox"],
        return_tensors="pt",
        padding=True,
    )
    rows, cols = torch.tensor([1, 0, 1, 0]), torch.tensor([3, 9, 0, 2])
    h = loaded.capture(batch["input_ids"], batch["attention_mask"], rows, cols, batch_size=1)
    expected = full_logits(loaded.model, batch["input_ids"], batch["attention_mask"])[rows, cols]
    torch.testing.assert_close(loaded.logits(h), expected, atol=1e-4, rtol=0)


def test_load_model_in_bfloat16_returns_float32(saved_model_dir: Path) -> None:
    loaded = load_model(saved_model_dir, device="cpu", dtype="bf16")
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16
    h = loaded.capture(*make_batch(), ROWS, COLS)
    assert h.dtype == torch.float32 and loaded.logits(h).dtype == torch.float32
    assert loaded.head.weight.dtype == torch.float32


def test_load_model_from_hub_cache_records_commit(
    saved_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--fisherlib-test--tiny-qwen3"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in saved_model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    loaded = load_model("fisherlib-test/tiny-qwen3", device="cpu")
    assert loaded.model_id == "fisherlib-test/tiny-qwen3"
    assert loaded.revision == commit


# ---------------------------------------------------------------- names and errors


def test_resolve_model_id(tmp_path: Path) -> None:
    assert resolve_model_id("pythia") == "EleutherAI/pythia-1b"
    assert resolve_model_id("QWEN") == "Qwen/Qwen3-1.7B"
    assert resolve_model_id("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert resolve_model_id(tmp_path) == str(tmp_path.resolve())
    with pytest.raises(UnknownArchitectureError, match="No model folder"):
        resolve_model_id("./no/such/folder")


def test_unknown_arch_lists_the_registry() -> None:
    with pytest.raises(UnknownArchitectureError) as raised:
        load_model("gpt-17", device="cpu")
    message = str(raised.value)
    assert all(name in message for name in REGISTRY)
    assert "local" in message and "hub id" in message


def test_offline_hub_and_uncached_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import; set the constant too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubUnreachableError) as raised:
        load_model("some-org/not-a-model", device="cpu")
    message = str(raised.value)
    assert "ARCH=tiny" in message and "local Hugging Face model folder" in message
    # In the Makefile ARCH picks the parameter file and the run's name; a local folder goes in MODEL.
    assert "MODEL=<folder>" in message
    assert not re.search(r"ARCH=(?!tiny\b)", message), "a folder given as ARCH= would be misrouted"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def _gated_error() -> GatedRepoError:
    """Return the error huggingface_hub raises for a gated repo (without an HTTP response)."""
    response = SimpleNamespace(headers={}, request=None)
    return GatedRepoError("403 Client Error. Cannot access gated repo for url ...", response=response)


def _gated_error_wrapped_by_transformers() -> OSError:
    """Return the OSError transformers raises from a GatedRepoError."""
    try:
        raise OSError("You are trying to access a gated repo.") from _gated_error()
    except OSError as error:
        return error


@pytest.mark.parametrize("make_error", [_gated_error, _gated_error_wrapped_by_transformers])
def test_gated_model(monkeypatch: pytest.MonkeyPatch, make_error) -> None:
    def refuse(*args, **kwargs):
        raise make_error()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(GatedModelError) as raised:
        load_model("llama", device="cpu")
    message = str(raised.value)
    assert "HF_TOKEN" in message and "huggingface-cli login" in message and "meta-llama/Llama-3.2-1B" in message


def test_folder_with_only_config(tmp_path: Path) -> None:
    TINY_CONFIGS["gpt2_tied"]().save_pretrained(tmp_path)
    with pytest.raises(MissingWeightsError, match="no weights"):
        load_model(tmp_path, device="cpu")


@pytest.mark.parametrize(
    "make_encoder",
    [
        lambda: transformers.BertForMaskedLM(
            transformers.BertConfig(
                vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64,
            )
        ),
        lambda: transformers.DistilBertForMaskedLM(
            transformers.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=1, n_heads=4, hidden_dim=64)
        ),
    ],
    ids=["bert", "distilbert"],
)
def test_encoder_folder_is_not_a_causal_lm(tmp_path: Path, make_encoder) -> None:
    make_encoder().save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(NotACausalLMError, match="causal"):
        load_model(tmp_path, device="cpu")


# ---------------------------------------------------------------- out-of-memory backoff


def _oom_above(limit: int, error: type[Exception] = torch.cuda.OutOfMemoryError):
    """Return a fake batch function that doubles its items and runs out of memory above `limit` items."""
    seen_sizes: list[int] = []

    def double(chunk: list[int]) -> torch.Tensor:
        seen_sizes.append(len(chunk))
        if len(chunk) > limit:
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.tensor(chunk) * 2

    return double, seen_sizes


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_oom_backoff_halves_batch(error: type[Exception], caplog: pytest.LogCaptureFixture) -> None:
    items = list(range(19))
    fake, seen_sizes = _oom_above(4, error)
    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        results = run_with_oom_backoff(fake, items, batch_size=16)
    assert torch.equal(torch.cat(results), torch.tensor(items) * 2)
    assert seen_sizes[:3] == [16, 8, 4] and max(seen_sizes[2:]) == 4
    assert "out of GPU memory with batch 16; retrying with 8" in caplog.text
    assert "out of GPU memory with batch 8; retrying with 4" in caplog.text


def test_oom_at_batch_one_suggests_a_remedy() -> None:
    fake, _ = _oom_above(0)
    with pytest.raises(FisherlibError, match="max_context"):
        run_with_oom_backoff(fake, [1, 2, 3], batch_size=2)


def test_other_errors_are_not_retried() -> None:
    def broken(chunk: list[int]) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_with_oom_backoff(broken, [1, 2, 3], batch_size=2)


def test_capture_with_oom_matches_unbatched(
    saved_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_model(saved_model_dir, device="cpu")
    input_ids, attention_mask = make_batch()
    unbatched = loaded.capture(input_ids, attention_mask, ROWS, COLS)

    real_capture = fisherlib.models.loading.capture_final_residual

    def capture_or_oom(model, ids, mask, rows, cols):
        if ids.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return real_capture(model, ids, mask, rows, cols)

    monkeypatch.setattr(fisherlib.models.loading, "capture_final_residual", capture_or_oom)
    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        batched = loaded.capture(input_ids, attention_mask, ROWS, COLS, batch_size=3)
    torch.testing.assert_close(batched, unbatched, atol=1e-5, rtol=0)
    assert "retrying with 1" in caplog.text


def test_registry_names() -> None:
    assert set(REGISTRY) == {"pythia", "llama", "qwen", "tiny", "smollm2"}
    assert REGISTRY["llama"] == "meta-llama/Llama-3.2-1B"


def test_folder_without_tokenizer(tmp_path: Path) -> None:
    make_model("gpt2_tied").save_pretrained(tmp_path)
    with pytest.raises(FisherlibError, match="no tokenizer files"):
        load_model(tmp_path, device="cpu")


# ---------------------------------------------------------------- issue 9: logit scales, causality, device_map

SCALED_CONFIGS = {
    # Cohere: logits * logit_scale; Granite: logits / logits_scaling.
    "cohere": lambda: transformers.CohereConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, logit_scale=0.3, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    ),
    "granite": lambda: transformers.GraniteConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, logits_scaling=7.0,
    ),
}  # fmt: skip


def _save(model: torch.nn.Module, folder: Path) -> Path:
    torch.nn.init.normal_(model.get_output_embeddings().weight, std=1.0)
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,factor,source", [("cohere", 0.3, "logit_scale"), ("granite", 1 / 7, "logits_scaling")])
def test_linear_logit_scale_is_folded_into_the_head(tmp_path: Path, kind: str, factor: float, source: str) -> None:
    folder = _save(AutoModelForCausalLM.from_config(SCALED_CONFIGS[kind]()), tmp_path)
    loaded = load_model(folder, device="cpu")
    assert loaded.head.logit_scale == pytest.approx(factor, rel=1e-12)
    assert source in loaded.head.logit_scale_source
    card = loaded.card()
    assert card["logit_scale"] == pytest.approx(factor) and source in card["logit_scale_source"]
    assert loaded.logits_check_error < 1e-5
    input_ids, attention_mask = make_batch()
    h = loaded.capture(input_ids, attention_mask, ROWS, COLS)
    expected = full_logits(loaded.model, input_ids, attention_mask)[ROWS, COLS]
    torch.testing.assert_close(loaded.logits(h), expected, atol=1e-5, rtol=1e-5)
    unscaled = loaded.model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(loaded.head.weight, unscaled * factor)


def test_soft_capping_is_refused_naming_the_attribute(tmp_path: Path) -> None:
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=30.0,
    )  # fmt: skip
    folder = _save(AutoModelForCausalLM.from_config(config), tmp_path)
    with pytest.raises(NotACausalLMError, match="final_logit_softcapping = 30"):
        load_model(folder, device="cpu")


def test_an_unknown_linear_scale_is_named_in_the_logits_check() -> None:
    model = make_model("gpt_neox")
    head = find_lm_head(model)
    halved = LMHead(weight=head.weight / 2, bias=None, module=head.module)
    with pytest.raises(FisherlibError, match=r"logits are 2 × \(W h \+ b\)"):
        check_head_reproduces_logits(model, halved, *make_batch())


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_causal_models_pass_the_causality_check(kind: str) -> None:
    from fisherlib.models.surgery import check_causal

    assert check_causal(make_model(kind), torch.arange(2, 14)) < 1e-5


def test_bidirectional_attention_fails_the_causality_check_at_load(tmp_path: Path) -> None:
    config = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, use_bidirectional_attention=True,
    )  # fmt: skip
    folder = _save(AutoModelForCausalLM.from_config(config), tmp_path)
    # The logits check alone passes: it compares h with the same pass's logits.
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert check_head_reproduces_logits(model, find_lm_head(model), *make_batch()) < 1e-4
    with pytest.raises(FisherlibError, match="not causal.*use_bidirectional_attention = True"):
        load_model(folder, device="cpu")


def test_check_causal_rejects_bad_input() -> None:
    from fisherlib.models.surgery import check_causal

    model = make_model("gpt2_tied")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        check_causal(model, torch.tensor([3]))
    with pytest.raises(ValueError, match="positions must lie"):
        check_causal(model, torch.arange(2, 8), positions=[9])


def test_load_model_records_padding_rows_and_causality(saved_model_dir: Path) -> None:
    loaded = load_model(saved_model_dir, device="cpu")
    assert loaded.head.n_tokens == len(make_tokenizer()) and loaded.head.padding_rows == VOCAB - len(make_tokenizer())
    assert 0 <= loaded.causal_check_error < 1e-5
    card = loaded.card()
    assert card["tokens"] + card["padding_rows"] == card["vocab"] == VOCAB and card["dtype"] == "float32"


def test_device_map_auto_on_cpu_gives_the_same_h(saved_model_dir: Path) -> None:
    pytest.importorskip("accelerate")
    plain = load_model(saved_model_dir, device="cpu")
    mapped = load_model(saved_model_dir, device_map="auto", max_memory={"cpu": "2GiB"})
    assert mapped.device == torch.device("cpu") and mapped.card()["device_map"] == ["cpu"]
    input_ids, attention_mask = make_batch()
    torch.testing.assert_close(
        mapped.capture(input_ids, attention_mask, ROWS, COLS), plain.capture(input_ids, attention_mask, ROWS, COLS)
    )


def test_device_map_with_a_layer_offloaded_to_disk(saved_model_dir: Path, tmp_path: Path) -> None:
    """accelerate's hooks run the offloaded layer; h is still taken at the head's input, where the final norm lives."""
    pytest.importorskip("accelerate")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip
    mapped = load_model(saved_model_dir, device_map=device_map, offload_folder=tmp_path)
    assert mapped.card()["device_map"] == ["cpu", "disk"]
    assert mapped.logits_check_error < 1e-4
    plain = load_model(saved_model_dir, device="cpu")
    input_ids, attention_mask = make_batch()
    torch.testing.assert_close(
        mapped.capture(input_ids, attention_mask, ROWS, COLS), plain.capture(input_ids, attention_mask, ROWS, COLS)
    )


def test_device_map_parameters_are_checked(saved_model_dir: Path) -> None:
    from fisherlib.core.errors import ParameterError

    with pytest.raises(ParameterError, match="not both"):
        load_model(saved_model_dir, device="cpu", device_map="auto")
    with pytest.raises(ParameterError, match="only apply with device_map"):
        load_model(saved_model_dir, max_memory={"cpu": "1GiB"})
    with pytest.raises(ParameterError, match="neither a GPU index"):
        load_model(saved_model_dir, device_map="auto", max_memory={"gpu": "1GiB"})
    with pytest.raises(ParameterError, match="not a size"):
        load_model(saved_model_dir, device_map="auto", max_memory={0: "lots"})
    with pytest.raises(ParameterError, match="device_map='everywhere'"):
        load_model(saved_model_dir, device_map="everywhere")


def test_head_on_the_meta_device_is_refused() -> None:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(TINY_CONFIGS["llama_tied"]())
    with pytest.raises(NotACausalLMError, match="offloaded"):
        find_lm_head(model)


def test_cpu_out_of_memory_triggers_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    message = (
        "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 9663676416 bytes. Error code 12 (Cannot allocate memory)"
    )
    seen: list[int] = []

    def allocate(chunk: list[int]) -> int:
        seen.append(len(chunk))
        if len(chunk) > 2:
            raise RuntimeError(message)
        return len(chunk)

    with caplog.at_level(logging.WARNING, logger="fisherlib"):
        assert sum(run_with_oom_backoff(allocate, list(range(7)), batch_size=8)) == 7
    assert seen[:3] == [7, 3, 1]

    def python_oom(chunk: list[int]) -> int:
        if len(chunk) > 1:
            raise MemoryError()
        return 1

    assert sum(run_with_oom_backoff(python_oom, [1, 2, 3], batch_size=4)) == 3


# ---------------------------------------------------------------- issue 23: inputs that failed unclearly


def test_a_tokenizer_from_another_model_is_refused_at_load(tmp_path: Path) -> None:
    # 16 embedding rows, a tokenizer of len(WORDS) + 2 ids: today a raw IndexError from the embedding.
    config = transformers.GPT2Config(vocab_size=16, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    largest = max(tokenizer.get_vocab().values())
    with pytest.raises(FisherlibError) as error:
        load_model(tmp_path, device="cpu")
    message = str(error.value)
    assert "16 rows" in message and f"ids 16 to {largest}" in message
    assert "tokenizer" in message and "another model" in message and str(tmp_path) in message


def test_a_tokenizer_past_the_embedding_is_refused_at_sampling_too(saved_model_dir: Path) -> None:
    from fisherlib.data.corpora import Document
    from fisherlib.data.sampling import sample_positions

    loaded = load_model(saved_model_dir, device="cpu")
    # A tokenizer swapped in after the load: ids past the 128 rows of the embedding.
    vocab = {"[UNK]": 0, "</s>": 1} | {word: 200 + index for index, word in enumerate(dict.fromkeys(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    loaded.tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>", pad_token="</s>")
    documents = [Document("words", f"d{i}", " ".join(WORDS[i:] + WORDS[:i])) for i in range(6)]
    with pytest.raises(FisherlibError, match=r"token ids up to \d+ .* 128 rows"):
        sample_positions(loaded, documents, 5, top_k=4, min_prefix=2, max_context=32, progress=False)


def test_nan_weights_are_named_instead_of_blamed_on_soft_capping(tmp_path: Path) -> None:
    model = make_model("llama_tied")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(FisherlibError) as error:
        load_model(tmp_path, device="cpu")
    message = str(error.value)
    assert "not finite" in message and "soft-capping" not in message
    assert "model.layers.1" in message and "model.layers.1.mlp.down_proj.weight" in message


def test_a_truncated_safetensors_file_is_named(tmp_path: Path) -> None:
    save_random_qwen3(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(FisherlibError) as error:
        load_model(tmp_path, device="cpu")
    message = str(error.value)
    assert str(weights) in message and "truncated" in message and "re-download" in message
