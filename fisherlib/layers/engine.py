"""The machinery of the layer study: a position's prefix run once, then many copies of its target token.

A perturbation of the target token's residual cannot reach the prefix (attention is causal), so the
prefix's keys and values are computed once (`Prefix`) and reused. Every evaluation forwards the target
token only: the many evaluations of one position (directions × steps) ride in one forward pass as copies of
the target token along the sequence axis, each carrying its own perturbation, added by a pre-hook on the
module whose input is the residual stream at the layer. A copy attends to the prefix and to itself, never
to the other copies; `copies_attention`, registered with transformers' `AttentionInterface` and switched on
for the duration of a pass, computes exactly that in `O(copies × prefix)` (a dense mask would cost
`O(copies²)`), with its softmax in float32 or the model's dtype if wider, and with plain tensor operations,
so forward-mode tangents (`torch.autograd.forward_ad`) pass through it (PyTorch's fused attention kernels
have no forward-mode rule).
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from ..core.errors import FisherlibError, InputError

HEAD = "head"
ATTENTION_NAME = "fisherlib_copies"
_MAX_QUERIES = 8192  # copies of target tokens in one forward pass, whatever the memory budget
_FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "final_norm", "norm_f", "layer_norm")  # BioGPT, XGLM: layer_norm
_BLOCK_LIST_NAMES = ("layers", "h", "blocks", "layer")


# --- the model's layout ----------------------------------------------------------------------------


def context_length(config) -> int | None:
    """The most positions the model takes (`max_position_embeddings`, GPT-2's `n_positions`), or None when unbounded
    (a state-space model) or unstated."""
    get_text_config = getattr(config, "get_text_config", None)
    views = [config, get_text_config()] if callable(get_text_config) else [config]
    for view in views:
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(view, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def network_of(model) -> nn.Module:
    """Return the Hugging Face module of `model` (a `LoadedModel` or the causal LM itself)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "tokenizer") else model


def decoder_blocks(network: nn.Module) -> nn.ModuleList:
    config = network.config.get_text_config() if hasattr(network.config, "get_text_config") else network.config
    n = config.num_hidden_layers
    base = network.base_model
    for name in _BLOCK_LIST_NAMES:
        blocks = getattr(base, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) == n:
            return blocks
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise FisherlibError(f"cannot find the {n} decoder blocks of {type(network).__name__}")


def _final_norm(network: nn.Module) -> nn.Module:
    """Return the module whose input is the residual stream after the last block (the final norm, mostly).

    OPT keeps its final norm in `base_model.decoder`; OPT-350m has none, and the last block's output goes
    straight to `project_out` (the residual's width to the head's), so that module's input is the residual.
    """
    decoder = getattr(network.base_model, "decoder", None)
    owners = [network.base_model] + ([decoder] if isinstance(decoder, nn.Module) else [])
    for owner in owners:
        for name in _FINAL_NORM_NAMES:
            module = getattr(owner, name, None)
            if isinstance(module, nn.Module):
                return module
    project_out = getattr(decoder, "project_out", None)
    if isinstance(project_out, nn.Module):
        return project_out
    raise FisherlibError(f"cannot find the final norm of {type(network).__name__} (looked for {', '.join(_FINAL_NORM_NAMES)})")


def n_layers(model) -> int:
    """Return the number of decoder blocks of `model`."""
    return len(decoder_blocks(network_of(model)))


def default_layers(model) -> list:
    """Return every block boundary `0 … n_layers` and `"head"` (the `layers` parameter's default)."""
    return [*range(n_layers(model) + 1), HEAD]


def check_layer(model, layer) -> int | str:
    """Return `layer` as an int or `"head"`; raise ValueError unless it is one of `default_layers(model)`."""
    if layer == HEAD:
        return HEAD
    if isinstance(layer, str) and layer.isdigit():
        layer = int(layer)
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
        raise ValueError(f"layer must be an int in 0..{n} or {HEAD!r}, not {layer!r}")
    return layer


def hook_module(network: nn.Module, layer) -> nn.Module:
    """Return the module whose (first) input is the residual stream at `layer`."""
    if layer == HEAD:
        return network.get_output_embeddings()
    blocks = decoder_blocks(network)
    return blocks[layer] if layer < len(blocks) else _final_norm(network)


def contexts_of(sample) -> list[torch.Tensor]:
    """Return each position's context through its target token: a list of 1-D int64 tensors."""
    contexts = getattr(sample, "context_ids", sample)
    if contexts is None:
        raise FisherlibError(
            "the sample holds no context_ids (sampled before they were recorded): rerun notebook 01, "
            "or sample_positions, so that the cached sample is rebuilt"
        )
    out = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in contexts]
    short = [i for i, c in enumerate(out) if len(c) < 2]
    if short:
        raise FisherlibError(f"positions {short[:5]} have no prefix (a context needs at least 2 tokens)")
    return out


def _cache_keyword(network: nn.Module) -> str:
    """Return the forward's name for the key/value cache (`cache` in transformers ≥ 5.x, else `past_key_values`)."""
    parameters = inspect.signature(network.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _check_width(hidden: torch.Tensor, delta: torch.Tensor, layer_name: str) -> None:
    """Raise InputError unless a perturbation `delta [..., d']` matches the residual `hidden [..., d]` it is added to.

    `d' = 1` broadcasts (the engine's own zero perturbation when it only reads logits or captures).
    """
    if delta.shape[-1] not in (1, hidden.shape[-1]):
        raise InputError(
            f"the directions have width {delta.shape[-1]}, but the residual stream at {layer_name} has width "
            f"{hidden.shape[-1]}: give directions of that width (layer_residuals(model, sample, layer) has it). "
            "The residual stream can be wider than the LM head's input (OPT's word_embed_proj_dim)."
        )


def layer_name(network: nn.Module, module: nn.Module) -> str:
    """Return which layer `module` (a `hook_module`) is the input of, in words: "layer 3", "the LM head"."""
    if module is network.get_output_embeddings():
        return f"layer {HEAD!r} (the LM head's input)"
    blocks = decoder_blocks(network)
    for index, block in enumerate(blocks):
        if module is block:
            return f"layer {index}"
    return f"layer {len(blocks)} (after the last block)"


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


# --- attention of the copies ----------------------------------------------------------------------


def copies_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention where each of the M query copies sees the T prefix slots and its own key, nothing else.

    `query [R, H, M, hd]`, `key, value [R, H_kv, T + M, hd]` (prefix then the copies' own keys, as the cache
    concatenates them), `attention_mask [R, 1, 1, T + M]` additive (its prefix part masks padding). Grouped
    queries share key heads as `repeat_kv` does (query head `h` reads key head `h // (H / H_kv)`). Returns
    `([R, M, H, hd], None)`, the layout of transformers' attention functions.
    """
    R, H, M, hd = query.shape
    H_kv = key.shape[1]
    groups = H // H_kv
    T = key.shape[2] - M
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise FisherlibError("the layer study does not support soft-capped or sink attention")
    # A copy sees T prefix slots and itself: a window of at least T + 1 tokens masks nothing (full attention).
    if window is not None and window < T + 1:
        raise FisherlibError(
            f"{type(module).__name__} attends within a sliding window of {window} tokens, shorter than the context "
            f"here ({T + 1} tokens); the layer study needs attention over the whole context: set max_context to at most {window}"
        )
    scaling = hd**-0.5 if scaling is None else scaling
    work = torch.promote_types(query.dtype, torch.float32)
    q = query.reshape(R, H_kv, groups * M, hd)
    prefix_scores = (q @ key[:, :, :T].transpose(2, 3)).reshape(R, H_kv, groups, M, T)
    own_key = key[:, :, T:]  # [R, H_kv, M, hd]
    own_scores = (query.reshape(R, H_kv, groups, M, hd) * own_key[:, :, None]).sum(-1, keepdim=True)
    scores = torch.cat([prefix_scores, own_scores], -1).to(work) * scaling
    if attention_mask is not None:
        prefix_mask = attention_mask[..., :T].to(work).reshape(R, 1, 1, 1, T)
        scores = scores + torch.cat([prefix_mask.expand(R, 1, 1, 1, T), scores.new_zeros(R, 1, 1, 1, 1)], -1)
    weights = torch.softmax(scores, -1).to(query.dtype)
    out = (weights[..., :T].reshape(R, H_kv, groups * M, T) @ value[:, :, :T]).reshape(R, H_kv, groups, M, hd)
    out = out + weights[..., T:] * value[:, :, None, T:]
    return out.reshape(R, H, M, hd).transpose(1, 2).contiguous(), None


def sequence_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain causal attention over a whole sequence, softmax in float32 or the model's dtype if wider.

    `query [B, H, T, hd]`, `key, value [B, H_kv, T, hd]`, `attention_mask [B, 1, T, T]` additive (the
    caller's causal and padding mask). Transformers' eager attention takes its softmax in float32 whatever
    the model's dtype, which caps a float64 model's logits at ~1e-7 relative; the fused kernels have no
    forward-mode rule. Returns `([B, T, H, hd], None)`.
    """
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise FisherlibError("steering passes do not support soft-capped or sink attention")
    window = kwargs.get("sliding_window")
    if window is not None and window < key.shape[2]:
        raise FisherlibError(f"a sliding window of {window} tokens binds on a {key.shape[2]}-token text: use shorter texts")
    B, H, T, hd = query.shape
    groups = H // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scaling = hd**-0.5 if scaling is None else scaling
    work = torch.promote_types(query.dtype, torch.float32)
    scores = (query @ key.transpose(2, 3)).to(work) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[2]].to(work)
    weights = torch.softmax(scores, -1).to(query.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), None


SEQUENCE_ATTENTION_NAME = "fisherlib_sequence"
_ATTENTION_FUNCTIONS = {ATTENTION_NAME: copies_attention, SEQUENCE_ATTENTION_NAME: sequence_attention}


def _register_attention(name: str) -> None:
    from transformers import AttentionInterface

    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _ATTENTION_FUNCTIONS[name])


@contextlib.contextmanager
def attention_function_on(network: nn.Module, name: str):
    """Run `network` with fisherlib's attention function `name` for the duration (restoring its own after)."""
    _register_attention(name)
    config = network.config
    current = getattr(config, "_attn_implementation", None)
    try:
        network.set_attn_implementation(name)
    except (ValueError, AttributeError):
        # Older transformers refuse names they did not register themselves: set the config's field.
        config._attn_implementation_internal = name
    if getattr(config, "_attn_implementation", None) != name:
        raise FisherlibError(f"{type(network).__name__} does not let fisherlib choose its attention function")
    try:
        yield
    finally:
        try:
            network.set_attn_implementation(current)
        except (ValueError, AttributeError):
            config._attn_implementation_internal = current


def copies_attention_on(network: nn.Module):
    """Run `network` with `copies_attention` for the duration (restoring its own implementation after)."""
    return attention_function_on(network, ATTENTION_NAME)


@contextlib.contextmanager
def eager_experts(network: nn.Module):
    """Run mixture-of-experts layers as their plain loop over experts for the duration (`grouped_mm` has no forward-mode rule)."""
    experts = getattr(network.config, "_experts_implementation", None)
    if experts in (None, "eager") or not hasattr(network, "set_experts_implementation"):
        yield
        return
    network.set_experts_implementation("eager")
    try:
        yield
    finally:
        network.set_experts_implementation(experts)


# --- the prefix, run once, and forward passes of the target token ----------------------------------


def check_full_attention(network: nn.Module, layers, context_length: int) -> None:
    """Raise unless every cache layer of `network` holds the full context of `context_length` tokens.

    A sliding-window layer (Mistral, Gemma 2 and 3) whose window is at least the context is full attention
    there: it keeps every key (its cache drops only keys older than `window - 1` tokens) and its mask hides
    none, so it is accepted. A window that binds, and caches that are not keys and values of every token
    (linear attention, state-space layers), are refused, naming the layer.
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    name = type(network).__name__
    if layers is None:
        raise FisherlibError(
            f"{name} returned no key/value cache with layers; the layer study needs attention layers whose keys and "
            "values it can cache (a state-space model such as Mamba has none)"
        )
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            continue
        if type(layer) is DynamicSlidingWindowLayer:
            if layer.sliding_window >= context_length:
                continue
            raise FisherlibError(
                f"{name} attends within a sliding window of {layer.sliding_window} tokens (block {index}), shorter than "
                f"the longest context here ({context_length} tokens), so the layer study's cached prefix would not be "
                f"what the model sees: set max_context to at most {layer.sliding_window}, or choose a model with full attention"
            )
        raise FisherlibError(
            f"{name} keeps a {type(layer).__name__} cache in block {index} (not the keys and values of every token: "
            "linear attention or a state-space layer); the layer study supports models whose every layer attends to "
            "the full context"
        )


class Prefix:
    """A batch of contexts whose prefixes (all but the target token) have been run once.

    Attributes:
        kv: per block, keys and values `[B, heads, T, head_dim]` of the right-padded prefixes.
        valid: `[B, T]` which cached slots are real tokens (padding is masked out).
        target: `[B]` the target token ids; position: `[B]` their position ids (the prefix lengths).
    """

    def __init__(self, network: nn.Module, contexts: list[torch.Tensor]):

        self.network = network
        device = next(network.parameters()).device
        lengths = torch.tensor([len(c) - 1 for c in contexts])
        T = int(lengths.max())
        ids = torch.zeros(len(contexts), T, dtype=torch.long)
        valid = torch.zeros(len(contexts), T, dtype=torch.bool)
        for row, context in enumerate(contexts):
            ids[row, : len(context) - 1] = context[:-1]
            valid[row, : len(context) - 1] = True
        # Right padding: a padded slot attends to the real tokens before it, so no row is fully masked
        # (a fully masked row can give NaN keys, and 0·NaN would leak through the mask).
        with torch.no_grad(), eager_experts(network):
            out = network(input_ids=ids.to(device), attention_mask=valid.long().to(device), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        check_full_attention(network, layers, T + 1)
        self.kv = [(layer.keys, layer.values) for layer in layers]
        self.valid = valid.to(device)
        self.target = torch.stack([c[-1] for c in contexts]).to(device)
        self.position = lengths.to(device)
        self.device = device
        self.dtype = self.kv[0][0].dtype
        self.cache_keyword = _cache_keyword(network)

    path = "prefix-cached"
    reason = ""

    def __len__(self) -> int:
        return len(self.target)

    def copies_per_pass(self, max_queries: int) -> int:
        """Return how many target-token copies one pass may hold (`max_queries`: each copy is one token here)."""
        return max_queries

    def forward(self, hook: nn.Module, rows: torch.Tensor, delta: torch.Tensor, capture: Sequence[nn.Module] = ()):
        """Return the logits `[R, M, V]` of M copies of each row's target token, copy m with `delta[r, m]` added.

        `delta [R, M, d]` (possibly a forward-mode dual tensor) is added to the input of `hook` at every
        copy. Also returns, for each module of `capture`, its input `[R, M, d]` (before the addition).
        """
        from transformers.cache_utils import DynamicCache

        R, M, _ = delta.shape
        T = self.valid.shape[1]
        select = rows.numel() < len(self)
        kv = [(k[rows], v[rows]) if select else (k, v) for k, v in self.kv]
        # Additive mask over the keys: padding slots of the prefix closed; the copies' own slots are
        # handled by `copies_attention` (each copy sees only itself), which this pass switches on.
        mask = torch.zeros(R, 1, 1, T + M, dtype=self.dtype, device=self.device)
        mask[..., :T].masked_fill_(~self.valid[rows][:, None, None, :], torch.finfo(self.dtype).min)
        captured: dict[int, torch.Tensor] = {}

        def add(module, args, kwargs):
            hidden = _hidden_of(args, kwargs)
            _check_width(hidden, delta, layer_name(self.network, module))
            if id(module) in capture_ids:
                captured[id(module)] = hidden
            return _with_hidden(args, kwargs, hidden + delta.to(hidden.dtype))

        def record(module, args, kwargs):
            captured[id(module)] = _hidden_of(args, kwargs)

        capture_ids = {id(m) for m in capture}
        handles = [hook.register_forward_pre_hook(add, with_kwargs=True)]
        handles += [m.register_forward_pre_hook(record, with_kwargs=True) for m in capture if m is not hook]
        try:
            with copies_attention_on(self.network), eager_experts(self.network):
                out = self.network(
                    input_ids=self.target[rows][:, None].expand(R, M),
                    attention_mask=mask,
                    position_ids=self.position[rows][:, None].expand(R, M),
                    use_cache=True,
                    **{self.cache_keyword: DynamicCache(ddp_cache_data=kv)},
                )
        finally:
            for handle in handles:
                handle.remove()
        return out.logits, [captured[id(m)] for m in capture]


def query_budget(network: nn.Module, vocab: int, width: int, memory_budget: int) -> int:
    """Return how many target-token copies one forward pass may hold within `memory_budget` bytes."""
    blocks = len(decoder_blocks(network))
    per_query = 8 * (6 * vocab + 24 * width * (blocks + 1))
    return int(max(1, min(_MAX_QUERIES, memory_budget // per_query)))


def position_chunks(n: int, batch_size: int) -> list[torch.Tensor]:
    return [torch.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def pack(row_of: torch.Tensor, max_queries: int):
    """Yield `(rows, local_row, slot, items)` sub-batches: items grouped by row, ≤ max_queries copies each."""
    order = torch.argsort(row_of, stable=True)
    sorted_rows = row_of[order]
    rows, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    start_row = 0
    start_item = 0
    while start_row < len(rows):
        # Rows are added while the padded batch (rows × largest count) fits the budget.
        stop_row = start_row + 1
        largest = int(counts[start_row])
        while stop_row < len(rows) and (stop_row - start_row + 1) * max(largest, int(counts[stop_row])) <= max_queries:
            largest = max(largest, int(counts[stop_row]))
            stop_row += 1
        n_items = int(counts[start_row:stop_row].sum())
        items = order[start_item : start_item + n_items]
        local = torch.repeat_interleave(torch.arange(stop_row - start_row), counts[start_row:stop_row])
        first = torch.repeat_interleave(torch.cumsum(counts[start_row:stop_row], 0) - counts[start_row:stop_row], counts[start_row:stop_row])
        slot = torch.arange(n_items) - first
        # A single row with more copies than the budget is split along its copies.
        if largest > max_queries:
            for s in range(0, n_items, max_queries):
                part = slice(s, min(s + max_queries, n_items))
                yield rows[start_row : start_row + 1], local[part], slot[part] - s, items[part]
        else:
            yield rows[start_row:stop_row], local, slot, items
        start_row = stop_row
        start_item += n_items


def jvp_logits(prefix: Prefix, hook, rows, delta, tangent=None, capture=()):
    """Return logits `[R, M, V]` and their directional derivative along `tangent [R, M, d]` (float64).

    Without `tangent` the derivative is None and the pass is a plain one (half the cost). `capture`
    gives `(input, its tangent)` of each listed module. The derivative is a forward-mode JVP; on a model
    with a layer that has no forward-mode rule (Bloom's GeLU is a custom autograd Function) it is the
    exact double-backward JVP instead (`uses_double_backward`), remembered for the model.
    """
    if tangent is None:
        logits, captured = prefix.forward(hook, rows, delta.to(prefix.dtype), capture)
        return logits.double(), None, [(c.double(), None) for c in captured]
    if prefix.network not in _DOUBLE_BACKWARD:
        try:
            return _forward_mode_jvp(prefix, hook, rows, delta, tangent, capture)
        except NotImplementedError as error:
            remember_double_backward(prefix.network, error)
    return _double_backward_jvp(prefix, hook, rows, delta, tangent, capture)


# Networks whose JVPs are taken by double backward, and the forward-mode error that sent them there.
_DOUBLE_BACKWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def uses_double_backward(network: nn.Module) -> str | None:
    """Return why `network`'s JVPs are taken by double backward (the forward-mode error), or None."""
    return _DOUBLE_BACKWARD.get(network)


def remember_double_backward(network: nn.Module, error: NotImplementedError) -> None:
    """Send `network`'s JVPs to double backward from now on, if `error` says a layer has no forward-mode rule; else re-raise it."""
    if "forward" not in str(error).lower() and "jvp" not in str(error).lower():
        raise error
    _DOUBLE_BACKWARD[network] = _first_line(error)


def double_backward_jvp(output: torch.Tensor, point: torch.Tensor, direction: torch.Tensor) -> torch.Tensor | None:
    """Return `J t` (J = ∂output/∂point, t = `direction`) as `∂/∂w ⟨Jᵀw, t⟩`: two reverse passes, exact.

    `Jᵀw` is linear in the dummy cotangent `w`, so differentiating it along `t` with respect to `w` gives
    `J t` exactly (no step size); it needs the model's backward to be differentiable. None where `output`
    does not depend on `point` (the hooked module's own input, read before the push).
    """
    if not output.requires_grad:
        return None
    cotangent = torch.zeros_like(output, requires_grad=True)
    (pullback,) = torch.autograd.grad(output, point, cotangent, create_graph=True, allow_unused=True)
    if pullback is None:
        return None
    (jvp,) = torch.autograd.grad(pullback, cotangent, direction, retain_graph=True)
    return jvp.detach()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _forward_mode_jvp(prefix, hook, rows, delta, tangent, capture):
    with fwAD.dual_level():
        dual = fwAD.make_dual(delta.to(prefix.dtype), tangent.to(prefix.dtype))
        logits, captured = prefix.forward(hook, rows, dual, capture)
        value, derivative = fwAD.unpack_dual(logits)
        unpacked = [fwAD.unpack_dual(c) for c in captured]
        value = value.double()
        derivative = torch.zeros_like(value) if derivative is None else derivative.double()
        captured = [(c.primal.double(), None if c.tangent is None else c.tangent.double()) for c in unpacked]
    return value, derivative, captured


def _double_backward_jvp(prefix, hook, rows, delta, tangent, capture):
    with torch.enable_grad():
        point = delta.to(prefix.dtype).detach().requires_grad_(True)
        logits, captured = prefix.forward(hook, rows, point, capture)
        direction = tangent.to(prefix.dtype)
        derivative = double_backward_jvp(logits, point, direction)
        captured = [(c.detach(), double_backward_jvp(c, point, direction)) for c in captured]
    derivative = torch.zeros_like(logits.detach()) if derivative is None else derivative
    return logits.detach().double(), derivative.double(), [(c.double(), None if t is None else t.double()) for c, t in captured]


class _AllCaptured(Exception):
    """Raised once every residual asked for is captured: the rest of the forward pass is not needed."""


def residuals_by_layer(model, sample, layers: Sequence, batch_size: int = 16) -> dict:
    """Return `{layer: r [P, d]}`: the residual stream at each of `layers` at every position's target token.

    One forward pass per group of positions whose contexts are prefixes of one longest context (positions
    drawn from one document), with a capture hook per layer, stopped at the deepest layer asked (the head's
    `T × V` logits are never formed); float32 or wider, on the CPU.
    """
    network = network_of(model)
    contexts = contexts_of(sample)
    layers = [check_layer(model, layer) for layer in layers]
    modules = {layer: hook_module(network, layer) for layer in layers}
    device = next(network.parameters()).device
    # Longest first: each context joins the first longer one it is a prefix of.
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    groups: list[tuple[int, list[int]]] = []
    for i in order:
        for owner, members in groups:
            if len(contexts[i]) <= len(contexts[owner]) and torch.equal(contexts[owner][: len(contexts[i])], contexts[i]):
                members.append(i)
                break
        else:
            groups.append((i, [i]))
    out: dict = {}
    for start in range(0, len(groups), batch_size):
        batch = groups[start : start + batch_size]
        length = max(len(contexts[owner]) for owner, _ in batch)
        ids = torch.zeros(len(batch), length, dtype=torch.long)
        mask = torch.zeros(len(batch), length, dtype=torch.long)
        rows, cols, who = [], [], []
        for row, (owner, members) in enumerate(batch):
            ids[row, : len(contexts[owner])] = contexts[owner]
            mask[row, : len(contexts[owner])] = 1
            for i in members:
                rows.append(row)
                cols.append(len(contexts[i]) - 1)
                who.append(i)
        captured = {}

        def capture(module, args, kwargs):
            captured[id(module)] = _hidden_of(args, kwargs)
            if len(captured) == len(set(map(id, modules.values()))):
                raise _AllCaptured  # the blocks above the deepest layer asked, and the head, need not run

        handles = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in modules.values()]
        try:
            with torch.no_grad():
                network(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except _AllCaptured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        index = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
        for layer, module in modules.items():
            r = captured[id(module)][index]
            r = r.to(torch.promote_types(r.dtype, torch.float32)).cpu()
            if layer not in out:
                out[layer] = torch.empty(len(contexts), r.shape[-1], dtype=r.dtype)
            out[layer][who] = r
    return out


def full_context_logits(model, sample, layer, delta: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Return logits `[P, M, V]` (float64) with `delta [P, M, d]` added to the target's residual at `layer`.

    The brute-force reference: each of the M perturbations reruns the whole context, with a hook adding
    it at the target position; no cache. For tests and the benchmark.
    """
    network = network_of(model)
    layer = check_layer(model, layer)
    contexts = contexts_of(sample)
    hook = hook_module(network, layer)
    device = next(network.parameters()).device
    dtype = next(network.parameters()).dtype
    P, M, _ = delta.shape
    out = None
    flat = [(i, m) for i in range(P) for m in range(M)]
    for s in range(0, len(flat), batch_size):
        part = flat[s : s + batch_size]
        length = max(len(contexts[i]) for i, _ in part)
        ids = torch.zeros(len(part), length, dtype=torch.long)
        mask = torch.zeros(len(part), length, dtype=torch.long)
        for row, (i, _) in enumerate(part):
            ids[row, : len(contexts[i])] = contexts[i]
            mask[row, : len(contexts[i])] = 1
        last = torch.tensor([len(contexts[i]) - 1 for i, _ in part], device=device)
        add = torch.stack([delta[i, m] for i, m in part]).to(device=device, dtype=dtype)

        def perturb(module, args, kwargs):
            hidden = _hidden_of(args, kwargs).clone()
            _check_width(hidden, add, layer_name(network, module))
            hidden[torch.arange(len(part), device=device), last] += add
            return _with_hidden(args, kwargs, hidden)

        handle = hook.register_forward_pre_hook(perturb, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = network(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        finally:
            handle.remove()
        picked = logits[torch.arange(len(part), device=device), last].double()
        if out is None:
            out = torch.empty(P, M, picked.shape[-1], dtype=torch.float64, device=device)
        for row, (i, m) in enumerate(part):
            out[i, m] = picked[row]
    return out
