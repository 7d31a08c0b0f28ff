"""A KL budget for activation steering measured on generated text: the iso-KL calibration's own question.

The public iso-KL calibration runs the *steered* model greedily for `w` tokens after each prompt, takes the
per-token KL between the steered and the unsteered next-token distributions along that continuation (both
evaluated on the steered continuation: the base model reads the same tokens with α = 0), and bisects the
coefficient α until the 95th percentile of those KLs, over every generated token of every prompt, is 1 nat.
`steering.steering_scale` asks the teacher-forced question on fixed prompts; here the continuation itself
changes with α.

- `generate_continuations`: greedy continuations with `α v` added to the residual entering block `layer`
  at every position, the prompt's and each generated token's (the layer convention of `steering_budget`).
- `generated_kl`: the per-token KL `[texts, w]` at each generated position (the distribution that predicts
  generated token j, read at the position before it), `KL(steered ‖ base)` (`"steered_base"`, the public
  tool's) or `KL(base ‖ steered)` (`"base_steered"`).
- `generated_scale`: the α at which the `quantile` of those KLs reaches ε, by one of `GENERATED_METHODS`:

  * `closed`: one greedy generation at α = 0 and one forward-mode pass over prompt + that unsteered
    continuation give every generated position's logit velocity `a = dz/dα`; the per-token closed form
    `α_pred = sqrt(2ε / Var_p[a])` and its population order statistic (`population_alpha`). Both
    divergences have the same second-order term `½ α² Var_p[a]` (the KL is symmetric to second order), so
    the closed form is the same for both. Along α the greedy continuation is piecewise constant (it
    changes only where a greedy choice flips), so for small ε, before any flip, the closed form on the
    unsteered continuation is the second-order limit of the generated budget.
  * `corrected`: the closed form, then one measurement: generate at `α_pred`, measure the level `L` (the
    quantile of KL) and return `α_pred · sqrt(ε / L)`, the root of the level if it were exactly quadratic
    in α through `(α_pred, L)`: one secant step on `sqrt(level)`, which is linear in α to second order.
  * `exact`: the first crossing of `level(α) = ε` on the lattice `guess · 2^(j/2)` from a quarter of the
    closed form, refined inside its bracket (`steering._root_from`), every evaluation a fresh greedy
    generation at that α.
  * `bisection`: the public tool's search: double α from `alpha_start` until the level reaches ε, then
    halve the bracket to `rtol`, regenerating at every α.

  `level(α)` is continuous in α only while every continuation stays the same: where a greedy choice flips,
  the continuation after it changes and the level jumps. `exact` (and `bisection`) find a crossing within
  `rtol` of α; where the final bracket straddles a flip the "crossing" is the jump itself, where the level
  may pass from below ε to well above it. `GeneratedScale.continuations` counts the different sets of
  continuations the evaluations met and `at_jump` says whether the bracket's ends had different ones.

`passes` counts forward passes of single texts, honestly: generation runs without a key/value cache (the
push reaches every position, as in the teacher-forced engine). The first generation costs `w` passes per text;
later ones start from the last continuation as a draft and check it with one pass through prompt + draft,
settling every token up to the first greedy choice that differs (so a search whose continuation stays the
same pays one pass per text per α, and one more per choice that flips). The base distributions along a
continuation cost one more pass, once per continuation; the forward-mode pass of `closed` counts once.
All KLs, quantiles and line searches are float64.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..core import checks
from ..core.errors import InputError
from ..layers import steering_pass as engine
from ..layers.engine import context_length, network_of
from ..layers.first_crossing import T_MAX_FACTOR
from .steering import _bisection, _predictions, _root_from, population_quantile, steering_scale

GENERATED_METHODS = ("closed", "corrected", "exact", "bisection")
DIVERGENCES = ("base_steered", "steered_base")  # KL(base ‖ steered), KL(steered ‖ base)
# The exact search's lattice starts at this fraction of the closed form: on generated text a flipped greedy choice
# can push the level above the second-order prediction, so the first crossing may lie well below the guess.
LATTICE_START = 0.25
BUDGET_TABLE_COLUMNS = ["divergence", "eps", "quantile", "method", "alpha", "level", "passes", "seconds", "n_generate",
                        "continuations", "at_jump", "ratio_to_exact"]  # fmt: skip


@dataclass(frozen=True)
class GeneratedScale:
    """The generated-text budget: the α at which the `quantile` of per-token KL along `n_generate` greedy tokens
    per prompt reaches `eps`.

    `level`: the quantile of KL measured at `alpha` (one more generation, not counted in `passes` nor
    `seconds`; NaN for `closed`, which measures nothing). `passes`: forward passes of single texts (a
    generation of `w` tokens is `w` of them per text). `n_tokens`: the generated tokens pooled (texts × w).
    `continuations`: how many different sets of greedy continuations the method's evaluations met (1 when
    no greedy choice flipped). `at_jump`: the final bracket's two ends had different continuations, so the
    level jumps inside it and `alpha` is the place of the jump, not a root of a continuous level.
    """

    alpha: float
    method: str
    eps: float
    quantile: float
    divergence: str
    n_generate: int
    n_tokens: int
    passes: int
    seconds: float
    level: float
    continuations: int = 1
    at_jump: bool = False


def _check_options(n_generate, divergence: str | None = None, method: str | None = None, quantile: float | None = None) -> int:
    if isinstance(n_generate, bool) or not isinstance(n_generate, (int, np.integer)) or n_generate < 1:
        raise InputError(f"n_generate must be an int ≥ 1 (the tokens generated after each prompt), got {n_generate!r}")
    if divergence is not None and divergence not in DIVERGENCES:
        raise InputError(f"divergence must be one of {DIVERGENCES}, not {divergence!r}")
    if method is not None and method not in GENERATED_METHODS:
        raise InputError(f"method must be one of {GENERATED_METHODS}, not {method!r}")
    if quantile is not None and not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise InputError(f"quantile must lie in (0, 1), got {quantile!r}")
    return int(n_generate)


class _Generator:
    """The prompts ready to be continued greedily with `α v` at the layer: one `SteeredTexts` whose rows have room
    for `w` more tokens, run at growing lengths."""

    def __init__(self, model, texts, layer, v, n_generate: int, add_special_tokens):
        prompts = engine.token_texts(model, texts, add_special_tokens)
        network = network_of(model)
        limit = context_length(network.config) if hasattr(network, "config") else None
        longest = max(len(p) for p in prompts)
        if limit is not None and longest + n_generate > limit:
            raise InputError(f"a prompt of {longest} tokens and {n_generate} generated tokens need {longest + n_generate} "
                             f"positions, more than the model's context of {limit}: shorten the prompts or n_generate")  # fmt: skip
        # Built on prompt + w placeholder tokens, so that the attention path is chosen for the longest text run.
        padded = [torch.cat([p, p.new_zeros(n_generate)]) for p in prompts]
        self.steered = engine.SteeredTexts.build(model, padded, layer, v)
        self.prompt_lengths = torch.tensor([len(p) for p in prompts])
        self.n_generate = n_generate
        self.n_texts = len(prompts)
        self.passes = 0  # forward passes of single texts
        self.draft: torch.Tensor | None = None  # the last continuation generated: the next generation's guess
        self.base_cache: dict[tuple, torch.Tensor] = {}  # unsteered logits along a continuation already met
        self.evaluations: dict[float, tuple[dict[str, torch.Tensor], tuple, int]] = {}  # α -> (KL, continuation, passes)
        self.closed: tuple[torch.Tensor, tuple, int] | None = None  # α_pred at ε = 1 [N·w], the unsteered continuation, passes

    def _run(self, ids: torch.Tensor, lengths: torch.Tensor, alpha: float) -> torch.Tensor:
        """Logits `[R, T, V]` (float64, CPU) of `ids [R, T]` (rows of their own `lengths`, any of the texts) with `α v`
        at every position."""
        view = dataclasses.replace(self.steered, ids=ids, lengths=lengths)
        step = view.rows_per_pass()
        out = []
        for start in range(0, len(ids), step):
            rows = torch.arange(start, min(start + step, len(ids)))
            z, _, _ = view.logits(rows, torch.full((len(rows),), float(alpha), dtype=torch.float64))
            out.append(z.cpu())
            self.passes += len(rows)
        return torch.cat(out)

    def generate(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(ids [N, P + w], z [N, w, V])`: prompt + greedy continuation (right-padded) and the steered logits
        that chose each generated token.

        Without a draft, `w` passes per text of growing length. With one (the last continuation generated), each
        round runs the texts not yet settled once through prompt + draft: where the greedy choices agree with the
        draft up to token `m` and differ there, tokens `0 … m` are settled (their prefixes were) and the choice
        at `m` replaces the draft's; a search whose continuation does not change settles in one pass per text.
        """
        P, w = self.prompt_lengths, self.n_generate
        rows = torch.arange(self.n_texts)
        ids = torch.zeros(self.n_texts, int(P.max()) + w, dtype=torch.long)
        for i, n in enumerate(P.tolist()):
            ids[i, :n] = self.steered.ids[i, :n]
        if self.draft is None:
            chosen = []
            for j in range(w):
                lengths = P + j
                z = self._run(ids[:, : int(lengths.max())], lengths, alpha)
                last = z[rows, lengths - 1]  # [N, V]
                ids[rows, lengths] = last.argmax(-1)
                chosen.append(last)
            z = torch.stack(chosen, 1)
        else:
            ids = self.draft.clone()
            z = None
            settled = torch.zeros(self.n_texts, dtype=torch.long)  # generated tokens known right, per text
            while bool((settled < w).any()):
                open_ = torch.nonzero(settled < w).flatten()
                lengths = P[open_] + w - 1
                out = self._run(ids[open_, : int(lengths.max())], lengths, alpha)
                where = (P[open_] - 1)[:, None] + torch.arange(w)[None]  # positions that predict tokens 0 … w-1
                logits = out[torch.arange(len(open_))[:, None], where]  # [n, w, V]
                if z is None:
                    z = torch.empty(self.n_texts, w, logits.shape[-1], dtype=logits.dtype)
                choice = logits.argmax(-1)
                for k, i in enumerate(open_.tolist()):
                    start = int(settled[i])
                    drafted = ids[i, int(P[i]) : int(P[i]) + w]
                    differs = torch.nonzero(choice[k, start:] != drafted[start:]).flatten()
                    stop = w if len(differs) == 0 else start + int(differs[0]) + 1
                    z[i, start:stop] = logits[k, start:stop]
                    ids[i, int(P[i]) : int(P[i]) + stop] = choice[k, :stop]
                    settled[i] = stop
        self.draft = ids
        return ids, z

    def continuation(self, ids: torch.Tensor) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(ids[i, n : n + self.n_generate].tolist()) for i, n in enumerate(self.prompt_lengths.tolist()))

    def base_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The unsteered logits `[N, w, V]` along `ids` at the positions that predict each generated token (one pass
        per text, none for a continuation met before)."""
        key = self.continuation(ids)
        if key not in self.base_cache:
            P, w = self.prompt_lengths, self.n_generate
            lengths = P + w - 1
            z = self._run(ids[:, : int(lengths.max())], lengths, 0.0)
            self.base_cache[key] = z[torch.arange(self.n_texts)[:, None], (P - 1)[:, None] + torch.arange(w)[None]]
        return self.base_cache[key]

    def velocities(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(z, a) [N·w, V]` at α = 0 at the positions that predict each generated token: one forward-mode pass per text."""
        P, w = self.prompt_lengths, self.n_generate
        lengths = P + w - 1
        view = dataclasses.replace(self.steered, ids=ids[:, : int(lengths.max())], lengths=lengths)
        z, a, _ = engine.steering_velocities(view)
        self.passes += self.n_texts
        text = torch.arange(self.n_texts).repeat_interleave(w)
        position = ((P - 1)[:, None] + torch.arange(w)[None]).reshape(-1)
        return z[text, position], a[text, position]


def _kl(z_steered: torch.Tensor, z_base: torch.Tensor, divergence: str) -> torch.Tensor:
    """Per-token KL `[...]` between `softmax(z_steered)` and `softmax(z_base)`, float64."""
    log_q = torch.log_softmax(z_steered.double(), -1)
    log_p = torch.log_softmax(z_base.double(), -1)
    if divergence == "steered_base":
        return (log_q.exp() * (log_q - log_p)).sum(-1).clamp_min(0)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)


def _evaluate(generator: _Generator, alpha: float) -> tuple[dict[str, torch.Tensor], tuple, int]:
    """Generate at α and return `({divergence: KL [N, w]}, continuation, passes)`: at most `w + 1` passes per text
    (one where the continuation is the last one's), remembered per α: an α evaluated before costs nothing more,
    and `passes` is what it cost when it was made."""
    alpha = float(alpha)
    if alpha not in generator.evaluations:
        before = generator.passes
        ids, z = generator.generate(alpha)
        base = generator.base_logits(ids)
        kl = {d: _kl(z, base, d) for d in DIVERGENCES}
        generator.evaluations[alpha] = (kl, generator.continuation(ids), generator.passes - before)
    return generator.evaluations[alpha]


def generate_continuations(model, texts, layer, v, alpha: float, n_generate: int, add_special_tokens: bool | None = None) -> list[torch.Tensor]:
    """Return, per text, its prompt's token ids followed by `n_generate` greedy tokens generated with `α v` added to
    the residual entering block `layer` at every position (prompt and generated tokens alike).

    `texts`, `layer`, `v` and `add_special_tokens` as in `steering_budget`. Generation never stops early (an
    end-of-text token is a token like any other). Ties go to the lowest token id (`argmax`).
    """
    n_generate = _check_options(n_generate)
    generator = _Generator(model, texts, layer, v, n_generate, add_special_tokens)
    ids, _ = generator.generate(float(alpha))
    return [ids[i, : n + n_generate].clone() for i, n in enumerate(generator.prompt_lengths.tolist())]


def generated_kl(
    model, texts, layer, v, alpha: float, n_generate: int, divergence: str = "steered_base", add_special_tokens: bool | None = None,
) -> torch.Tensor:  # fmt: skip
    """Return the per-token KL `[texts, n_generate]` (float64) along the greedy continuation generated with `α v`.

    Entry `[i, j]` compares the steered and the unsteered next-token distributions that predict generated token j
    of text i (read at the position before it), both on the steered continuation: `"steered_base"` is
    `KL(steered ‖ base)` (the public iso-KL tool's), `"base_steered"` is `KL(base ‖ steered)`.
    """
    n_generate = _check_options(n_generate, divergence)
    generator = _Generator(model, texts, layer, v, n_generate, add_special_tokens)
    kl, _, _ = _evaluate(generator, float(alpha))
    return kl[divergence]


def _closed(generator: _Generator, eps: float, quantile: float) -> tuple[float, tuple, int]:
    """`(α, unsteered continuation, passes)`: the closed form from the generation at α = 0 and one forward-mode pass
    per text, made once per generator (α_pred scales as sqrt(ε))."""
    if generator.closed is None:
        before = generator.passes
        ids, _ = generator.generate(0.0)
        z, a = generator.velocities(ids)
        _, pred, _ = _predictions(torch.softmax(z, -1), a, np.array([1.0]), quartic=False)
        generator.closed = (pred[:, 0], generator.continuation(ids), generator.passes - before)
    pred, continuation, passes = generator.closed
    return engine.population_alpha(pred * math.sqrt(eps), quantile), continuation, passes


def _bracket_ends(seen: list[tuple[float, float, tuple]], alpha: float, eps: float) -> bool:
    """Whether the evaluated points nearest `alpha` below ε (at or below it) and at or above ε (at or above it)
    had different continuations: the level jumps between them."""
    below = [s for s in seen if s[1] < eps and s[0] <= alpha]
    above = [s for s in seen if s[1] >= eps and s[0] >= alpha]
    if not below or not above:
        return False
    return max(below, key=lambda s: s[0])[2] != min(above, key=lambda s: s[0])[2]


def generated_scale(
    model, texts, layer, v, eps: float = 1.0, quantile: float = 0.95, n_generate: int = 16, method: str = "closed",
    divergence: str = "steered_base", rtol: float = 1e-4, alpha_start: float = 1.0, max_passes: int = 400,
    add_special_tokens: bool | None = None, measure_level: bool = True,
) -> GeneratedScale:  # fmt: skip
    """Return the α at which the `quantile` of per-token KL over every generated token of every text reaches `eps`.

    Each prompt is continued greedily for `n_generate` tokens with `α v` added at `layer` (every position), and the
    KL (`divergence`, see `generated_kl`) is taken at every generated token; `method` is one of
    `GENERATED_METHODS` (see the module's docstring). `rtol` and `alpha_start` steer the two searches;
    `max_passes` bounds the number of α evaluations of a search (each a generation of the prompt set, `w + 1`
    passes per text), past which it raises InputError. `measure_level=False` skips the one generation at the
    answer that fills `level` (then NaN). `passes` and `seconds` are the whole call's: for `corrected` and
    `exact` they include the closed form's generation at α = 0 and its forward-mode pass.
    """
    n_generate = _check_options(n_generate, divergence, method, quantile)
    eps = float(checks.check_eps(eps, "cpu")[0])
    if not rtol > 0:
        raise InputError(f"rtol must be positive, got {rtol!r}")
    generator = _Generator(model, texts, layer, v, n_generate, add_special_tokens)
    return _scale(generator, eps, quantile, method, divergence, rtol, alpha_start, max_passes, measure_level)


def _scale(generator: _Generator, eps: float, quantile: float, method: str, divergence: str, rtol: float,
           alpha_start: float = 1.0, max_passes: int = 400, measure_level: bool = True) -> GeneratedScale:  # fmt: skip
    """`generated_scale` on a generator that may hold evaluations of earlier calls (reused, their passes counted)."""
    start = time.perf_counter()
    n_generate = generator.n_generate
    n_tokens = generator.n_texts * n_generate
    seen: list[tuple[float, float, tuple]] = []
    passes = 0

    def level(alpha: float) -> float:
        nonlocal passes
        if len(seen) >= max_passes:
            raise InputError(f"the {method} search did not converge within {max_passes} α evaluations "
                             f"(the {quantile} quantile of the generated KL may never reach ε = {eps})")  # fmt: skip
        kl, continuation, cost = _evaluate(generator, alpha)
        passes += cost
        value = population_quantile(kl[divergence], quantile)
        seen.append((float(alpha), value, continuation))
        return value

    jump = False
    if method == "bisection":
        alpha = _bisection(level, eps, alpha_start, rtol)
        jump = _bracket_ends(seen, alpha, eps)
    else:
        guess, unsteered, cost = _closed(generator, eps, quantile)
        passes += cost
        seen_closed = [(0.0, 0.0, unsteered)]
        if method == "closed":
            alpha = guess
        elif not math.isfinite(guess) or guess <= 0:
            raise InputError(f"the closed form has no finite α at ε = {eps} (the steering vector does not move the "
                             f"generated tokens' distributions): the {method} method needs one")  # fmt: skip
        elif method == "corrected":
            measured = level(guess)
            alpha = guess * math.sqrt(eps / measured) if measured > 0 else math.inf
        else:
            # The teacher-forced budget's cap (T_MAX_FACTOR · ‖r_ℓ‖ in units of v): past it the level need never reach ε.
            scale = generator.steered.residual_scale
            cap = T_MAX_FACTOR * scale / float(generator.steered.v.norm()) if scale else math.inf
            alpha = _root_from(level, eps, guess, rtol, first=LATTICE_START, cap=cap)
            jump = _bracket_ends(seen_closed + seen, alpha, eps)
        seen = seen_closed + seen
    seconds = time.perf_counter() - start
    measured_level = math.nan
    if measure_level and method != "closed" and math.isfinite(alpha):
        kl, continuation, _ = _evaluate(generator, alpha)
        measured_level = population_quantile(kl[divergence], quantile)
        seen.append((float(alpha), measured_level, continuation))
    continuations = len({s[2] for s in seen})
    return GeneratedScale(float(alpha), method, eps, float(quantile), divergence, n_generate, n_tokens, passes, seconds,
                          measured_level, continuations, jump)  # fmt: skip


def generated_budgets(
    model, texts, layer, v, eps_list, quantile: float = 0.95, n_generate: int = 16, methods=GENERATED_METHODS,
    divergences=DIVERGENCES, rtol: float = 1e-4, teacher_forced: bool = True, add_special_tokens: bool | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Return the long table of generated-text budgets for notebook 11: one row per divergence, ε and method.

    Columns: `divergence`, `eps`, `quantile`, `method`, `alpha`, `level` (the measured quantile of KL at α; NaN
    for the closed forms), `passes` (what the method's evaluations cost when they were made: a generation the table
    made before for another row is reused, not run again, but counted), `seconds` (the row's own wall time),
    `n_generate`, then `continuations`, `at_jump` (see
    `GeneratedScale`) and `ratio_to_exact` (α over the `exact` α of the same divergence and ε; NaN without
    `exact`). With `teacher_forced`, a row `method="teacher_forced"` per divergence and ε holds the
    teacher-forced closed form on the prompts alone (`steering_scale(..., method="closed")`, the same for both
    divergences), so that its `ratio_to_exact` says how far the prompt-only budget is from the generated one.
    """
    eps_values = checks.check_eps(eps_list, "cpu").numpy()
    n_generate = _check_options(n_generate, quantile=quantile)
    methods, divergences = list(methods), list(divergences)
    for m in methods:
        _check_options(n_generate, method=m)
    for d in divergences:
        _check_options(n_generate, divergence=d)
    if not rtol > 0:
        raise InputError(f"rtol must be positive, got {rtol!r}")
    # One generator for the whole table: the closed form and every α already evaluated are made once and reused.
    generator = _Generator(model, texts, layer, v, n_generate, add_special_tokens)
    rows = []
    for divergence in divergences:
        for eps in eps_values:
            for method in methods:
                s = _scale(generator, float(eps), quantile, method, divergence, rtol)
                rows.append(dict(divergence=divergence, eps=float(eps), quantile=float(quantile), method=method, alpha=s.alpha,
                                 level=s.level, passes=s.passes, seconds=s.seconds, n_generate=n_generate,
                                 continuations=s.continuations, at_jump=s.at_jump))  # fmt: skip
            if teacher_forced:
                s = steering_scale(model, texts, layer, v, eps=float(eps), quantile=quantile, method="closed", add_special_tokens=add_special_tokens)
                rows.append(dict(divergence=divergence, eps=float(eps), quantile=float(quantile), method="teacher_forced", alpha=s.alpha,
                                 level=math.nan, passes=s.passes, seconds=s.seconds, n_generate=n_generate, continuations=1,
                                 at_jump=False))  # fmt: skip
    table = pd.DataFrame(rows, columns=BUDGET_TABLE_COLUMNS[:-1])
    exact = table[table["method"] == "exact"].set_index(["divergence", "eps"])["alpha"]
    key = pd.MultiIndex.from_frame(table[["divergence", "eps"]])
    table["ratio_to_exact"] = table["alpha"].to_numpy() / exact.reindex(key).to_numpy() if len(exact) else math.nan
    return table[BUDGET_TABLE_COLUMNS]


def teacher_forced_gap(
    model, texts, layer, v, eps: float = 1.0, quantile: float = 0.95, n_generate: int = 16, divergence: str = "steered_base",
    rtol: float = 1e-4, add_special_tokens: bool | None = None,
) -> dict[str, float]:  # fmt: skip
    """How far the teacher-forced closed form on the prompts alone is from the generated-text exact budget.

    Returns `teacher_forced` (`steering_scale(..., method="closed")` on the prompts), `exact` (`generated_scale`'s
    exact α), `ratio` (their quotient) and `level_at_teacher_forced` (the generated-text quantile of KL at the
    teacher-forced α: what the iso-KL tool would measure there, against the target ε).
    """
    tf = steering_scale(model, texts, layer, v, eps=eps, quantile=quantile, method="closed", add_special_tokens=add_special_tokens)
    exact = generated_scale(model, texts, layer, v, eps=eps, quantile=quantile, n_generate=n_generate, method="exact",
                            divergence=divergence, rtol=rtol, add_special_tokens=add_special_tokens, measure_level=False)  # fmt: skip
    level = math.nan
    if math.isfinite(tf.alpha):
        level = population_quantile(generated_kl(model, texts, layer, v, tf.alpha, n_generate, divergence, add_special_tokens), quantile)
    return dict(teacher_forced=tf.alpha, exact=exact.alpha, ratio=tf.alpha / exact.alpha, level_at_teacher_forced=level)


__all__ = [
    "DIVERGENCES", "GENERATED_METHODS", "GeneratedScale", "generate_continuations", "generated_budgets", "generated_kl",
    "generated_scale", "teacher_forced_gap",
]  # fmt: skip
