"""Small random causal LMs from configs (float64, peaked distributions) and full-context references, for the layer tests."""

from __future__ import annotations

import torch

from fisherlib.layers import pullback as L

VOCAB = 97
WIDTH = 32


def _random_lm(kind: str, seed: int = 0) -> torch.nn.Module:
    """A small causal LM from a config, in float64, with weights scaled up so that its distributions are peaked."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, OPTConfig

    torch.manual_seed(seed)
    config = {
        # Pythia's architecture: parallel attention and MLP, rotary embeddings, LayerNorm.
        "gpt_neox": GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64,
        ),
        # Grouped-query attention (2 key heads for 4 query heads), RMSNorm, SiLU MLP.
        "llama": LlamaConfig(
            vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        ),
        # Learned absolute positions, a tied head.
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
        # Sliding-window attention: a window longer than every context (16 > 11 tokens) never binds ...
        "mistral": MistralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, sliding_window=16,
        ),
        # ... one of 4 tokens does.
        "mistral_binding": MistralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, sliding_window=4,
        ),
        # OPT-350m's layout: post-norm blocks, no final norm, the residual (64) projected to the head's width (32).
        "opt_projected": OPTConfig(
            vocab_size=VOCAB, hidden_size=64, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, word_embed_proj_dim=WIDTH, do_layer_norm_before=False,
        ),
        # The other OPTs': pre-norm blocks and a final norm, inside the model's `decoder`.
        "opt": OPTConfig(
            vocab_size=VOCAB, hidden_size=64, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, word_embed_proj_dim=WIDTH,
        ),
    }[kind]  # fmt: skip
    model = _norms_in_model_dtype(AutoModelForCausalLM.from_config(config).double().eval())
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(6)
    return model


def _norms_in_model_dtype(model: torch.nn.Module) -> torch.nn.Module:
    """Make RMSNorms compute in the model's dtype: transformers' Llama norm upcasts to float32 only, which
    would cap a float64 model's logits at ~1e-7 relative accuracy (measured: 3e-6 error in t at ε = 1e-3)."""
    import types

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(forward, module)
    return model


def _contexts(lengths=(5, 11, 8), seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def _directions(P: int, D: int, d: int = WIDTH, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(P, D, d, dtype=torch.float64, generator=generator), dim=-1)


def _divergence_full_context(model, contexts, layer, U, t) -> torch.Tensor:
    """Forward KL `[P, D]` between the unperturbed output and the output with `t [P, D]`·u added (full context)."""
    z0 = L.full_context_logits(model, contexts, layer, torch.zeros(len(contexts), 1, U.shape[-1], dtype=torch.float64))[:, 0]
    z = L.full_context_logits(model, contexts, layer, t[..., None] * U)
    log_p = torch.log_softmax(z0, -1)[:, None]
    return (log_p.exp() * (log_p - torch.log_softmax(z, -1))).sum(-1)
