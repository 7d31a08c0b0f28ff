"""The general path of the layer engine: every evaluation reruns its whole context.

`engine.Prefix` runs a position's prefix once and forwards copies of the target token only; that needs a
key/value cache of every token and an attention function fisherlib can swap in (`copies_attention`).
Models without them (Bloom, Falcon, GPT-Neo and MPT keep their own attention code; Mamba has no attention
and a state-space cache) take this path instead: each of a row's M perturbations is a full forward pass of
the row's context, with the perturbation added to the residual at the target token by a pre-hook, and the
model's own attention. Forward-mode tangents need plain tensor operations, so for the duration of a pass
the attention is transformers' `eager` one (the fused kernels have no forward-mode rule) and
mixture-of-experts layers run their `eager` expert loop (`grouped_mm` has none either). The answers are
the model's own, a sliding window included (its mask is the model's); the cost of an evaluation is its
context's length instead of one token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from .engine import _check_width, _hidden_of, _with_hidden, eager_experts, layer_name

FULL_CONTEXT = "full-context"


@contextlib.contextmanager
def plain_operations(network: nn.Module):
    """Run `network` with eager attention and eager experts for the duration, where it lets one choose.

    A model that picks its attention at construction (GPT-Neo's eager default) is left as it is; one that
    reads the config's choice at forward time (Falcon's sdpa branch) follows the config's field.
    """
    config = network.config
    attention = getattr(config, "_attn_implementation", None)
    saved = getattr(config, "_attn_implementation_internal", None)
    switch = attention not in (None, "eager")
    if switch:
        try:
            network.set_attn_implementation("eager")
        except (ValueError, AttributeError, NotImplementedError):
            config._attn_implementation_internal = "eager"
    try:
        with eager_experts(network):
            yield
    finally:
        if switch:
            try:
                network.set_attn_implementation(attention)
            except (ValueError, AttributeError, NotImplementedError):
                config._attn_implementation_internal = saved


class FullContext:
    """A batch of contexts evaluated by full forward passes (the interface of `engine.Prefix`).

    Attributes:
        contexts: the contexts through their target tokens; lengths: `[B]`.
        path, reason: `"full-context"` and why the prefix-cached engine did not run.
    """

    path = FULL_CONTEXT

    def __init__(self, network: nn.Module, contexts: list[torch.Tensor], reason: str = ""):
        self.network = network
        self.contexts = contexts
        self.reason = reason
        self.lengths = torch.tensor([len(c) for c in contexts])
        parameter = next(network.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype

    def __len__(self) -> int:
        return len(self.contexts)

    def copies_per_pass(self, max_queries: int) -> int:
        """Return how many perturbed copies one pass may hold, for `max_queries` target-token copies' worth of memory."""
        return max(1, max_queries // int(self.lengths.max()))

    def forward(self, hook: nn.Module, rows: torch.Tensor, delta: torch.Tensor, capture: Sequence[nn.Module] = ()):
        """Return the logits `[R, M, V]` of each row's target token under M perturbations `delta [R, M, d]`.

        `delta` (possibly a forward-mode dual tensor) is added to the input of `hook` at the target token;
        also returns, for each module of `capture`, its input there `[R, M, d]` (before the addition).
        """
        R, M, _ = delta.shape
        lengths = self.lengths[rows.cpu()]
        longest = int(lengths.max())
        ids = torch.zeros(R, longest, dtype=torch.long)
        for row, index in enumerate(rows.tolist()):
            ids[row, : lengths[row]] = self.contexts[index]
        # Right padding, left open: the model is causal, so tokens after the target cannot reach it. Masking
        # them instead could leave a padded query with no key in its window, whose NaN output would then
        # leak into the target's attention as 0 · NaN.
        ids = ids[:, None].expand(R, M, longest).reshape(R * M, longest).to(self.device)
        mask = torch.ones_like(ids)
        sequence = torch.arange(R * M, device=self.device)
        target = (lengths - 1).repeat_interleave(M).to(self.device)
        head = self.network.get_output_embeddings()
        captured: dict[int, torch.Tensor] = {}

        def target_slot(hidden: torch.Tensor) -> torch.Tensor:
            # At the head the sequence has already been cut to the target token (`keep_target` runs first).
            return torch.zeros_like(target) if hidden.shape[1] == 1 else target

        def keep_target(module, args, kwargs):
            hidden = _hidden_of(args, kwargs)
            return _with_hidden(args, kwargs, hidden[sequence, target][:, None])

        def add(module, args, kwargs):
            hidden = _hidden_of(args, kwargs)
            _check_width(hidden, delta, layer_name(self.network, module))
            slot = target_slot(hidden)
            if id(module) in capture_ids:
                captured[id(module)] = hidden[sequence, slot].reshape(R, M, -1)
            at_target = torch.zeros(R * M, hidden.shape[1], 1, dtype=hidden.dtype, device=hidden.device)
            at_target[sequence, slot] = 1
            bump = delta.to(hidden.dtype).expand(R, M, hidden.shape[-1]).reshape(R * M, 1, -1)
            return _with_hidden(args, kwargs, hidden + at_target * bump)

        def record(module, args, kwargs):
            hidden = _hidden_of(args, kwargs)
            captured[id(module)] = hidden[sequence, target_slot(hidden)].reshape(R, M, -1)

        capture_ids = {id(m) for m in capture}
        # Only the target token's logits are needed: the head sees that one slot (a V-wide row per copy).
        handles = [head.register_forward_pre_hook(keep_target, with_kwargs=True)]
        handles += [hook.register_forward_pre_hook(add, with_kwargs=True)]
        handles += [m.register_forward_pre_hook(record, with_kwargs=True) for m in capture if m is not hook]
        try:
            with plain_operations(self.network):
                out = self.network(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        logits = out.logits[:, -1]
        return logits.reshape(R, M, -1), [captured[id(m)] for m in capture]
