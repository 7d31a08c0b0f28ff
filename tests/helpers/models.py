"""Random tiny causal LMs of five architectures, a word-level tokenizer and padded batches, for the model tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM

VOCAB = 128  # model rows; the tokenizer below has fewer, as in vocabularies padded for speed
HIDDEN = 32

WORDS = (
    "once upon a time there was little girl boy named lily tom she he loved to play outside in the park "
    "one day saw big red ball wanted with it but too high def return import class for if else while "
    "quick brown fox jumps over lazy dog of source code python who liked read"
).split()

# The sizes every architecture below shares; each adds what sets it apart.
_SIZES = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
_GROUPED_QUERY = dict(_SIZES, num_key_value_heads=2)

TINY_CONFIGS = {
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_SIZES),
    "llama_tied": lambda: transformers.LlamaConfig(**_GROUPED_QUERY, tie_word_embeddings=True),
    "qwen3_untied": lambda: transformers.Qwen3Config(**_GROUPED_QUERY, head_dim=8, tie_word_embeddings=False),
    "gpt2_tied": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64),
    "phi_bias": lambda: transformers.PhiConfig(**_SIZES),
}


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Return a word-level tokenizer with len(WORDS) + 2 tokens and no pad token."""
    vocab = {"[UNK]": 0, "</s>": 1} | {word: index + 2 for index, word in enumerate(dict.fromkeys(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


def make_model(kind: str) -> torch.nn.Module:
    """Return a random tiny causal LM in eval mode whose logits are O(1), not O(0.01)."""
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[kind]())
    head = model.get_output_embeddings()
    # Unit-scale unembedding rows make the 1e-4 comparisons below meaningful.
    torch.nn.init.normal_(head.weight, std=1.0)
    if kind == "phi_bias":
        torch.nn.init.normal_(head.bias, std=1.0)
    return model.eval()


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Return right-padded input_ids [3, 12] and attention_mask [3, 12] (rows of 12, 7 and 3 tokens)."""
    lengths = (12, 7, 3)
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        # Ids up to VOCAB - 1 exercise the padded rows of W too.
        input_ids[row, :length] = torch.randint(2, VOCAB, (length,))
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


ROWS = torch.tensor([0, 0, 0, 1, 1, 2, 2])
COLS = torch.tensor([0, 5, 11, 0, 6, 1, 2])


def save_random_qwen3(folder: Path) -> Path:
    """Write a random Qwen3 (untied, padded vocabulary, seed 0) and its tokenizer into `folder`."""
    torch.manual_seed(0)
    make_model("qwen3_untied").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder
