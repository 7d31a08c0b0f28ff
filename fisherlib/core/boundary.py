"""The empirical KL boundary: the distance `t` along `h + t u` at which `KL(p ‖ q_t)` reaches ε.

With `c = a − E_p[a]` the centred logit velocity (`a = W u`), the forward divergence is the cumulant
generating function of `c` under `p`,

    K(t) = KL(p ‖ q_t) = log E_p[exp(t c)],   K′ = E_{q_t}[c],   K″ = Var_{q_t}[c],

and the reverse divergence is `R(t) = KL(q_t ‖ p) = t K′(t) − K(t)` with `R′ = t K″`. Both are exact
in terms of the logits `z` and `a`; nothing is recomputed through `W`. The root is found in float64 by
a bracketed Newton iteration on `sqrt(2·D(t))`, which is close to linear in `t` (slope `sqrt(uᵀFu)`),
started at the closed form `t_pred`; lines that converged leave the active set.

Accuracy at extreme probabilities: where `p_top1 ≥ 1 − 1e-11` the boundary can lie at `t ≈ 1e7…1e11`,
and `K(t) ≈ t c_top1` with `c_top1 = a_top1 − E_p[a]` a difference of two nearly equal numbers. The
centring is therefore compensated (the corrected two-pass mean): the rounding error of `E_p[a]` is
measured as `E_p[c]` and removed, so `c` is exact to ~1e-16 of `E_p|c|` rather than of `max |a|`.
Checked against 60-digit mpmath in tests/core/test_boundary_precision.py.

Inputs may carry autograd (`A = W @ u` with `W` a model parameter): every public function works
under `torch.no_grad()` and returns tensors without a graph.

Shapes: `z [P, V]`, `A [P, D, V]`, `t` or result `[P, D, E]`.

Inputs follow the conventions of `fisherlib.core.checks` (as in `fisherlib.core.fisher`): tensors or numpy
arrays (converted with `torch.as_tensor`), and one `fisherlib.core.errors.InputError` (a ValueError) before
any work for a wrong type, dtype or shape, NaN or inf (the logits `z` may hold −inf for a token ruled
out, but no NaN, no +inf, and a finite maximum per row), and ε, `rtol` or `t_max` that are not positive.
A NaN logit or velocity is an error, never a censored (`inf`) line.
"""

from __future__ import annotations

import math

import torch

from . import checks
from .errors import InputError
from .fisher import _no_grad

DIVERGENCES = ("forward", "reverse")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of work arrays per chunk where the caller fixes it (here float64 lines; layers: per-copy arrays of a pass)
_AUTO_BUDGET_FRACTION = 0.25  # of the free memory of the device, for `memory_budget=None`
_AUTO_BUDGET_RANGE = (64 << 20, 16 << 30)  # bytes: never below 64 MiB nor above 16 GiB
_FLOAT64_BYTES = 8
_LINE_ARRAYS = 6  # float64 `[lines, V]` arrays per chunk besides the `[lines, E, V]` work array
_MAX_ITERATIONS = 200
HUGE_T = 1e150  # past this, t·c overflows float64 exponent arithmetic: treat as no boundary


def _check_divergence(divergence: str) -> None:
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise InputError(f"divergence must be one of {DIVERGENCES}, not {divergence!r}")


def _check_lines(z, A) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `z [P, V]` and `A [P, D, V]` checked: float tensors (numpy converted) that match, finite, on one device."""
    device = checks.device_of(z, A)
    z = checks.tensor("z", z, "[P, V]", device=device, finite="logits")
    A = checks.tensor("A", A, "[P, D, V]", device=device)
    checks.check_shapes(("z", z, "[P, V]"), ("A", A, "[P, D, V]"))
    checks.check_same_device(("z", z), ("A", A))
    return z, A


def resolve_memory_budget(device: torch.device | str | None = None, budget: int | None = None) -> int:
    """Return the bytes of float64 work arrays a chunk may use on `device`: `budget`, else a quarter of free memory.

    The free memory is CUDA's `mem_get_info` on a GPU, `MemAvailable` of /proc/meminfo on the CPU; the
    automatic budget is kept between 64 MiB and 16 GiB (1 GiB where free memory cannot be read).
    """
    if budget is not None:
        return int(checks.check_number("memory_budget", budget, lambda x: 1 <= x < math.inf, "a positive number of bytes"))
    device = torch.device("cpu" if device is None else device)
    free = None
    try:
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024
                        break
    except (OSError, RuntimeError, ValueError):
        free = None
    if free is None:
        return DEFAULT_MEMORY_BUDGET
    low, high = _AUTO_BUDGET_RANGE
    return int(min(max(_AUTO_BUDGET_FRACTION * free, low), high))


def _centred_velocities(log_p: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Return `c = a − E_p[a]` `[L, V]` in float64 for `log_p [L, V]` and `A [L, V]`.

    Corrected two-pass centring: `E_p[c]` after the first pass is the rounding error of the first
    mean (~1e-16·max|a|), and subtracting it leaves `c` exact to ~1e-16·E_p|c|. Near-deterministic
    `p` needs this: `K(t) ≈ t·c_top1` there, with `c_top1` tiny and `t` up to 1e11.
    """
    p = log_p.exp()
    c = A.double() - (p * A.double()).sum(-1, keepdim=True)
    return c.sub_((p * c).sum(-1, keepdim=True))


def _line_statistics(log_p: torch.Tensor, c: torch.Tensor, t: torch.Tensor, divergence: str, work: torch.Tensor | None = None):
    """Return `(D(t), D′(t))` `[L, E]` for lines `log_p, c [L, V]` at steps `t [L, E]`.

    One exponential per element and no `[L, E, V]` array besides `work` (reused between calls, since
    fresh pages of a large allocation cost as much as the arithmetic): the moments of `c` under `q_t`
    are batched dot products.
    """
    x = torch.addcmul(log_p[:, None, :], c[:, None, :], t[:, :, None], out=work)  # [L, E, V]
    shift = x.amax(-1, keepdim=True)
    weights = x.sub_(shift).exp_()  # q_t up to the normaliser, in place
    total = weights.sum(-1)
    K = shift[..., 0] + torch.log(total)
    K1 = (weights @ c[:, :, None])[..., 0] / total
    if divergence == "forward":
        return K, K1
    # Var_{q_t}[c] as E[c²] − E[c]²: only the Newton slope uses it, never the returned divergence.
    K2 = ((weights @ (c * c)[:, :, None])[..., 0] / total - K1**2).clamp_min(0)
    return t * K1 - K, t * K2


@_no_grad
def kl_along_line(
    z: torch.Tensor,
    A: torch.Tensor,
    t: torch.Tensor,
    divergence: str = "forward",
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Return the divergence between `p = softmax(z)` and `q_t = softmax(z + t a)` `[P, D, E]` (float64).

    `t` is `[P, D, E]` or `[E]` (the same steps on every line). `memory_budget=None`: a quarter of the
    device's free memory (see `resolve_memory_budget`). Every `t` must be finite.
    """
    _check_divergence(divergence)
    z, A = _check_lines(z, A)
    P, D, V = A.shape
    try:
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"t must be a number or a tensor [E] or [P, D, E] of steps, got {t!r}") from error
    if t.dim() == 0:
        t = t.reshape(1)
    try:
        t = t.expand(P, D, -1)
    except RuntimeError:
        raise InputError(f"t must be [E] or [P, D, E] = [{P}, {D}, E], got {tuple(t.shape)}") from None
    checks.check_finite("t", t, "[P, D, E]")
    E = t.shape[-1]
    out = torch.empty(P, D, E, dtype=torch.float64, device=z.device)
    budget = resolve_memory_budget(z.device, memory_budget)
    positions_per_chunk = max(1, budget // (_FLOAT64_BYTES * V * D * (E + 3)))
    for start in range(0, P, positions_per_chunk):
        stop = min(start + positions_per_chunk, P)
        log_p = torch.log_softmax(z[start:stop].double(), -1)
        n = stop - start
        c = _centred_velocities(log_p.repeat_interleave(D, 0), A[start:stop].reshape(n * D, V))
        value, _ = _line_statistics(log_p.repeat_interleave(D, 0), c, t[start:stop].reshape(n * D, E), divergence)
        out[start:stop] = value.reshape(n, D, E).clamp_min(0)
    return out


@_no_grad
def reverse_kl_bound(z: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Return `lim_{t→∞} KL(q_t ‖ p) = −log p(argmax_v a_v)` `[P, D]` (ties pool their mass)."""
    z, A = _check_lines(z, A)
    log_p = torch.log_softmax(z.double(), -1)[:, None, :]
    A64 = A.double()
    at_max = A64 == A64.amax(-1, keepdim=True)
    return -torch.logsumexp(torch.where(at_max, log_p, -math.inf), -1)


@_no_grad
def empirical_boundary(
    z: torch.Tensor,
    A: torch.Tensor,
    eps,
    divergence: str = "forward",
    rtol: float = 1e-6,
    t_max: float | None = None,
    memory_budget: int | None = None,
    return_iterations: bool = False,
):
    """Return `t_emp [P, D, E]` (float64): the unique `t > 0` with divergence ε, to relative accuracy `rtol`.

    `inf` marks a censored line: zero curvature (`a` constant on the support of `p`), a reverse-KL
    threshold at or above its bound `−log p(argmax a)`, or a boundary beyond `t_max`. Lines are solved
    in chunks so that no float64 `[items, V]` work array exceeds `memory_budget` bytes; the chunking does
    not change the result; `memory_budget=None` takes a quarter of the device's free memory. With
    `return_iterations`, also return the number of Newton steps per item.

    Accurate to `rtol` also at near-deterministic `p` (`p_top1 ≥ 1 − 1e-11`, boundaries at `t ≈ 1e9`):
    see the module docstring. Inputs that require grad are accepted; the result carries no graph.

    Raises:
        InputError (a ValueError): `z [P, V]` and `A [P, D, V]` of another type, dtype or shape, or that
            do not match; NaN or inf in either (−inf logits excepted, see the module docstring); an
            unknown divergence; a non-positive `rtol` or `t_max`; an ε that is not positive and finite.
    """
    _check_divergence(divergence)
    z, A = _check_lines(z, A)
    rtol = checks.check_number("rtol", rtol, lambda x: 0 < x < 1, "a number in (0, 1)")
    t_max = None if t_max is None else checks.check_number("t_max", t_max, lambda x: x > 0, "positive (or None)")
    eps = checks.check_eps(eps, z.device)
    P, D, V = A.shape
    E = eps.numel()
    log_p = torch.log_softmax(z.double(), -1)
    t_cap = math.inf if t_max is None else float(t_max)
    budget = resolve_memory_budget(z.device, memory_budget)

    result = torch.full((P * D, E), math.inf, dtype=torch.float64, device=z.device)
    iterations = torch.zeros((P * D, E), dtype=torch.int64, device=z.device)
    lines_per_chunk = max(1, budget // (_FLOAT64_BYTES * V * (E + _LINE_ARRAYS)))
    line_position = torch.arange(P, device=z.device).repeat_interleave(D)
    A_lines = A.reshape(P * D, V)
    for start in range(0, P * D, lines_per_chunk):
        stop = min(start + lines_per_chunk, P * D)
        chunk_log_p = log_p[line_position[start:stop]]
        c = _centred_velocities(chunk_log_p, A_lines[start:stop])
        t, n_iter = _solve_lines(chunk_log_p, c, eps, divergence, rtol, t_cap)
        result[start:stop] = t
        iterations[start:stop] = n_iter
    result = result.reshape(P, D, E)
    if return_iterations:
        return result, iterations.reshape(P, D, E)
    return result


def _solve_lines(log_p, c, eps, divergence, rtol, t_cap):
    """Solve `D(t) = ε` for every line of a chunk and every ε: `t [L, E]`, Newton steps `[L, E]`.

    All ε of a line are iterated together (they share `log_p` and `c`); a line leaves the working set
    once all of its ε have converged, and the working arrays are compacted when a quarter has left.
    """
    L, V = c.shape
    E = eps.numel()
    inf = math.inf
    curv = (log_p.exp() * c**2).sum(-1)  # Var_p[a], exact
    if divergence == "reverse":
        at_max = c == c.amax(-1, keepdim=True)
        bound = -torch.logsumexp(torch.where(at_max, log_p, -inf), -1)
    else:
        bound = torch.full((L,), inf, dtype=torch.float64, device=c.device)

    t_out = torch.full((L, E), inf, dtype=torch.float64, device=c.device)
    steps_out = torch.zeros((L, E), dtype=torch.int64, device=c.device)
    pending = (curv > 0)[:, None] & (eps[None, :] < bound[:, None])  # items still being solved
    rows = torch.nonzero(pending.any(-1)).flatten()  # lines in the working arrays
    if rows.numel() < L:
        log_p, c, curv, pending = log_p[rows], c[rows], curv[rows], pending[rows]

    # Working state, one entry per (working line, ε).
    target = eps[None, :].expand(rows.numel(), E)
    sqrt_target = torch.sqrt(2 * target)
    t = torch.sqrt(2 * target / curv[:, None])  # t_pred: exact to second order
    lo = torch.zeros_like(t)
    hi = torch.full_like(t, inf)
    last_step = torch.full_like(t, inf)  # |Δt| of the previous Newton step, as in rtsafe
    step_before = torch.full_like(t, inf)  # |Δt| of the Newton step before that
    steps = torch.zeros_like(t, dtype=torch.int64)
    converged = torch.zeros_like(pending)
    nan = torch.tensor(math.nan, dtype=torch.float64, device=c.device)

    work = torch.empty((rows.numel(), E, V), dtype=torch.float64, device=c.device)

    def retire(keep):
        """Write back the lines that leave the working set; keep the others."""
        leaving = ~keep
        t_out[rows[leaving]] = torch.where(converged[leaving] & (t[leaving] <= t_cap), t[leaving], inf)
        steps_out[rows[leaving]] = steps[leaving]

    for _ in range(_MAX_ITERATIONS):
        live = pending.any(-1)
        if not live.any():
            break
        if live.sum() < 0.75 * rows.numel():
            retire(live)
            rows, log_p, c, pending, converged = rows[live], log_p[live], c[live], pending[live], converged[live]
            target, sqrt_target, t, lo, hi = target[live], sqrt_target[live], t[live], lo[live], hi[live]
            last_step, step_before, steps = last_step[live], step_before[live], steps[live]
        t_now = torch.where(pending, t, torch.ones_like(t))
        value, slope = _line_statistics(log_p, c, t_now, divergence, work[: rows.numel()])
        value = value.clamp_min(0)
        steps += pending.long()
        below = value < target
        lo = torch.where(pending & below, t_now, lo)
        hi = torch.where(pending & ~below, t_now, hi)
        # Right of the root, Newton on D itself never overshoots (forward KL is convex); left of it,
        # Newton on g = sqrt(2D) − sqrt(2ε), close to linear in t, is near-exact. Each backs up the other.
        root = torch.sqrt(2 * value)
        g_slope = slope / torch.where(root > 0, root, torch.ones_like(root))
        newton_root = t_now - (root - sqrt_target) / torch.where(g_slope > 0, g_slope, nan)
        newton_plain = t_now - (value - target) / torch.where(slope > 0, slope, nan)
        first = torch.where(below, newton_root, newton_plain)
        second = torch.where(below, newton_plain, newton_root)

        def in_bracket(x):
            return torch.isfinite(x) & (x > lo) & (x < hi)

        newton = torch.where(in_bracket(first), first, second)
        step = torch.abs(newton - t_now)
        # Bisect when Newton leaves the bracket or its steps stop halving (a Newton cycle).
        cycling = torch.isfinite(hi) & (step > 0.5 * step_before)
        use_newton = in_bracket(newton) & ~cycling
        step_before = torch.where(pending, last_step, step_before)
        last_step = torch.where(pending, torch.where(use_newton, step, inf), last_step)
        # Without an upper end yet, grow by 16× (a cap or float64 overflow ends the search).
        fallback = torch.where(torch.isfinite(hi), (lo + hi) / 2, 16 * torch.maximum(t_now, lo))
        t_next = torch.where(use_newton, newton, fallback)
        # A Newton step below tolerance means the remaining error is second order in it.
        tiny_step = torch.isfinite(newton) & (step <= 1e-3 * rtol * t_now)
        t_next = torch.where(tiny_step, newton, t_next)
        finished = tiny_step | ((hi - lo) <= 1e-3 * rtol * lo)
        beyond = torch.isinf(hi) & (lo > min(t_cap, HUGE_T))
        t = torch.where(pending, torch.where(beyond, inf, t_next), t)
        converged |= pending & finished & ~beyond
        pending = pending & ~(finished | beyond)
    retire(torch.zeros_like(rows, dtype=torch.bool))
    return t_out, steps_out
