"""A KL budget for activation steering: how large may α be in `r_ℓ + α v` before the next-token distributions move by ε?

Two questions a researcher asks of a steering vector `v` at layer ℓ:

- **per token** (`steering_budget`): at each token t of each text, the α at which `KL(p_t ‖ q_t(α))`
  first reaches ε: predicted in closed form, `α_pred = sqrt(2ε / Var_{p_t}[a_t])` with `a_t = dz_t/dα`;
  by the quartic of the cumulants of `a_t` under `p_t` (`α_quartic`, the fourth-order Taylor series of the
  KL, `inf` where it has no root); and exactly (`α_emp`, full forward passes, first crossing within
  `rtol`). `positions="all"` pushes every position, as steering does; `positions="target"` pushes only
  token t itself (the study's `layer_boundary`), so the gap between the two is the part of the effect that
  arrives through attention from earlier positions.
- **over a prompt set** (`steering_scale`): the α at which the `quantile` of per-token KL over every token
  of every text reaches ε (one public tool bisects α until the 95th percentile is 1 nat). The quantile is
  numpy's `inverted_cdf` (an actual token's KL), so with per-token crossings it is an order statistic of
  them: `closed` and `quartic` read it off the per-token predictions (one forward-mode pass of the prompt
  set); `exact` finds the root of the population quantile with full passes, started from the closed form;
  `bisection` does what the public tool does (double α from `alpha_start` until the quantile passes ε,
  then halve the bracket), as the baseline the closed form is measured against.

A negative α (steering away) is the same question for `-v`. α is in units of `v` as given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..core import checks
from ..core.bisection import doubling_bisection, sqrt_secant
from ..core.errors import InputError
from ..core.fisher import _predicted_boundary, cumulant_boundary, cumulants
from ..layers import steering_pass as engine
from ..layers.first_crossing import T_MAX_FACTOR
from ..layers.pullback import layer_boundary, layer_velocities

POSITIONS = ("all", "target")
BUDGET_COLUMNS = ["text", "position", "token", "eps", "curv", "alpha_pred", "alpha_quartic", "alpha_emp", "nonmonotone", "unconverged"]


def _predictions(p: torch.Tensor, A: torch.Tensor, eps: np.ndarray, quartic: bool = True):
    """`p [L, V]`, `A [L, V]` -> `(curv [L], alpha_pred [L, E], alpha_quartic [L, E] or None)`."""
    kappas = cumulants(p, A[:, None, :], order=4 if quartic else 2)  # [L, 1, 3] (or [L, 1, 1])
    curv = kappas[:, 0, 0].clamp_min(0)
    eps_t = torch.as_tensor(eps, dtype=torch.float64)
    return curv, _predicted_boundary(curv, eps_t), cumulant_boundary(kappas, eps_t)[:, 0, :] if quartic else None


def _long_table(ids, text, position, eps, curv, pred, quartic, emp, nonmonotone, unconverged) -> pd.DataFrame:
    L, E = pred.shape
    text, position = np.asarray(text), np.asarray(position)
    return pd.DataFrame(
        {
            "text": np.repeat(text, E),
            "position": np.repeat(position, E),
            "token": np.repeat(ids[text, position].numpy(), E),
            "eps": np.tile(eps, L),
            "curv": np.repeat(np.asarray(curv, dtype=float), E),
            "alpha_pred": np.asarray(pred, dtype=float).reshape(-1),
            "alpha_quartic": np.asarray(quartic, dtype=float).reshape(-1),
            "alpha_emp": np.asarray(emp, dtype=float).reshape(-1),
            "nonmonotone": np.repeat(np.asarray(nonmonotone, dtype=bool), E),
            "unconverged": np.asarray(unconverged, dtype=bool).reshape(-1),
        }
    )[BUDGET_COLUMNS]


def steering_budget(
    model, texts, layer, v, eps, positions: str = "all", rtol: float = 1e-4, alpha_max: float | None = None,
    exact: bool = True, batch_size: int = 16, add_special_tokens: bool | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Return the per-token steering budget: one row per text, token position and ε.

    `model` a `LoadedModel` or causal LM; `texts` a list of strings (tokenised as the model is run, its BOS
    included; `add_special_tokens=False` leaves special tokens out), of token-id sequences, or a
    `PositionSample`; `layer` an int `0 … n_layers` or `"head"`; `v [d]` the steering vector (any norm: α is
    in its units); `eps` a number or a list `[E]`. Columns: `text`, `position` (token index in the text, the
    BOS being position 0 where the tokenizer adds one), `token` (its id), `eps`, `curv` (`Var_p[a]`, per unit α²), `alpha_pred`, `alpha_quartic`, `alpha_emp` (`inf`: censored;
    NaN with `exact=False`), `nonmonotone` (the KL fell somewhere before the largest ε), `unconverged`.

    `positions="all"` adds `α v` at every position (activation steering) and reports every token;
    `"target"` adds it at the reported token only (the layer study's push), every token but the first
    (which has no prefix to run once).
    """
    if positions not in POSITIONS:
        raise InputError(f"positions must be one of {POSITIONS}, not {positions!r}")
    eps = checks.check_eps(eps, "cpu").numpy()
    steered = engine.SteeredTexts.build(model, texts, layer, v, add_special_tokens)
    if positions == "all":
        velocities = engine.steering_velocities(steered)
        z, a, _ = velocities
        text, position = engine.token_lines(steered.lengths)
        p = torch.softmax(z[text, position], -1)
        curv, pred, quartic = _predictions(p, a[text, position], eps)
        L = len(text)
        if exact:
            found = engine.steering_boundary(steered, eps, rtol=rtol, alpha_max=alpha_max, velocities=velocities)
            emp, nonmonotone, unconverged = found["alpha_emp"], found["nonmonotone"], found["unconverged"]
        else:
            emp, nonmonotone, unconverged = (
                torch.full((L, len(eps)), math.nan),
                torch.zeros(L, dtype=torch.bool),
                torch.zeros(L, len(eps), dtype=torch.bool),
            )
        return _long_table(steered.ids, text.numpy(), position.numpy(), eps, curv, pred, quartic, emp, nonmonotone, unconverged)
    contexts, text, position = [], [], []
    for i, length in enumerate(steered.lengths.tolist()):
        for t in range(1, length):
            contexts.append(steered.ids[i, : t + 1])
            text.append(i)
            position.append(t)
    if not contexts:
        raise InputError("positions='target' needs a text of at least 2 tokens (the first token has no prefix)")
    U = steered.v[None, None, :].expand(len(contexts), 1, -1)
    A, z = layer_velocities(model, contexts, layer, U, batch_size=batch_size, return_logits=True)
    curv, pred, quartic = _predictions(torch.softmax(z, -1), A[:, 0], eps)
    if exact:
        emp, info = layer_boundary(model, contexts, layer, U, eps, rtol=rtol, t_max=alpha_max, batch_size=batch_size, return_info=True)
        emp, nonmonotone, unconverged = emp[:, 0], info["nonmonotone"][:, 0], info["unconverged"][:, 0]
    else:
        emp = torch.full((len(contexts), len(eps)), math.nan)
        nonmonotone, unconverged = torch.zeros(len(contexts), dtype=torch.bool), torch.zeros(len(contexts), len(eps), dtype=torch.bool)
    return _long_table(steered.ids, text, position, eps, curv, pred, quartic, emp, nonmonotone, unconverged)


@dataclass(frozen=True)
class SteeringScale:
    """The population budget: the α at which the `quantile` of per-token KL reaches `eps`.

    `passes` counts forward passes of single texts (a forward-mode pass counted once), `seconds` the wall
    time of the whole call, `n_tokens` the tokens pooled.
    """

    alpha: float
    method: str
    eps: float
    quantile: float
    n_tokens: int
    passes: int
    seconds: float


def population_quantile(kl: torch.Tensor, quantile: float) -> float:
    """Return the `quantile` of per-token KL `[L]` (numpy's `inverted_cdf`: the ⌈qL⌉-th smallest value)."""
    values = torch.sort(torch.as_tensor(kl, dtype=torch.float64).reshape(-1)).values
    return float(values[engine.order_statistic_rank(len(values), quantile) - 1])


def steering_scale(
    model, texts, layer, v, eps: float = 1.0, quantile: float = 0.95, method: str = "closed", rtol: float = 1e-4,
    alpha_start: float = 1.0, max_passes: int = 200, add_special_tokens: bool | None = None, tangent: str = "difference",
) -> SteeringScale:  # fmt: skip
    """Return the α at which the `quantile` of per-token KL over every token of `texts` reaches `eps`.

    `method`: `"closed"` (the closed form per token, from one batch of three plain passes per text: the
    logits and the central difference of `z(±δ)`, see `steering_velocities`), `"quartic"` (the quartic of the
    cumulants per token, the same passes), `"exact"` (root of the population quantile with full forward
    passes, bracketed from the closed form, to `rtol`), or `"bisection"` (the baseline: double α from
    `alpha_start` until the quantile passes ε, then bisect to `rtol`). `max_passes` bounds the prompt-set
    passes of the two searches. `passes` counts plain passes of one text (a forward-mode pass once).
    `tangent="forward"` takes the velocities from one forward-mode pass per text instead (exact to rounding).
    """
    if method not in STEERING_METHODS:
        raise InputError(f"method must be one of {METHODS}, not {method!r}")
    if not 0 < quantile < 1:
        raise InputError(f"quantile must lie in (0, 1), got {quantile!r}")
    eps = float(checks.check_eps(eps, "cpu")[0])
    start = time.perf_counter()
    steered = engine.SteeredTexts.build(model, texts, layer, v, add_special_tokens)
    problem = _ScaleProblem(steered, eps, quantile, rtol, alpha_start, max_passes, tangent, method)
    alpha = STEERING_METHODS[method].search(problem)
    n_tokens = int(steered.lengths.sum())
    return SteeringScale(alpha, method, eps, quantile, n_tokens, problem.passes, time.perf_counter() - start)


@dataclass
class _ScaleProblem:
    """One population budget to find: the steered prompts, the target, the search's settings, the passes spent."""

    steered: engine.SteeredTexts
    eps: float
    quantile: float
    rtol: float
    alpha_start: float
    max_passes: int
    tangent: str
    method: str
    passes: int = 0

    def predictions(self, quartic: bool):
        """`(reference z [N, T, V], α_pred [L], α_quartic [L] or None)`: the closed form's batch of passes."""
        z, a, _ = engine.steering_velocities(self.steered, tangent=self.tangent)
        self.passes += engine.velocity_passes(self.steered, self.tangent)
        text, position = engine.token_lines(self.steered.lengths)
        _, pred, fourth = _predictions(torch.softmax(z[text, position], -1), a[text, position], np.array([self.eps]), quartic)
        return z, pred[:, 0], None if fourth is None else fourth[:, 0]

    def level(self, reference):
        """`α -> the quantile of per-token KL at α` (one pass of every text each), bounded by `max_passes`."""
        n_texts = len(self.steered.ids)

        def level(alpha: float) -> float:
            self.passes += n_texts
            if self.passes > self.max_passes * n_texts:
                raise InputError(f"the {self.method} search did not converge within {self.max_passes} passes of the prompt set")
            return population_quantile(engine.population_kl(self.steered, alpha, reference=reference), self.quantile)

        return level


def _closed(problem: _ScaleProblem) -> float:
    return engine.population_alpha(problem.predictions(quartic=False)[1], problem.quantile)


def _quartic(problem: _ScaleProblem) -> float:
    return engine.population_alpha(problem.predictions(quartic=True)[2], problem.quantile)


def _exact(problem: _ScaleProblem) -> float:
    # The closed form's passes also give the unsteered logits every level is measured against.
    reference, pred, _ = problem.predictions(quartic=False)
    guess = engine.population_alpha(pred, problem.quantile)
    scale = problem.steered.residual_scale
    cap = T_MAX_FACTOR * scale / float(problem.steered.v.norm()) if scale else math.inf  # as steering_boundary's cap
    start = guess if math.isfinite(guess) else problem.alpha_start
    return _root_from(problem.level(reference), problem.eps, start, problem.rtol, cap=cap)


def _bisect(problem: _ScaleProblem) -> float:
    n_texts = len(problem.steered.ids)
    reference, _, _ = problem.steered.logits(torch.arange(n_texts), torch.zeros(n_texts, dtype=torch.float64))
    problem.passes += n_texts
    return _bisection(problem.level(reference), problem.eps, problem.alpha_start, problem.rtol)


@dataclass(frozen=True)
class SteeringMethod:
    """A way to find the population budget: `search(problem) -> α`, counting its passes on the problem."""

    name: str
    description: str
    search: Callable[[_ScaleProblem], float]


# The methods `steering_scale` knows, in the order the tables list them: add one here.
STEERING_METHODS = {
    method.name: method
    for method in (
        SteeringMethod("closed", "the closed form per token, then the order statistic (one batch of passes)", _closed),
        SteeringMethod("quartic", "the quartic of the cumulants per token, then the order statistic (the same passes)", _quartic),
        SteeringMethod("exact", "the root of the population quantile with full passes, bracketed from the closed form", _exact),
        SteeringMethod("bisection", "the baseline: double α from alpha_start, then halve the bracket to rtol", _bisect),
    )
}
METHODS = tuple(STEERING_METHODS)


def closed_form_scales(
    model, texts, layer, v, eps, quantiles, quartic: bool = False, add_special_tokens: bool | None = None,
    tangent: str = "difference",
) -> pd.DataFrame:  # fmt: skip
    """Return the closed-form (and, with `quartic`, the quartic) population budget at every ε `[E]` and quantile `[Q]`.

    All from one batch of three plain passes per text (`steering_velocities`' central difference): the per-token predictions do not depend on the quantile, and
    `α_pred` scales as `sqrt(ε)`. Columns: eps, quantile, method, alpha.
    """
    eps = checks.check_eps(eps, "cpu").numpy()
    quantiles = [float(q) for q in np.atleast_1d(quantiles)]
    if not quantiles or not all(0 < q < 1 for q in quantiles):
        raise InputError(f"every quantile must lie in (0, 1), got {quantiles!r}")
    steered = engine.SteeredTexts.build(model, texts, layer, v, add_special_tokens)
    z, a, _ = engine.steering_velocities(steered, tangent=tangent)
    text, position = engine.token_lines(steered.lengths)
    _, pred, quartic_alpha = _predictions(torch.softmax(z[text, position], -1), a[text, position], eps, quartic)
    rows = []
    for method, alphas in (("closed", pred), ("quartic", quartic_alpha)):
        if alphas is None:
            continue
        for e, column in zip(eps, alphas.T):
            rows += [dict(eps=float(e), quantile=q, method=method, alpha=engine.population_alpha(column, q)) for q in quantiles]
    return pd.DataFrame(rows)


def _bisection(level, eps: float, alpha_start: float, rtol: float) -> float:
    """The baseline, as a steering tool does it: doubling, then bisection; the bracket's midpoint."""
    lo, hi = doubling_bisection(level, eps, alpha_start, rtol)
    return 0.5 * (lo + hi)


def _secant_through(first: tuple[float, float], second: tuple[float, float], eps: float) -> float | None:
    """Where the line of `sqrt(2D)` through two points `(α, D)` reaches `sqrt(2ε)`; None where it is flat."""
    (a1, d1), (a2, d2) = first, second
    g1, g2 = math.sqrt(2 * d1), math.sqrt(2 * d2)
    if g1 == g2 or a1 == a2:
        return None
    return a1 + (math.sqrt(2 * eps) - g1) * (a2 - a1) / (g2 - g1)


def _root_from(level, eps: float, guess: float, rtol: float, first: float = 2**-0.5, cap: float = math.inf) -> float:
    """The first crossing of `level(α) = ε` on the lattice `guess · 2^(j/2)` from `first · guess`, then refined
    inside its bracket (secant steps on `sqrt(2 level)`, bisection when a step does not halve it).

    The closed form's guess lands within a few percent where it applies, so the lattice starts one step below
    it; a crossing under `first · guess` is not looked for (where `level` is already at ε there, the root in
    `[0, first · guess]` is refined instead). `inf` where the lattice passes `cap` below ε (censored)."""
    ratio = 2**0.5
    lo, lo_value = 0.0, 0.0
    alpha = guess * first
    value = level(alpha)
    while not value >= eps:  # a level that is not a number (the model overflowed) has not reached ε either
        if alpha * ratio > cap:
            return math.inf  # no crossing below the cap: censored
        lo, lo_value = alpha, value
        alpha *= ratio
        value = level(alpha)
    hi, hi_value = alpha, value
    widths = []
    # Secant steps through the two latest points (sqrt(2 level) is nearly linear in α, so they converge fast), each
    # aimed a quarter of rtol past its estimate, away from the end that moved last, so the bracket closes from both.
    latest, moved = [(lo, lo_value), (hi, hi_value)], None
    while hi - lo > rtol * max(lo, 1e-300) and hi - lo > 0:
        width = hi - lo
        widths.append(width)
        mid = _secant_through(latest[-2], latest[-1], eps) if lo > 0 else None
        mid = sqrt_secant(lo, lo_value, hi, hi_value, eps) if mid is None else mid
        mid *= {"lo": 1 + 0.25 * rtol, "hi": 1 - 0.25 * rtol}.get(moved, 1.0)
        if len(widths) >= 3 and width > 0.5 * widths[-3] or not lo < mid < hi:
            widths.clear()
            mid = 0.5 * (lo + hi)
        # Keep the step off the ends by a sliver.
        mid = min(max(mid, lo + 0.25 * rtol * lo), hi - 0.25 * rtol * lo) if lo > 0 else mid
        value = level(mid)
        latest.append((mid, value))
        if value >= eps:
            hi, hi_value, moved = mid, value, "hi"
        else:
            lo, lo_value, moved = mid, value, "lo"
    if lo == 0:
        return hi
    return sqrt_secant(lo, lo_value, hi, hi_value, eps)
