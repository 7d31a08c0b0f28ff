"""Which engine evaluates a model's positions, and the batches of positions it evaluates.

Two engines give the logits of a target token under perturbations of its residual stream at a layer:
`engine.Prefix` (the prefix's keys and values cached once, copies of the target token forwarded; fast) and
`full_context.FullContext` (every evaluation reruns the whole context with the model's own attention;
general). `engine_path` chooses once per model, context length and dtype: the prefix-cached engine runs
only where it reproduces the model's own forward pass, checked on a probe (two random contexts, as long
as the longest one studied, a perturbation and a tangent at block 0, logits and their JVP against the
full-context pass). Where it cannot run (no attention function to swap in, a cache that is not keys and
values of every token, a sliding window that binds, a layer without a forward-mode rule) or disagrees,
the full-context engine takes over, and the reason is kept for the model card and notebook 08.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import FisherlibError
from .engine import Prefix, _first_line, contexts_of, decoder_blocks, jvp_logits, network_of, position_chunks, uses_double_backward
from .full_context import FULL_CONTEXT, FullContext

PREFIX_CACHED = "prefix-cached"
_PROBE_SEED = 20_231


@dataclass(frozen=True)
class EnginePath:
    """The engine chosen for a model: `path` (`"prefix-cached"` or `"full-context"`) and, for the latter, why;
    `jvp`: `"forward-mode"`, or `"double-backward"` where a layer has no forward-mode rule (`jvp_reason`)."""

    path: str
    reason: str = ""
    jvp: str = "forward-mode"
    jvp_reason: str = ""

    def card(self) -> dict[str, str | None]:
        """The model card's fields (None where there is no reason to give)."""
        return dict(layer_engine=self.path, layer_engine_reason=self.reason or None, layer_jvp=self.jvp, layer_jvp_reason=self.jvp_reason or None)

    def sentence(self) -> str:
        """Say which engine ran, and why, in one sentence."""
        if self.path == PREFIX_CACHED:
            text = "The layer study ran on the prefix-cached engine (each prefix run once, copies of the target token forwarded)"
        else:
            text = f"The layer study ran on the full-context engine (every evaluation reruns its context), because {self.reason}"
        if self.jvp != "forward-mode":
            text += f"; its JVPs are exact double-backward products, because forward mode failed ({self.jvp_reason})"
        return text + "."


_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def engine_path(model, context_length: int) -> EnginePath:
    """Return the engine that evaluates `model` on contexts of up to `context_length` tokens (probed once)."""
    network = network_of(model)
    key = (int(max(2, context_length)), next(network.parameters()).dtype)
    chosen = _CHOSEN.setdefault(network, {})
    if key not in chosen:
        reason = _probe(network, key[0])
        path = (PREFIX_CACHED, "") if reason is None else (FULL_CONTEXT, reason)
        jvp_reason = uses_double_backward(network)
        chosen[key] = EnginePath(*path, *(("double-backward", jvp_reason) if jvp_reason else ()))
    return chosen[key]


def _probe(network: nn.Module, context_length: int) -> str | None:
    """Return why the prefix-cached engine cannot stand in for the model's forward pass, or None if it can."""
    vocab = network.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    lengths = (context_length, max(2, context_length // 2))
    contexts = [torch.randint(0, vocab, (n,), generator=generator) for n in lengths]
    hook = decoder_blocks(network)[0]
    reference = FullContext(network, contexts)
    rows = torch.arange(len(contexts), device=reference.device)
    with torch.no_grad():
        _, _, [(residual, _)] = jvp_logits(reference, hook, rows, torch.zeros(2, 1, 1, dtype=torch.float64), capture=[hook])
        width = residual.shape[-1]
        scale = residual.norm(dim=-1, keepdim=True).cpu()
        delta = 0.1 * scale * torch.randn(2, 2, width, generator=generator, dtype=torch.float64)
        tangent = torch.randn(2, 2, width, generator=generator, dtype=torch.float64)
        delta, tangent = delta.to(reference.device), tangent.to(reference.device)
        z, dz, _ = jvp_logits(reference, hook, rows, delta, tangent)
        try:
            fast = Prefix(network, contexts)
            z_fast, dz_fast, _ = jvp_logits(fast, hook, rows, delta, tangent)
        except (FisherlibError, RuntimeError, NotImplementedError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
            said = str(error) if isinstance(error, FisherlibError) else _first_line(error)
            return f"the prefix-cached engine cannot run on {type(network).__name__}: {said}"
    # Eager attention takes its softmax in float32 whatever the model's dtype, so on a float64 model the
    # reference itself is good to ~1e-7; an engine that does not apply is off by far more.
    tolerance = max(8 * torch.finfo(reference.dtype).eps ** 0.5, 1e-5)
    for name, fast_value, value in (("logits", z_fast, z), ("logit JVPs", dz_fast, dz)):
        error = float((fast_value - value).abs().max() / value.abs().max().clamp(min=1e-30))
        if not error <= tolerance:
            return (
                f"the prefix-cached engine's {name} differ from {type(network).__name__}'s own forward pass by "
                f"{error:.1e} (relative, tolerance {tolerance:.0e})"
            )
    return None


def position_batch(model, contexts: list[torch.Tensor], path: EnginePath):
    """Return the engine of `path` over `contexts` (a `Prefix` or a `FullContext`)."""
    network = network_of(model)
    if path.path == PREFIX_CACHED:
        return Prefix(network, contexts)
    return FullContext(network, contexts, path.reason)


class Prefilled:
    """The positions of a sample, batched once for every later call at any layer.

    A prefix's keys and values do not depend on the layer studied, so a notebook that visits every
    layer builds this once and passes it as `sample` to the `layer_*` functions. On the prefix-cached
    engine it holds the key/value cache of every position (about `2 · n_layers · d · context` numbers
    each); on the full-context engine, the token ids only. `path` says which engine runs.
    """

    def __init__(self, model, sample, batch_size: int = 16):
        self.network = network_of(model)
        self.context_ids = contexts_of(sample)
        self.path = engine_path(model, max(len(c) for c in self.context_ids))
        self.chunks = [
            (chunk, position_batch(model, [self.context_ids[i] for i in chunk], self.path))
            for chunk in position_chunks(len(self.context_ids), batch_size)
        ]

    def __len__(self) -> int:
        return len(self.context_ids)


def prefixes(model, sample, batch_size: int):
    """Yield `(positions [B], Prefix | FullContext)` chunks of `sample`: those of a `Prefilled`, else built now."""
    if isinstance(sample, Prefilled):
        if sample.network is not network_of(model):
            raise FisherlibError("this Prefilled was built for another model")
        yield from sample.chunks
        return
    contexts = contexts_of(sample)
    path = engine_path(model, max(len(c) for c in contexts))
    for chunk in position_chunks(len(contexts), batch_size):
        yield chunk, position_batch(model, [contexts[i] for i in chunk], path)


def sample_engine_path(model, sample) -> EnginePath:
    """Return the engine that evaluates `sample`'s positions on `model`."""
    if isinstance(sample, Prefilled):
        return sample.path
    return engine_path(model, max(len(c) for c in contexts_of(sample)))
