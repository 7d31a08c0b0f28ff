"""Steering vectors built from a run's own data, and the metric of the all-position push they are judged by.

Kinds (each returned at unit norm; notebook 11 also states α in units of the mean residual norm):

- `mean_difference`: the mean residual at the layer over one domain's positions minus another's (the
  "CAA" recipe with domains for the two prompt sets, e.g. code vs prose);
- `contrastive`: the mean over contexts of `r(context + its top-1 token) − r(context + its top-2 token)`
  at the appended token, the contrastive-pair recipe with the model's own two answers as the pair;
- `eigvec`: the top eigenvector of the population metric `Ḡ = mean_t J_tᵀ F_t J_t` of the all-position
  push on the prompt set (the direction the prompt set's distributions are most sensitive to);
- `random`: seeded uniform unit vectors (the control).

`population_metric` forms `Ḡ` densely from `d` forward-mode passes per text with the study's top-k
truncation `F_k` (p_K not renormalised), so memory is `d · T · k`, not `d · T · V`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.errors import InputError
from ..layers import steering_pass as engine
from ..models.surgery import find_lm_head

VECTOR_KINDS = ("mean_difference", "contrastive", "eigvec", "random")


def unit(v: torch.Tensor) -> torch.Tensor:
    """Return `v / ‖v‖` (float64), refusing a zero vector."""
    v = torch.as_tensor(v, dtype=torch.float64)
    norm = float(v.norm())
    if not norm > 0:
        raise InputError("a steering vector came out zero (the two groups it contrasts have equal means)")
    return v / norm


def mean_difference(residuals: torch.Tensor, domains, first: str, second: str) -> torch.Tensor:
    """Return `mean r[first] − mean r[second] [d]` (float64) from `residuals [P, d]` and each position's domain `[P]`."""
    domains = np.asarray(domains)
    picks = {name: torch.as_tensor(domains == name) for name in (first, second)}
    for name, pick in picks.items():
        if not bool(pick.any()):
            raise InputError(f"no position of domain {name!r} to build the mean-difference vector from")
    r = residuals.double()
    return r[picks[first]].mean(0) - r[picks[second]].mean(0)


def contrastive_contexts(contexts: list[torch.Tensor], top1, top2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return the pairs `(context + top1, context + top2)` for every context (1-D token tensors)."""
    first = [torch.cat([c, torch.tensor([int(a)])]) for c, a in zip(contexts, top1)]
    second = [torch.cat([c, torch.tensor([int(b)])]) for c, b in zip(contexts, top2)]
    return first, second


def random_vectors(n: int, width: int, seed: int) -> torch.Tensor:
    """Return `n` seeded uniform unit vectors `[n, d]` (float64)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.nn.functional.normalize(torch.randn(n, width, dtype=torch.float64, generator=generator), dim=-1)


def population_metric(steered: engine.SteeredTexts, top_k: int, budget: int = engine.DEFAULT_ROW_BUDGET) -> torch.Tensor:
    """Return `Ḡ = mean over tokens of J_tᵀ F_k,t J_t [d, d]` (float64) for the all-position push of `steered`'s texts.

    `J_t = ∂z_t/∂x` for `x` added at every position; `F_k` keeps each token's `top_k` most probable next
    tokens (p_K not renormalised), so `uᵀḠu` is the mean over tokens of the study's truncated curvature of
    the push `u`. One forward-mode pass per text and basis vector, carried to the LM head's input `h` only:
    the top-k logits' velocities are `W_K ḣ` (`W_K [T, k, d_head]`, the rows of each token's top k), so no
    `T × V` tangent is ever formed.
    """
    head = find_lm_head(steered.network)
    width = steered.v.shape[0]
    eye = torch.eye(width, dtype=torch.float64)
    G = torch.zeros(width, width, dtype=torch.float64)
    n_tokens = 0
    step = steered.rows_per_pass(budget, head_input=True)
    for i, length in enumerate(steered.lengths.tolist()):
        z0, _, _ = steered.logits(torch.tensor([i]), torch.zeros(1, dtype=torch.float64))
        p = torch.softmax(z0[0, :length], -1).cpu()
        k = min(top_k, p.shape[-1])
        p_k, ids = torch.topk(p, k, dim=-1)  # [T, k]
        rows_k = head.weight.cpu()[ids].double()  # [T, k, d_head]
        A = torch.empty(width, length, k, dtype=torch.float64)
        for start in range(0, width, step):
            basis = torch.arange(start, min(start + step, width))
            _, h_dot, _ = steered.logits(torch.full((len(basis),), i), torch.zeros(len(basis), dtype=torch.float64), slopes=True,
                                         directions=eye[basis], head_input=True)  # fmt: skip
            A[basis] = torch.einsum("btd,tkd->btk", h_dot[:, :length].cpu(), rows_k)
        mean = torch.einsum("dtk,tk->dt", A, p_k)
        G += torch.einsum("dtk,tk,etk->de", A, p_k, A) - mean @ mean.T
        n_tokens += length
    G /= n_tokens
    return 0.5 * (G + G.T)


def top_eigenvector(G: torch.Tensor) -> torch.Tensor:
    """Return the unit top eigenvector `[d]` of a symmetric `G`, its sign fixed (largest component positive)."""
    vector = torch.linalg.eigh(G).eigenvectors[:, -1]
    return vector * torch.sign(vector[vector.abs().argmax()])


def vector_table(vectors: dict[str, torch.Tensor], raw_norms: dict[str, float], mean_norm: float) -> pd.DataFrame:
    """Return one row per steering vector: its kind, label, the norm it was built with, and its cosines with the others.

    `vectors` maps labels (`kind` or `kind:index`) to unit vectors `[d]`; `mean_norm` is the mean residual
    norm at the layer (the scale notebook 11 also states α in).
    """
    labels = list(vectors)
    stack = torch.stack([vectors[label] for label in labels])
    cos = stack @ stack.T
    rows = []
    for i, label in enumerate(labels):
        row = {"vector": label, "kind": label.split(":")[0], "raw_norm": float(raw_norms.get(label, 1.0)), "mean_residual_norm": float(mean_norm)}
        row.update({f"cos_{other}": float(cos[i, j]) for j, other in enumerate(labels)})
        rows.append(row)
    return pd.DataFrame(rows)
