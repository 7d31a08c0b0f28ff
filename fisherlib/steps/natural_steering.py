"""Fisher-whitened steering against Euclidean steering at equal target effect (FishBack, arXiv 2605.17231).

The target effect: raise the log-probability of a set `S` of target tokens, `log q_t(S) = log Σ_{s∈S} q_t(s)`,
by `gain` nats on average over the prompt set's tokens, with one vector added at every position. Three
directions, each at unit norm and scaled to that gain (first crossing, full forward passes):

- `euclidean_gradient`: `g = ∇_x mean_t log q_t(S)` at `x = 0` (gradient ascent's direction);
- `natural_gradient`: `Ḡ⁺ g`, with `Ḡ` the population metric of the push (`steering_vectors.population_metric`);
  to second order it spends the least KL for the gain (`g = Σ_t J_tᵀ F_t y_t` lies in the range of `Ḡ`,
  since `∇_z log p(S) = F (1_S / p(S))`);
- any other vector given, e.g. the mean difference.

**Off-target KL** `KL(p_t^{¬S} ‖ q_t^{¬S})`, the divergence of the distributions renormalised outside S,
averaged over tokens: it is zero for a push that only moves mass between S and the rest as a block (the
target effect itself) and measures everything else the push does to the distribution. The total KL
`KL(p_t ‖ q_t)` is reported beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..core.bisection import doubling_bisection
from ..core.errors import InputError
from ..layers import steering_pass as engine

DIRECTIONS = ("euclidean_gradient", "natural_gradient")


def characteristic_tokens(p: torch.Tensor, domains, first: str, second: str, k: int) -> torch.Tensor:
    """Return the `k` tokens `[k]` whose mean probability over `first`'s positions most exceeds `second`'s (log ratio).

    `p [P, V]` next-token distributions, `domains [P]`. Tokens `first` gives less than `1/V` on average are
    left out, so that the set is made of tokens the domain actually predicts.
    """
    domains = np.asarray(domains)
    mean_first = p[torch.as_tensor(domains == first)].double().mean(0)
    mean_second = p[torch.as_tensor(domains == second)].double().mean(0)
    floor = 1.0 / p.shape[-1]
    score = torch.log(mean_first.clamp_min(1e-300)) - torch.log(mean_second.clamp_min(1e-300))
    score = torch.where(mean_first >= floor, score, torch.full_like(score, -math.inf))
    if int(torch.isfinite(score).sum()) < k:
        raise InputError(f"domain {first!r} predicts fewer than {k} tokens with probability ≥ 1/V: lower steer_target_tokens")
    return torch.topk(score, k).indices


def _set_log_prob(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    log_q = torch.log_softmax(z, -1)
    return torch.logsumexp(log_q[..., target], -1)


def target_effects(z0: torch.Tensor, z: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per token `[L]` (float64): `gain = log q(S) − log p(S)`, `off_target_kl` and `total_kl`.

    `z0, z [L, V]` logits without and with the push; `target [k]` the token ids of S.
    """
    log_p, log_q = torch.log_softmax(z0, -1), torch.log_softmax(z, -1)
    outside = torch.ones(z0.shape[-1], dtype=torch.bool)
    outside[target] = False
    log_p_out = torch.log_softmax(log_p[:, outside], -1)
    log_q_out = torch.log_softmax(log_q[:, outside], -1)
    return dict(
        gain=_set_log_prob(z, target) - _set_log_prob(z0, target),
        off_target_kl=(log_p_out.exp() * (log_p_out - log_q_out)).sum(-1).clamp_min(0),
        total_kl=(log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0),
    )


def _effects_at(steered, u: torch.Tensor, alpha: float, reference: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(steered.ids)
    text, position = engine.token_lines(steered.lengths)
    rows = torch.arange(n)
    z, _, _ = steered.logits(rows, torch.full((n,), float(alpha), dtype=torch.float64), directions=u[None].expand(n, -1))
    return target_effects(reference[text, position], z.cpu()[text, position], target)


def target_gradient(steered, reference: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return `g = ∇_x mean_t log q_t(S) [d]` at `x = 0` (one backward pass of every text)."""
    text, position = engine.token_lines(steered.lengths)
    n_tokens = len(text)
    target = target.to(steered.device)

    def objective(z):
        return _set_log_prob(z[text.to(z.device), position.to(z.device)], target).sum() / n_tokens

    return steered.gradient(torch.arange(len(steered.ids)), objective)


def natural_gradient(G: torch.Tensor, g: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """Return `Ḡ⁺ g [d]`: eigenvalues below `rcond · λ_max` are treated as zero (the pseudo-inverse's cut-off)."""
    values, vectors = torch.linalg.eigh(G.double())
    keep = values > rcond * values[-1]
    coefficients = (vectors.T @ g.double())[keep] / values[keep]
    return vectors[:, keep] @ coefficients


def alpha_for_gain(steered, u: torch.Tensor, gain: float, reference: torch.Tensor, target: torch.Tensor,
                   alpha_max: float, rtol: float = 1e-4, alpha_start: float = 1.0) -> tuple[float, int]:  # fmt: skip
    """Return `(α, passes)`: the first α > 0 at which the mean gain along `u` reaches `gain` (`inf` before `alpha_max`).

    Doubling from `alpha_start`, then bisection to `rtol`; each step one pass of the prompt set.
    """
    passes = 0

    def mean_gain(alpha):
        nonlocal passes
        passes += 1
        return float(_effects_at(steered, u, alpha, reference, target)["gain"].mean())

    _, hi = doubling_bisection(mean_gain, gain, alpha_start, rtol, cap=alpha_max)
    return hi, passes


def compare_at_equal_gain(steered, directions: dict[str, torch.Tensor], target: torch.Tensor, gain: float,
                          alpha_max: float, rtol: float = 1e-4) -> pd.DataFrame:  # fmt: skip
    """Return one row per direction: the α that reaches `gain`, the gain reached, mean off-target and total KL.

    `directions` maps names to vectors `[d]` (normalised here). A direction that does not reach the gain
    before `alpha_max` has `reached` False and its effects measured at `alpha_max`. Columns: direction,
    alpha, reached, gain, off_target_kl, total_kl, passes.
    """
    n = len(steered.ids)
    reference, _, _ = steered.logits(torch.arange(n), torch.zeros(n, dtype=torch.float64))
    reference = reference.cpu()
    rows = []
    for name, vector in directions.items():
        u = torch.as_tensor(vector, dtype=torch.float64)
        u = u / u.norm()
        alpha, passes = alpha_for_gain(steered, u, gain, reference, target, alpha_max, rtol)
        reached = math.isfinite(alpha)
        effects = _effects_at(steered, u, alpha if reached else alpha_max, reference, target)
        rows.append(dict(direction=name, alpha=alpha if reached else alpha_max, reached=reached,
                         gain=float(effects["gain"].mean()), off_target_kl=float(effects["off_target_kl"].mean()),
                         total_kl=float(effects["total_kl"].mean()), passes=passes + 1))  # fmt: skip
    return pd.DataFrame(rows)
