"""Activation steering's push: `α v` added to the residual stream at `layer` at every position of a text.

A steering vector moves every position at once, so position t's logits `z_t(α)` change through its own
residual and, by attention, through every earlier one. Their velocity `a_t = dz_t/dα` at `α = 0` comes for
all positions from one forward-mode pass over the whole text (α is a dual number with tangent 1), and the
closed form reads `α_pred(t, ε) = sqrt(2ε / Var_{p_t}[a_t])`, the study's `t_pred` for this push. The exact
`α_emp(t, ε)`, the first α > 0 where `KL(p_t ‖ q_t(α)) = ε`, needs full forward passes (the push reaches the
prefix, so no key/value cache can be reused); it uses the layer study's first-crossing search
(`first_crossing.first_crossing`) with one lattice per text, so that a scan point is one pass for all its positions.

Attention runs through `engine.sequence_attention` during these passes (plain tensor operations, softmax
in float32 or the model's dtype if wider): PyTorch's fused kernels have no forward-mode rule, transformers'
eager attention takes its softmax in float32 even in a float64 model, and values and slopes of one search
must come from the same arithmetic. Logits are cast to float64 right after the forward pass.

Texts are right-padded; a padded slot comes after every real token, so causal attention never lets it
reach one. Shapes: `N` texts, `T` tokens (the longest text), `V` vocabulary, `d` width, `E` thresholds ε.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD

from ..core import checks
from ..core.errors import InputError
from .engine import (
    HEAD,
    SEQUENCE_ATTENTION_NAME,
    _hidden_of,
    _with_hidden,
    attention_function_on,
    check_layer,
    context_length,
    double_backward_jvp,
    hook_module,
    network_of,
    remember_double_backward,
    residuals_by_layer,
    uses_double_backward,
)  # fmt: skip
from .first_crossing import T_MAX_FACTOR, divergence_and_slope, first_crossing, one_pass_curvature
from .full_context import plain_operations
from .passes import PREFIX_CACHED, engine_path

logger = logging.getLogger(__name__)

DEFAULT_ROW_BUDGET = 1 << 28  # bytes of float64 logits (and their tangents) held by one batch of steered texts


def token_texts(model, texts, add_special_tokens: bool | None = None) -> list[torch.Tensor]:
    """Return `texts` as 1-D int64 token-id tensors.

    `texts` is a list of strings, of token-id sequences, or a `PositionSample` (its contexts, each through its
    target token). Strings are tokenised as the model is run: with `model.tokenizer`'s defaults, its special
    tokens (a BOS) included, as `tokenizer(text)` and the study's sampling do; `add_special_tokens=False`
    leaves them out.
    """
    contexts = getattr(texts, "context_ids", texts)
    if isinstance(contexts, (str, bytes)) or contexts is None:
        raise InputError("texts must be a list of strings or of token-id sequences, or a PositionSample, not one string")
    contexts = list(contexts)
    if not contexts:
        raise InputError("steering needs at least one text: the list of texts is empty")
    out = []
    for i, text in enumerate(contexts):
        if isinstance(text, str):
            tokenizer = getattr(model, "tokenizer", None)
            if tokenizer is None:
                raise InputError("strings need a tokenizer: pass a LoadedModel (load_model) or token ids")
            options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            ids = tokenizer(text, **options)["input_ids"]
            text = torch.tensor(ids, dtype=torch.long)
        ids = torch.as_tensor(text).reshape(-1).long()
        if ids.numel() == 0:
            raise InputError(f"text {i} has no tokens")
        out.append(ids)
    network = network_of(model)
    limit = context_length(network.config) if hasattr(network, "config") else None
    too_long = [(i, len(ids)) for i, ids in enumerate(out) if limit is not None and len(ids) > limit]
    if too_long:
        i, length = too_long[0]
        more = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
        raise InputError(f"text {i} has {length} tokens{more}, more than the model's context of {limit} positions: "
                         f"cut the prompts to at most {limit} tokens")  # fmt: skip
    vocab = network.get_input_embeddings().weight.shape[0]
    largest = max(int(ids.max()) for ids in out)
    if largest >= vocab or min(int(ids.min()) for ids in out) < 0:
        raise InputError(f"token ids must lie in 0..{vocab - 1} (the model's vocabulary), found {largest}")
    return out


def check_vector(model, v, width: int | None = None) -> torch.Tensor:
    """Return the steering vector `v [d]` as float64, or raise InputError (wrong width, zero, not finite).

    `width` is the residual stream's at the layer (default: the LM head's input, the same in most models).
    """
    width = network_of(model).get_output_embeddings().weight.shape[1] if width is None else width
    v = torch.as_tensor(v)
    if v.dim() != 1 or v.shape[0] != width:
        raise InputError(f"the steering vector must be 1-D of the residual width d = {width}, got shape {tuple(v.shape)}")
    v = v.double()
    if not torch.isfinite(v).all():
        raise InputError("the steering vector holds NaN or inf")
    if not bool((v != 0).any()):
        raise InputError("the steering vector is zero: there is no direction to steer along")
    return v


def check_steering_layer(model, layer):
    """Return `layer` checked, raising InputError (not ValueError) for a layer the model does not have."""
    try:
        return check_layer(model, layer)
    except ValueError as error:
        raise InputError(str(error)) from None


class _HeadReached(Exception):
    """Raised at the LM head's input when only that input is wanted."""


@dataclass
class SteeredTexts:
    """A list of texts ready to be forwarded with `α v` added at `layer`, at every position.

    `ids [N, T]` right-padded, `lengths [N]`; `logits(rows, alpha)` runs the rows `rows [R]` of the batch
    with their own `alpha [R]`.
    """

    network: torch.nn.Module
    hook: torch.nn.Module
    ids: torch.Tensor
    lengths: torch.Tensor
    v: torch.Tensor
    # The model's own (eager) attention instead of `sequence_attention` (float64 softmax, plain ops).
    own_attention: bool = False
    # ‖r_ℓ‖ at the longest text's last token: the scale of the central difference's step (`steering_velocities`).
    residual_scale: float | None = None

    @classmethod
    def build(cls, model, texts, layer, v, add_special_tokens: bool | None = None) -> SteeredTexts:
        network = network_of(model)
        layer = check_steering_layer(model, layer)
        tokens = token_texts(model, texts, add_special_tokens)
        # The residual's width at the layer: wider than the head's input in some models (OPT's word_embed_proj_dim).
        longest = max(tokens, key=len)
        residual = residuals_by_layer(model, [longest], [layer])[layer] if len(longest) >= 2 else None
        width = None if residual is None else int(residual.shape[-1])
        v = check_vector(model, v, width)
        lengths = torch.tensor([len(t) for t in tokens])
        ids = torch.zeros(len(tokens), int(lengths.max()), dtype=torch.long)
        for row, t in enumerate(tokens):
            ids[row, : len(t)] = t
        # Where the layer engine cannot swap in its attention (GPT-Neo, Bloom, Falcon, MPT, Mamba, a binding
        # sliding window, soft-capped scores), steering passes run the model's own attention, eager.
        path = engine_path(model, int(lengths.max()))
        if path.path != PREFIX_CACHED:
            logger.info("steering passes use %s's own attention: %s", type(network).__name__, path.reason)
        scale = None if residual is None else float(residual.double().norm(dim=-1).mean())
        return cls(network, hook_module(network, layer), ids, lengths, v, own_attention=path.path != PREFIX_CACHED, residual_scale=scale)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def rows_per_pass(self, budget: int = DEFAULT_ROW_BUDGET, head_input: bool = False) -> int:
        """How many texts one pass may hold: float64 logits and tangents of `T × V` each (with `head_input`, of the
        head's input `T × d`), within `budget` bytes."""
        width = self.network.get_output_embeddings().weight.shape[1 if head_input else 0]
        return max(1, budget // (32 * self.ids.shape[1] * width))

    def mask(self, rows: torch.Tensor, dtype: torch.dtype, length: int | None = None) -> torch.Tensor:
        """Additive `[R, 1, T, T]` (`T = length`, default the longest text): causal, padding keys closed (a padded
        query still sees the real tokens)."""
        T = self.ids.shape[1] if length is None else int(length)
        open_ = torch.ones(T, T, dtype=torch.bool).tril()[None] & (torch.arange(T)[None, None, :] < self.lengths[rows][:, None, None])
        return torch.zeros(len(rows), 1, T, T, dtype=dtype).masked_fill_(~open_[:, None], torch.finfo(dtype).min).to(self.device)

    def logits(
        self, rows: torch.Tensor, alpha: torch.Tensor, slopes: bool = False, capture: bool = False, directions=None,
        head_input: bool = False, length: int | None = None,
    ):  # fmt: skip
        """Return `(z [R, T, V], dz/dα [R, T, V] or None, r [R, T, d] or None)`, float64.

        Row `k` is text `rows[k]` with `alpha[k] · v` added to the residual at the layer at every position
        (`directions [R, d]`: row k's own vector instead of `v`); with `slopes`, the derivative along α
        (forward mode); with `capture`, the residual before the push. With `head_input`, the LM head's input
        `h [R, T, d_head]` and its derivative stand in for `z` (the head never runs: no `T × V` tensors).
        With `length`, only each text's first `length` tokens run (`T = length`): causal attention keeps the
        push at later positions from reaching them, so their outputs are those of the whole text.
        """
        device = self.device
        dtype = next(self.network.parameters()).dtype
        alpha = alpha.to(device=device, dtype=torch.float64)
        push_along = (self.v[None] if directions is None else torch.as_tensor(directions)).to(device=device, dtype=dtype)
        captured = {}

        def push_by(scale):
            def push(hidden):
                if capture:
                    captured["r"] = fwAD.unpack_dual(hidden).primal if slopes else hidden
                return hidden + scale[:, None, None] * push_along[:, None, :]

            return push

        if slopes and uses_double_backward(self.network) is None:
            try:
                with torch.no_grad(), fwAD.dual_level():
                    out = self._forward(
                        rows, push_by(fwAD.make_dual(alpha.to(dtype), torch.ones_like(alpha, dtype=dtype))), dtype, head_input, length
                    )
                    value, tangent = fwAD.unpack_dual(out)
                    tangent = torch.zeros_like(value) if tangent is None else tangent
                    z, zdot = value.double(), tangent.double()
            except NotImplementedError as error:
                remember_double_backward(self.network, error)
        if slopes and uses_double_backward(self.network) is not None:
            with torch.enable_grad():
                scale = alpha.to(dtype).detach().requires_grad_(True)
                out = self._forward(rows, push_by(scale), dtype, head_input, length)
                z, zdot = out.detach().double(), double_backward_jvp(out, scale, torch.ones_like(scale)).double()
            captured = {k: v.detach() for k, v in captured.items()}
        elif not slopes:
            with torch.no_grad():
                out = self._forward(rows, push_by(alpha.to(dtype)), dtype, head_input, length)
            z, zdot = out.double(), None
        r = captured["r"].to(torch.promote_types(captured["r"].dtype, torch.float32)) if capture else None
        return z, zdot, r

    def gradient(self, rows: torch.Tensor, objective) -> torch.Tensor:
        """Return `∂ objective(z) / ∂x [d]` (float64) at `x = 0`, `x` added at every position of the rows' texts.

        `objective` maps the logits `z [R, T, V]` (float64) to a scalar; reverse mode, one backward pass.
        """
        dtype = next(self.network.parameters()).dtype
        x = torch.zeros(self.v.shape[0], dtype=dtype, device=self.device, requires_grad=True)
        with torch.enable_grad():
            out = self._forward(rows, lambda hidden: hidden + x, dtype)
            (grad,) = torch.autograd.grad(objective(out.double()), x)
        return grad.double().cpu()

    def _forward(self, rows: torch.Tensor, push, dtype: torch.dtype, head_input: bool = False, length: int | None = None) -> torch.Tensor:
        """Run the rows' texts with `push(hidden) -> hidden` applied to the residual at the layer; logits `[R, T, V]`,
        or with `head_input` the LM head's input `[R, T, d]` (the head does not run)."""

        def hook(module, args, kwargs):
            return _with_hidden(args, kwargs, push(_hidden_of(args, kwargs)))

        captured = []

        def stop_at_head(module, args, kwargs):
            captured.append(_hidden_of(args, kwargs))
            raise _HeadReached

        handles = [self.hook.register_forward_pre_hook(hook, with_kwargs=True)]
        if head_input:
            handles.append(self.network.get_output_embeddings().register_forward_pre_hook(stop_at_head, with_kwargs=True))
        ids = self.ids[rows, :length].to(self.device)
        try:
            if not self.own_attention:
                with attention_function_on(self.network, SEQUENCE_ATTENTION_NAME):
                    return self.network(input_ids=ids, attention_mask=self.mask(rows, dtype, ids.shape[1]), use_cache=False).logits
            # Padding left open: it comes after each text's last token, which a causal model never lets it reach.
            with plain_operations(self.network):
                return self.network(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        except _HeadReached:
            return captured[0]
        finally:
            for handle in handles:
                handle.remove()


# The central difference's step `δ`, relative to `‖r_ℓ‖ / ‖v‖`, by the model's dtype: truncation error
# falls as δ² and rounding grows as (unit roundoff)/δ. On tiny (float32, layer 2), δ = 3e-3 put α_pred within
# 3e-5 (median) and 3e-4 (largest) of forward mode's; 1e-2 and 1e-3 did worse (1.7e-4 and 7.8e-5 median).
DIFFERENCE_STEPS = {torch.float32: 3e-3, torch.float64: 1e-5}
TANGENTS = ("forward", "difference")


def steering_velocities(steered: SteeredTexts, budget: int = DEFAULT_ROW_BUDGET, tangent: str = "forward"):
    """Return `(z [N, T, V], a [N, T, V], r_norm [N, T])`: logits, their velocity `dz/dα` at `α = 0`, and `‖r_ℓ‖`.

    `tangent="forward"`: one forward-mode pass per text (exact to rounding). `"difference"`: the central
    difference `(z(δ) − z(−δ)) / 2δ` of two plain passes run in one batch with the base pass (a forward-mode
    pass costs several plain ones), `δ` = `DIFFERENCE_STEPS[dtype] · ‖r_ℓ‖ / ‖v‖`; a model in half precision, or
    texts too short to measure `‖r_ℓ‖` on, fall back to forward mode. Float64 on the CPU; slots past a text's
    length are padding (their values are meaningless).
    """
    n = len(steered.ids)
    parts = []
    delta = _difference_step(steered, tangent)
    if delta is not None:
        offsets = torch.tensor([0.0, delta, -delta], dtype=torch.float64)
        step = max(1, steered.rows_per_pass(budget) // 3)
        for start in range(0, n, step):
            rows = torch.arange(start, min(start + step, n))
            z, _, r = steered.logits(rows.repeat_interleave(3), offsets.repeat(len(rows)), capture=True)
            z = z.cpu()
            parts.append((z[0::3], (z[1::3] - z[2::3]) / (2 * delta), r[0::3].double().norm(dim=-1).cpu()))
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))
    step = steered.rows_per_pass(budget)
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n))
        z, a, r = steered.logits(rows, torch.zeros(len(rows), dtype=torch.float64), slopes=True, capture=True)
        parts.append((z.cpu(), a.cpu(), r.double().norm(dim=-1).cpu()))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def _difference_step(steered: SteeredTexts, tangent: str) -> float | None:
    """The central difference's step `δ` (in units of α), or None where `steering_velocities` uses forward mode."""
    if tangent not in TANGENTS:
        raise InputError(f"tangent must be one of {TANGENTS}, not {tangent!r}")
    dtype = next(steered.network.parameters()).dtype
    if tangent == "forward" or dtype not in DIFFERENCE_STEPS or not steered.residual_scale:
        return None
    return DIFFERENCE_STEPS[dtype] * steered.residual_scale / float(steered.v.norm())


def velocity_passes(steered: SteeredTexts, tangent: str) -> int:
    """Return the passes `steering_velocities(steered, tangent=tangent)` runs, counted in texts (a forward-mode one once)."""
    return (1 if _difference_step(steered, tangent) is None else 3) * len(steered.ids)


def token_lines(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(text [L], position [L])`: every real token of every text, in order."""
    text = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    start = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(int(lengths.sum())) - torch.repeat_interleave(start, lengths)
    return text, position


def steering_boundary(
    steered: SteeredTexts,
    eps,
    rtol: float = 1e-4,
    alpha_max: float | None = None,
    scan_ratio: float = 2**0.5,
    budget: int = DEFAULT_ROW_BUDGET,
    velocities=None,
) -> dict[str, torch.Tensor]:
    """Return the exact steering boundary of every token: `alpha_emp [L, E]` and what the search saw.

    `L` = every real token of every text (`token_lines`). `alpha_emp` is the smallest α > 0 at which
    `KL(p_t ‖ q_t(α)) = ε`, within `rtol` of a crossing and of the first one wherever the scan can see a
    window (as `layer_boundary`); `inf` where the token's curvature is 0 or no crossing comes before the cap
    (`alpha_max`, default `T_MAX_FACTOR · ‖r_ℓ‖` at the token; unbounded at the head). Each scan point
    and each refinement step is a full forward pass of one text at one α, shared by every token of the
    text that asks for it. Also returned: `curv [L]` (`Var_p[a]`), `nonmonotone [L]`, `unconverged [L, E]`,
    `unresolved [L, E]` and `passes` (the number of text forward passes spent, a 0-d tensor).
    """
    eps = checks.check_eps(eps, None)
    if rtol <= 0:
        raise InputError("rtol must be positive")
    z, a, r_norm = velocities if velocities is not None else steering_velocities(steered, budget)
    text, position = token_lines(steered.lengths)
    z0 = z[text, position]  # [L, V]
    log_p = torch.log_softmax(z0, -1)
    p = log_p.exp()
    a0 = a[text, position]
    curv = one_pass_curvature(p, a0)
    usable = (curv > 0) & torch.isfinite(curv)
    # One lattice per text, on its stiffest token's scale: every token's scan starts at or below a quarter of its t_pred.
    top = torch.zeros(len(steered.ids), dtype=torch.float64).scatter_reduce_(0, text, torch.where(usable, curv, 0.0), "amax")
    scale = 1 / torch.sqrt(torch.where(top > 0, top, torch.ones_like(top)))[text]
    if alpha_max is not None:
        cap = torch.full_like(curv, float(alpha_max))
    elif steered.hook is steered.network.get_output_embeddings():
        cap = torch.full_like(curv, math.inf)
    else:
        cap = T_MAX_FACTOR * r_norm[text, position]
    step = steered.rows_per_pass(budget)
    passes = [0]

    def evaluate(lines: torch.Tensor, t: torch.Tensor, slopes: bool = True):
        lines, t = lines.cpu(), t.cpu()
        keys = torch.stack([text[lines].double(), t], 1)
        unique, where = torch.unique(keys, dim=0, return_inverse=True)
        # A pass runs its text only through the last position asked of it (a refinement step asks one token):
        # the push at later positions cannot reach earlier ones. Passes of like lengths share a batch.
        needed = torch.zeros(len(unique), dtype=torch.long).scatter_reduce_(0, where, position[lines] + 1, "amax")
        order = torch.argsort(needed, stable=True)
        slot_of = torch.empty(len(unique), dtype=torch.long)
        value = torch.empty(len(lines), dtype=torch.float64)
        slope = torch.empty(len(lines), dtype=torch.float64)
        for start in range(0, len(unique), step):
            part = order[start : start + step]
            zs, zdot, _ = steered.logits(unique[part, 0].long(), unique[part, 1], slopes=slopes, length=int(needed[part].max()))
            passes[0] += len(part)
            slot_of.fill_(-1)
            slot_of[part] = torch.arange(len(part))
            asked = torch.nonzero(slot_of[where] >= 0).flatten()
            row = slot_of[where[asked]]
            line = lines[asked]
            pos = position[line].to(zs.device)
            z_t = zs[row.to(zs.device), pos].cpu()
            zdot_t = zdot[row.to(zs.device), pos].cpu() if slopes else torch.zeros_like(z_t)
            v, s = divergence_and_slope(log_p[line], z0[line], z_t, zdot_t, "forward")
            value[asked], slope[asked] = v, s
        return value, (slope if slopes else None)

    t, nonmonotone, unconverged, unresolved = first_crossing(evaluate, curv, cap, eps, rtol, scan_ratio, scale=scale)
    return dict(alpha_emp=t.cpu(), curv=curv, nonmonotone=nonmonotone.cpu(), unconverged=unconverged.cpu(),
                unresolved=unresolved.cpu(), passes=torch.tensor(passes[0]))  # fmt: skip


def population_kl(steered: SteeredTexts, alpha: float, budget: int = DEFAULT_ROW_BUDGET, reference=None) -> torch.Tensor:
    """Return the per-token forward KL `[L]` (every real token, `token_lines` order) with `α v` added everywhere.

    One full forward pass of every text; `reference` (`z [N, T, V]` at `α = 0`) saves one more.
    """
    n = len(steered.ids)
    step = steered.rows_per_pass(budget)
    text, position = token_lines(steered.lengths)
    out = []
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n))
        z, _, _ = steered.logits(rows, torch.full((len(rows),), float(alpha), dtype=torch.float64))
        if reference is None:
            z_ref, _, _ = steered.logits(rows, torch.zeros(len(rows), dtype=torch.float64))
        else:
            z_ref = reference[rows].to(z.device)
        pick = (text >= start) & (text < start + len(rows))
        local, pos = (text[pick] - start).to(z.device), position[pick].to(z.device)
        z0 = z_ref[local, pos]
        value, _ = divergence_and_slope(torch.log_softmax(z0, -1), z0, z[local, pos], torch.zeros_like(z0), "forward")
        out.append(value.cpu())
    return torch.cat(out)


def order_statistic_rank(n: int, quantile: float) -> int:
    """Return `k` (1-based) such that the `quantile` of n values is their k-th smallest (`inverted_cdf`)."""
    return max(1, min(n, math.ceil(quantile * n)))


def population_alpha(alphas: torch.Tensor, quantile: float) -> float:
    """Return the α at which the `quantile` of per-token KL first reaches ε, from each token's own crossing `alphas [L]`.

    With the `inverted_cdf` quantile, the k-th smallest KL (`k = ⌈qL⌉`) reaches ε exactly when `L − k + 1`
    tokens have reached it: the `(L − k + 1)`-th smallest crossing, if every token's KL rises through ε once.
    """
    values = torch.sort(torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)).values
    k = order_statistic_rank(len(values), quantile)
    return float(values[len(values) - k])


__all__ = [
    "DIFFERENCE_STEPS", "HEAD", "TANGENTS", "SteeredTexts", "check_vector", "order_statistic_rank", "population_alpha", "population_kl",
    "steering_boundary", "steering_velocities", "token_lines", "token_texts", "velocity_passes",
]  # fmt: skip
