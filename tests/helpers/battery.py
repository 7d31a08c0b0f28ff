"""A battery of causal-LM architectures built from configs (random init, as tuned-lens tests do).

Every architecture transformers ships with a causal-LM head that loads offline at this size: the layer
engine must run on each, on the prefix-cached path where it applies and the full-context path elsewhere.
"""

from __future__ import annotations

import torch

VOCAB = 97
WIDTH = 32

_COMMON = dict(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


def configs() -> dict:
    """Return `{name: config}`, two blocks, width 32, 4 heads (2 key heads where grouped)."""
    import transformers as T

    c = _COMMON
    return {
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64),
        "gpt_neox": T.GPTNeoXConfig(**c),
        "gpt_neo": T.GPTNeoConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
            window_size=8, max_position_embeddings=64,
        ),
        "gptj": T.GPTJConfig(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
        "codegen": T.CodeGenConfig(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
        "llama": T.LlamaConfig(**c, num_key_value_heads=2),
        "mistral": T.MistralConfig(**c, num_key_value_heads=2, sliding_window=4096),
        "mixtral": T.MixtralConfig(**c, num_key_value_heads=2, num_local_experts=2),
        "qwen2": T.Qwen2Config(**c, num_key_value_heads=2),
        "qwen3": T.Qwen3Config(**c, num_key_value_heads=2, head_dim=8),
        "phi": T.PhiConfig(**c),
        "phi3": T.Phi3Config(**c, num_key_value_heads=2, pad_token_id=0),
        "gemma": T.GemmaConfig(**c, num_key_value_heads=2, head_dim=8),
        "gemma2": T.Gemma2Config(**c, num_key_value_heads=2, head_dim=8, sliding_window=4096, final_logit_softcapping=None, attn_logit_softcapping=None),
        "gemma3": T.Gemma3TextConfig(**c, num_key_value_heads=2, head_dim=8, sliding_window=4096, final_logit_softcapping=None, attn_logit_softcapping=None),
        "bloom": T.BloomConfig(vocab_size=VOCAB, hidden_size=WIDTH, n_layer=2, n_head=4),
        "falcon": T.FalconConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4),
        "opt": T.OPTConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
            word_embed_proj_dim=WIDTH,
        ),
        "mamba": T.MambaConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, state_size=4),
        # Cohere's default logit scale (1/16) keeps a random model's divergence below ε at any push.
        "cohere": T.CohereConfig(**c, num_key_value_heads=2, logit_scale=1.0),
        "granite": T.GraniteConfig(**c, num_key_value_heads=2),
        "olmo": T.OlmoConfig(**c),
        "olmo2": T.Olmo2Config(**c),
        "stablelm": T.StableLmConfig(**c, num_key_value_heads=4),
        "starcoder2": T.Starcoder2Config(**c, num_key_value_heads=2),
        "persimmon": T.PersimmonConfig(**c),
        "xglm": T.XGLMConfig(vocab_size=VOCAB, d_model=WIDTH, num_layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64),
        "biogpt": T.BioGptConfig(**c),
        "gpt_bigcode": T.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64),
        "mpt": T.MptConfig(vocab_size=VOCAB, d_model=WIDTH, n_layers=2, n_heads=4, max_seq_len=64),
    }  # fmt: skip


# Where the model's own code does not run in float64 (XGLM's mask fill overflows; Mixtral's grouped_mm is float32 only).
FLOAT32_ONLY = {"xglm", "mixtral"}
# What the engine must choose: the full-context path, and the double-backward JVP.
FULL_CONTEXT = {"gpt_neo", "bloom", "falcon", "mamba", "xglm", "mpt"}
DOUBLE_BACKWARD = {"bloom"}


def build(name: str, seed: int = 0, scale: float = 4.0) -> torch.nn.Module:
    """Return the battery's `name` model, eval mode, float64 (float32 where it cannot), 2-D weights times `scale`
    (random init is nearly uniform over the vocabulary; scaled, its distributions are peaked enough to cross ε)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(configs()[name]).eval()
    model = model.float() if name in FLOAT32_ONLY else model.double()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(scale)
    return model
