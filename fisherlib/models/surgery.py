"""Find the LM head of a Hugging Face causal LM and capture its input, the post-final-norm residual `h`.

The LM head is whatever `model.get_output_embeddings()` returns, for every architecture: its input is
`h` after the final norm (spec §1), whatever the norm is called. Rather than trusting that, the logits
`W h + b` are checked once per model against the model's own (`check_head_reproduces_logits`), so an
architecture that post-processes its logits fails loudly instead of silently. A *linear* factor on the
logits (Cohere's `logit_scale`, Granite's `logits_scaling`, Falcon-H1's `lm_head_multiplier`) is read
from the config and folded into `W` and `b`, so the head still gives the model's logits exactly;
non-linear post-processing (Gemma 2's tanh soft-capping) is refused with the config attribute named.
`check_causal` checks that `h` at a position does not depend on later tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import FisherlibError, NotACausalLMError

# (atol, rtol) for `W h + b` against the model's logits; half-precision logits are rounded to the
# model's dtype (about 3 significant digits for bfloat16), while W h + b is computed in float32.
_LOGIT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-6, 1e-6),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (5e-2, 2e-2),
}

# Largest ‖h(full text) − h(text cut after the position)‖ / ‖h‖ that still counts as causal: float32
# kernels of different sequence lengths differ by ~1e-7; a model whose h sees later tokens, by percent.
_CAUSAL_TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}

# Config attributes that scale the logits linearly after the LM head: (name, operation).
# `multiply`: logits = (W h + b) * value; `divide`: logits = (W h + b) / value.
LINEAR_LOGIT_FACTORS: tuple[tuple[str, str], ...] = (
    ("logit_scale", "multiply"),  # Cohere, Cohere 2
    ("logits_scaling", "divide"),  # Granite, GraniteMoe, GraniteMoeShared, GraniteMoeHybrid
    ("lm_head_multiplier", "multiply"),  # Falcon-H1
)
# Config attributes of non-linear post-processing of the logits: the Fisher pullback of W would not apply.
NONLINEAR_LOGIT_TRANSFORMS: tuple[str, ...] = ("final_logit_softcapping",)
# Config attributes that, when true, let a position attend to later tokens.
_BIDIRECTIONAL_ATTRIBUTES = ("use_bidirectional_attention", "bidirectional_attention", "bidirectional")


@dataclass
class LMHead:
    """The unembedding `z = W h + b` of a causal LM, in float32.

    Attributes:
        weight: `W` [V, d], a detached float32 copy on the model's device. V may exceed the tokenizer's
            length (vocabularies padded for speed); every row is kept.
        bias: `b` [V] float32, or None when the head has no bias.
        module: `model.get_output_embeddings()`, the module whose input is `h`.
        logit_scale: the linear factor folded into `weight` and `bias` (1.0: none), so that
            `W h + b` is the model's logits.
        logit_scale_source: where the factor came from, e.g. "config.logits_scaling = 8 (divide)", or None.
        n_tokens: rows `[0, n_tokens)` are tokens of the tokenizer; rows past it pad the vocabulary for
            speed (Pythia: 50 304 rows, 50 277 tokens). None: every row is a token. Padding rows stay in
            `p` (they are part of the model's softmax) but are never picked as a token of a pair.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    module: nn.Module | None
    logit_scale: float = 1.0
    logit_scale_source: str | None = None
    n_tokens: int | None = None

    @property
    def vocab_size(self) -> int:
        """Return V, the number of rows of `W`."""
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        """Return d, the width of `h`."""
        return self.weight.shape[1]

    @property
    def padding_rows(self) -> int:
        """Return the number of rows of `W` past the tokenizer's vocabulary (0 when unknown)."""
        return 0 if self.n_tokens is None else max(0, self.vocab_size - self.n_tokens)


def _config_views(config: Any) -> list[Any]:
    """Return `config` and, for multimodal wrappers, its text config."""
    views = [config]
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            text_config = get_text_config()
        except Exception:  # noqa: BLE001 - some configs raise when they have no text part
            text_config = None
        if text_config is not None and text_config is not config:
            views.append(text_config)
    return views


def logit_postprocessing(config: Any) -> tuple[float, str | None]:
    """Return `(factor, source)`: the linear factor a model applies to `W h + b`, read from its `config`.

    `factor` is 1.0 and `source` None for a model that returns `W h + b` as its logits.

    Raises:
        NotACausalLMError: the config declares non-linear post-processing (logit soft-capping), which no
            unembedding `W` can reproduce; the message names the attribute.
    """
    if config is None:
        return 1.0, None
    factor, sources = 1.0, []
    seen: set[str] = set()
    for view in _config_views(config):
        model_type = getattr(view, "model_type", type(view).__name__)
        for name in NONLINEAR_LOGIT_TRANSFORMS:
            value = getattr(view, name, None)
            if value not in (None, 0, 0.0, False):
                raise NotACausalLMError(
                    f"The {model_type!r} config sets {name} = {value}: the model soft-caps its logits "
                    f"(cap·tanh(z/cap)), which is not linear in h, so the Fisher pullback through W (spec §2) does "
                    f"not describe it. Set config.{name} = None to study the uncapped head, or choose another model."
                )
        for name, operation in LINEAR_LOGIT_FACTORS:
            value = getattr(view, name, None)
            if value is None or name in seen:
                continue
            seen.add(name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise NotACausalLMError(f"config.{name} = {value!r} is not a number; cannot fold it into W.") from None
            if not (value > 0 and torch.isfinite(torch.tensor(value))):
                raise NotACausalLMError(f"config.{name} = {value} must be a positive finite number to fold into W.")
            if value == 1.0:
                continue
            factor *= value if operation == "multiply" else 1.0 / value
            sources.append(f"config.{name} = {value:g} ({operation})")
    return factor, "; ".join(sources) or None


class _StopForward(Exception):
    """Raised by the capture hook so that the LM head, and everything after it, never runs."""


def find_lm_head(model: nn.Module) -> LMHead:
    """Return the LM head of `model` as float32 `W` [V, d] and `b` [V] (or None).

    A linear factor the model applies to its logits (see `logit_postprocessing`) is folded into `W`
    and `b` and recorded in `logit_scale` and `logit_scale_source`.

    Raises:
        NotACausalLMError: the model has no output embeddings, they are not a linear map, they live on
            the `meta` device (offloaded), or the model soft-caps its logits.
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
    if weight.device.type == "meta":
        raise NotACausalLMError(
            f"The LM head of {type(model).__name__} is offloaded (its weight is on the meta device); give "
            "max_memory enough room for it on a GPU or the CPU so that it is not offloaded to disk."
        )
    factor, source = logit_postprocessing(getattr(model, "config", None))
    # Copies: float32 for the Fisher algebra, and detached from the (possibly tied) parameters.
    with torch.no_grad():
        weight32 = weight.detach().to(torch.float32, copy=True)
        bias32 = None if bias is None else bias.detach().to(torch.float32, copy=True)
        if factor != 1.0:
            weight32.mul_(factor)
            if bias32 is not None:
                bias32.mul_(factor)
    return LMHead(weight=weight32, bias=bias32, module=module, logit_scale=factor, logit_scale_source=source)


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
    finite = torch.isfinite(expected).all(-1) & torch.isfinite(reconstructed).all(-1)
    if not bool(finite.all()):
        # Comparing NaN with NaN would blame the head; the logits themselves are broken, so say where.
        raise FisherlibError(
            f"The logits of {type(model).__name__} are not finite (NaN or inf at {int((~finite).sum())} of "
            f"{len(finite)} checked positions): {_locate_non_finite(model, input_ids, attention_mask)}"
        )
    default_atol, default_rtol = _LOGIT_TOLERANCES.get(model_dtype, _LOGIT_TOLERANCES[torch.bfloat16])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    max_error = (reconstructed - expected).abs().max().item()
    if not torch.allclose(reconstructed, expected, atol=atol, rtol=rtol):
        raise FisherlibError(
            f"W h + b does not reproduce the logits of {type(model).__name__} (max abs error {max_error:.3g} "
            f"in {model_dtype}, tolerance atol={atol:g}, rtol={rtol:g}). {_explain_mismatch(reconstructed, expected)}"
            "The Fisher pullback of spec §2 would not describe this model."
        )
    return max_error


def _first_tensor(output: Any) -> torch.Tensor | None:
    """Return a module's output tensor: itself, the first tensor of a tuple, or the first of a ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return next((value for value in values if isinstance(value, torch.Tensor)), None)


def _locate_non_finite(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """Return a sentence naming where a forward pass first turns non-finite and which parameters hold NaN or inf.

    One forward pass with a hook on every submodule: hooks fire as modules finish, in execution order,
    so the first module with a non-finite output is where the NaN or inf arises.
    """
    first: list[str] = []

    def watch(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            tensor = _first_tensor(output)
            if not first and tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                first.append(name)

        return hook

    handles = [module.register_forward_hook(watch(name)) for name, module in model.named_modules() if name]
    try:
        with torch.inference_mode():
            device = _model_device(model)
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    where = "no module's output"
    if first:
        block = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)", first[0])
        where = f"the first module whose output is not finite is {first[0]}" + (
            f" (decoder block {block.group(1)})" if block else ""
        )
    with torch.no_grad():
        broken = [name for name, parameter in model.named_parameters() if not bool(torch.isfinite(parameter).all())]
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        return (
            f"{where}, and {len(broken)} parameter tensor{'s' if len(broken) > 1 else ''} hold{'' if len(broken) > 1 else 's'} "
            f"NaN or inf ({shown}). The weights are damaged: re-download the model or re-save it from a good copy."
        )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return (
        f"{where}; no parameter holds NaN or inf, so the activations overflow in {dtype}: "
        "load the model in a wider dtype (dtype='float32' or 'bfloat16')."
    )


def _explain_mismatch(reconstructed: torch.Tensor, expected: torch.Tensor) -> str:
    """Return a sentence on how the model's logits relate to `W h + b` (a linear scale, or not)."""
    x, y = reconstructed.double().flatten(), expected.double().flatten()
    denominator = float(x @ x)
    if denominator > 0:
        scale = float(x @ y) / denominator
        residual = float((y - scale * x).norm() / y.norm().clamp_min(1e-300))
        if residual < 1e-3 and abs(scale - 1) > 1e-3:
            names = ", ".join(f"{name} ({operation})" for name, operation in LINEAR_LOGIT_FACTORS)
            return (
                f"The model's logits are {scale:.6g} × (W h + b): a linear scale that no config attribute fisherlib "
                f"knows declares (known: {names}); add the attribute to "
                "fisherlib.models.surgery.LINEAR_LOGIT_FACTORS. "
            )
    return (
        "The model transforms the LM head's output non-linearly (e.g. logit soft-capping), or its head is "
        "not the last step. "
    )


def check_causal(
    model: nn.Module,
    input_ids: torch.Tensor,
    positions: Sequence[int] | None = None,
    rtol: float | None = None,
) -> float:
    """Return the largest ‖h(full) − h(cut)‖ / ‖h(full)‖ over `positions`; raise if `h` sees later tokens.

    `h(full)` is the LM head's input at position `j` of the sequence `input_ids` [T] (or [1, T]);
    `h(cut)` the same from the sequence cut after `j`. A causal LM gives the same `h` (up to kernel
    rounding); a model with bidirectional attention does not, and would pass the logits check, which
    compares `h` with the same pass's logits. `positions` default to four spread over the sequence
    (the last one excluded: cutting after it changes nothing). Tolerance defaults by the model's dtype.

    Raises:
        FisherlibError: `h` at some position depends on later tokens; the message names any config
            attribute that turns on bidirectional attention.
        ValueError: `input_ids` is not one sequence of at least two tokens.
    """
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        input_ids = input_ids[0]
    if input_ids.dim() != 1 or input_ids.numel() < 2:
        raise ValueError(f"check_causal needs one sequence of at least 2 tokens, got shape {tuple(input_ids.shape)}")
    length = input_ids.numel()
    if positions is None:
        positions = torch.linspace(0, length - 2, steps=min(4, length - 1)).round().long().unique().tolist()
    positions = [int(j) for j in positions]
    if not positions or min(positions) < 0 or max(positions) >= length:
        raise ValueError(f"positions must lie in [0, {length}), got {positions}")
    model_dtype = next(model.parameters()).dtype
    tolerance = _CAUSAL_TOLERANCES.get(model_dtype, _CAUSAL_TOLERANCES[torch.bfloat16]) if rtol is None else rtol
    ids = input_ids[None]
    mask = torch.ones_like(ids)
    full = capture_final_residual(model, ids, mask, [0] * len(positions), positions).double()
    worst, worst_position = 0.0, positions[0]
    for index, j in enumerate(positions):
        cut = capture_final_residual(model, ids[:, : j + 1], mask[:, : j + 1], [0], [j])[0].double()
        difference = float((full[index].cpu() - cut.cpu()).norm() / full[index].norm().clamp_min(1e-30).cpu())
        if difference > worst:
            worst, worst_position = difference, j
    if worst > tolerance:
        config = getattr(model, "config", None)
        flags = [
            f"config.{name} = {getattr(view, name)!r}"
            for view in (_config_views(config) if config is not None else [])
            for name in _BIDIRECTIONAL_ATTRIBUTES
            if getattr(view, name, None)
        ]
        if config is not None and getattr(config, "is_causal", True) is False:
            flags.append("config.is_causal = False")
        hint = f" The config sets {', '.join(dict.fromkeys(flags))}: set it to False." if flags else ""
        raise FisherlibError(
            f"{type(model).__name__} is not causal: h at position {worst_position} changes by {worst:.3g} "
            f"(relative; tolerance {tolerance:g} in {model_dtype}) when the tokens after it are removed, so h "
            f"sees later tokens and is not a next-token state.{hint}"
        )
    return worst
