"""Find the LM head of a Hugging Face causal LM and capture its input, the post-final-norm residual `h`.

The LM head is whatever `model.get_output_embeddings()` returns, for every architecture: its input is
`h` after the final norm (spec §1), whatever the norm is called. Rather than trusting that, the logits
`W h + b` are checked once per model against the model's own (`check_head_reproduces_logits`), so an
architecture that post-processes its logits (soft-capping, scaling) fails loudly instead of silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fisherlib.errors import FisherlibError, NotACausalLMError

# (atol, rtol) for `W h + b` against the model's logits; half-precision logits are rounded to the
# model's dtype (about 3 significant digits for bfloat16), while W h + b is computed in float32.
_LOGIT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-6, 1e-6),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (5e-2, 2e-2),
}


@dataclass
class LMHead:
    """The unembedding `z = W h + b` of a causal LM, in float32.

    Attributes:
        weight: `W` [V, d], a detached float32 copy on the model's device. V may exceed the tokenizer's
            length (vocabularies padded for speed); every row is kept.
        bias: `b` [V] float32, or None when the head has no bias.
        module: `model.get_output_embeddings()`, the module whose input is `h`.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    module: nn.Module

    @property
    def vocab_size(self) -> int:
        """Return V, the number of rows of `W`."""
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        """Return d, the width of `h`."""
        return self.weight.shape[1]


class _StopForward(Exception):
    """Raised by the capture hook so that the LM head, and everything after it, never runs."""


def find_lm_head(model: nn.Module) -> LMHead:
    """Return the LM head of `model` as float32 `W` [V, d] and `b` [V] (or None).

    Raises:
        NotACausalLMError: the model has no output embeddings, or they are not a linear map.
    """
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    module = get_output_embeddings() if callable(get_output_embeddings) else None
    if module is None:
        raise NotACausalLMError(
            f"{type(model).__name__} has no LM head (get_output_embeddings() is None): "
            "load the model with AutoModelForCausalLM, not AutoModel."
        )
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    # Linear-like means `W h + b` with a [V, d] weight; anything else (adaptive softmax, quantised
    # packed weights) would need its own unembedding code.
    is_linear_like = (
        isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape == weight.shape[:1]))
    )
    if not is_linear_like:
        raise NotACausalLMError(
            f"The LM head of {type(model).__name__} is a {type(module).__name__}, not a linear layer "
            "with a [vocab, hidden] weight; fisherlib cannot read W and b from it."
        )
    # Copies: float32 for the Fisher algebra, and detached from the (possibly tied) parameters.
    return LMHead(
        weight=weight.detach().to(torch.float32, copy=True),
        bias=None if bias is None else bias.detach().to(torch.float32, copy=True),
        module=module,
    )


def _model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def _as_index(index: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    """Return `index` as a 1-D int64 tensor on `device`."""
    return torch.as_tensor(index, dtype=torch.long).reshape(-1).to(device)


def capture_final_residual(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor | Sequence[int],
    cols: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """Return `h` [N, d] float32, the LM head's input at positions (rows[i], cols[i]) of the batch.

    The forward pass stops at the LM head, so logits for the whole [batch, seq, V] are never
    materialised. `h` is an ordinary (not inference-mode) tensor on the model's device.

    Args:
        model: a Hugging Face causal LM.
        input_ids: [B, T] token ids.
        attention_mask: [B, T] 1 for tokens, 0 for padding (on the right), or None.
        rows: [N] batch indices of the positions.
        cols: [N] sequence indices of the positions.
    """
    head_module = model.get_output_embeddings()
    if head_module is None:
        raise NotACausalLMError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None).")
    device = _model_device(model)
    captured: list[torch.Tensor] = []

    def copy_input_and_stop(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("input", kwargs.get("hidden_states"))
        if hidden is None or hidden.ndim != 3:
            raise FisherlibError(
                f"The LM head of {type(model).__name__} was called without a [batch, seq, d] input; "
                "cannot capture the final residual."
            )
        row_index = _as_index(rows, hidden.device)
        col_index = _as_index(cols, hidden.device)
        captured.append(hidden[row_index, col_index].float())
        raise _StopForward

    hook = head_module.register_forward_pre_hook(copy_input_and_stop, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(
                input_ids=input_ids.to(device),
                attention_mask=None if attention_mask is None else attention_mask.to(device),
                use_cache=False,
            )
    except _StopForward:
        pass
    finally:
        hook.remove()
    if not captured:
        raise FisherlibError(
            f"The forward pass of {type(model).__name__} never called its LM head "
            f"({type(head_module).__name__}); cannot capture the final residual."
        )
    # Cloning outside inference mode gives a normal tensor that autograd may use later.
    return captured[0].clone()


def logits_from_residual(h: torch.Tensor, head: LMHead) -> torch.Tensor:
    """Return `z = h Wᵀ + b` [N, V] float32 for `h` [N, d]."""
    h = h.to(device=head.weight.device, dtype=torch.float32)
    logits = h @ head.weight.T
    if head.bias is not None:
        logits = logits + head.bias
    return logits


def _check_positions(attention_mask: torch.Tensor, per_row: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows, cols) of up to `per_row` real tokens per row, first and last included."""
    rows, cols = [], []
    for row, length in enumerate(attention_mask.sum(dim=1).tolist()):
        if length == 0:
            continue
        picks = torch.linspace(0, length - 1, steps=min(per_row, length)).round().long().unique()
        rows += [row] * len(picks)
        cols += picks.tolist()
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def check_head_reproduces_logits(
    model: nn.Module,
    head: LMHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> float:
    """Return the max |(W h + b) - logits| over a few positions of a small batch; raise if too large.

    Runs the model fully on `input_ids` [B, T] (keep it short: this materialises [B, T, V] logits)
    and compares with the captured `h`. Tolerances default by the model's dtype.

    Raises:
        FisherlibError: `W h + b` does not reproduce the model's logits.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    rows, cols = _check_positions(attention_mask.cpu())
    h = capture_final_residual(model, input_ids, attention_mask, rows, cols)
    reconstructed = logits_from_residual(h, head)

    device = _model_device(model)
    with torch.inference_mode():
        output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    expected = output.logits[rows.to(device), cols.to(device)].float().to(reconstructed.device)
    if expected.shape != reconstructed.shape:
        raise FisherlibError(
            f"{type(model).__name__} returns logits of shape {tuple(expected.shape)} per batch of positions, "
            f"but its LM head gives {tuple(reconstructed.shape)}; fisherlib cannot use this model."
        )

    model_dtype = next(model.parameters()).dtype
    default_atol, default_rtol = _LOGIT_TOLERANCES.get(model_dtype, _LOGIT_TOLERANCES[torch.bfloat16])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    max_error = (reconstructed - expected).abs().max().item()
    if not torch.allclose(reconstructed, expected, atol=atol, rtol=rtol):
        raise FisherlibError(
            f"W h + b does not reproduce the logits of {type(model).__name__} (max abs error {max_error:.3g} "
            f"in {model_dtype}, tolerance atol={atol:g}, rtol={rtol:g}). The model transforms the LM head's "
            "output (logit soft-capping or scaling) or its head is not the last step; the Fisher "
            "pullback of spec §2 would not describe it."
        )
    return max_error
