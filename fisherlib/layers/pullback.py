"""The study at every layer: the Fisher metric pulled back through the network to the residual stream.

At layer ℓ the logits of a position are a function `z(r_ℓ)` of its residual stream `r_ℓ` through the
remaining blocks, the final norm and the head. The Fisher metric pulled back to `r_ℓ` is
`G_ℓ = J_ℓᵀ F J_ℓ` (`J_ℓ = ∂z/∂r_ℓ`, `F = diag p − ppᵀ` in logit space), and along `r_ℓ + t u`

    uᵀ G_ℓ u = Var_p[a],   a = dz/dt at t = 0   (one forward-mode Jacobian-vector product).

`layer` is an int `0 … n_layers`, the residual stream entering block `layer` (`n_layers`: after the last
block, before the final norm), or `"head"`, the LM head's input `h` of the rest of the study.

How it runs (`fisherlib.layers.engine`): a position's prefix cannot see a perturbation of its target
token's residual, so the prefix's keys and values are computed once and reused, and every evaluation
forwards copies of the target token only, many perturbations per pass. Tangents ride along as forward-mode
dual numbers; `layer_fisher_eigh` adds one reverse-mode pass per block of vectors. The line searches run
in float64 on logits cast right after the forward pass.

Shapes: `P` positions, `D` directions per position, `E` thresholds ε, `V` vocabulary, `d` width.
"""

from __future__ import annotations

import math

import torch

from ..core.boundary import DIVERGENCES, empirical_boundary
from .engine import (
    HEAD,
    Prefix,
    check_layer,
    contexts_of,
    default_layers,
    full_context_logits,
    hook_module,
    jvp_logits,
    n_layers,
    network_of,
    pack,
    prefixes,
    query_budget,
)

__all__ = [
    "HEAD", "T_MAX_FACTOR", "check_layer", "default_layers", "full_context_logits", "layer_boundary", "layer_curvature",
    "layer_fisher_eigh", "layer_residuals", "layer_velocities", "n_layers",
]  # fmt: skip

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of per-copy work arrays in one forward pass
T_MAX_FACTOR = 100.0  # default search cap at inner layers, times ‖r_ℓ‖: past it the normalised input is within 1% of u
_MAX_REFINE = 64
_HUGE_T = 1e150


# --- divergences along a line -----------------------------------------------------------------------


def _divergence(log_p: torch.Tensor, z0: torch.Tensor, z: torch.Tensor, zdot: torch.Tensor, divergence: str):
    """Return the divergence between `p` and `q = softmax(z)` and its derivative along `zdot`, `[N]` each.

    `log_p, z0 [N, V]` at t = 0; `z, zdot [N, V]` at t. Forward: `lse(log p + Δ) − E_p[Δ]`, Δ = z − z0
    (the logits' common shift cancels), with derivative `E_q[ż] − E_p[ż]`; reverse: `Σ q (log q − log p)`,
    derivative `Cov_q(ż, log q − log p)`.
    """
    delta = z - z0
    x = log_p + delta
    lse = torch.logsumexp(x, -1, keepdim=True)
    log_q = x - lse
    q = log_q.exp()
    p = log_p.exp()
    if divergence == "forward":
        value = lse[:, 0] - (p * delta).sum(-1)
        slope = (q * zdot).sum(-1) - (p * zdot).sum(-1)
    else:
        gap = log_q - log_p
        value = (q * gap).sum(-1)
        slope = (q * zdot * gap).sum(-1) - (q * zdot).sum(-1) * value
    return value.clamp_min(0), slope


# --- public API -------------------------------------------------------------------------------------


def layer_residuals(model, sample, layer, batch_size: int = 16) -> torch.Tensor:
    """Return `r [P, d]`, the residual stream at `layer` at each position's target token.

    `model` is a `LoadedModel` or a causal LM; `sample` a `PositionSample` (its `context_ids`), a list of
    1-D token-id tensors (each a context through its target) or a `Prefilled`. At `"head"` this is the
    sample's `h`. Returned in the model's dtype, at least float32, on the CPU.
    """
    network = network_of(model)
    hook = hook_module(network, check_layer(model, layer))
    parts = []
    for _, prefix in prefixes(model, sample, batch_size):
        rows = torch.arange(len(prefix), device=prefix.device)
        zeros = torch.zeros(len(prefix), 1, 1, dtype=prefix.dtype, device=prefix.device)
        with torch.no_grad():
            _, (r,) = prefix.forward(hook, rows, zeros, capture=[hook])
        parts.append(r[:, 0].to(torch.promote_types(r.dtype, torch.float32)).cpu())
    return torch.cat(parts)


def layer_velocities(
    model,
    sample,
    layer,
    U: torch.Tensor,
    batch_size: int = 16,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    return_logits: bool = False,
):
    """Return `A [P, D, V]` float64: the logit velocities `dz/dt` at `t = 0` along `r_ℓ + t u`.

    `U [P, D, d]` are unit directions (used as given). One forward-mode JVP through the rest of the
    network per direction, never a `V × d` Jacobian; at `"head"` this is `W u`. With `return_logits`,
    also the unperturbed logits `z [P, V]` (float64), so that `uᵀG_ℓu = Var_p[a]` needs nothing else.
    `layer_curvature` gives the curvatures without holding all of `A`.
    """
    parts = list(_chunk_velocities(model, sample, layer, U, batch_size, memory_budget))
    A = torch.cat([a for _, a, _ in parts])
    return (A, torch.cat([z for _, _, z in parts])) if return_logits else A


def layer_curvature(
    model, sample, layer, U: torch.Tensor, top_k: int | None = None, batch_size: int = 16, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> dict[str, torch.Tensor]:
    """Return per line `[P, D]` (float64, CPU): `curv = uᵀG_ℓu = Var_p[a]`, `curv_topk` (the study's top-k
    truncation of F inside G, with `top_k`), and `top2_gap = a_b − a_a` (a, b the two most probable tokens:
    positive when `u` pushes toward swapping them); also `logits [P, V]`. One chunk of velocities at a time."""
    from ..core.fisher import curvature

    out: dict[str, list[torch.Tensor]] = {"curv": [], "curv_topk": [], "top2_gap": [], "logits": []}
    for _, A, z in _chunk_velocities(model, sample, layer, U, batch_size, memory_budget):
        p = torch.softmax(z, -1)
        top2 = torch.topk(z, 2, dim=-1).indices[:, None, :].expand(-1, A.shape[1], -1)
        out["curv"].append(curvature(p, A).cpu())
        out["curv_topk"].append(curvature(p, A, top_k=top_k).cpu() if top_k else torch.zeros(A.shape[:2], dtype=torch.float64))
        out["top2_gap"].append((A.gather(2, top2[..., 1:]) - A.gather(2, top2[..., :1]))[..., 0].cpu())
        out["logits"].append(z.cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def layer_fisher_matrix(
    model, sample, layer, width: int, batch_size: int = 16, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> torch.Tensor:
    """Return the pulled-back metric `G_ℓ = J_ℓᵀ F J_ℓ [P, d, d]` densely (float64, CPU).

    `width` is `d`. One JVP per column of the identity (`d` per position): the velocities `A [d, V]` of
    the basis give `G = A diag(p) Aᵀ − (A p)(A p)ᵀ`, the covariance under `p` of the logit velocities,
    so `uᵀGu = Var_p[a]` as `layer_curvature`. For the full spectrum (effective rank); the study's
    measurements use the matrix-free `layer_fisher_eigh` and `layer_curvature`.
    """
    n_positions = len(contexts_of(sample))
    eye = torch.eye(width, dtype=torch.float64)
    parts = []
    for _, A, z in _chunk_velocities(model, sample, layer, eye.expand(n_positions, width, width), batch_size, memory_budget):
        p = torch.softmax(z, -1)
        mean = torch.einsum("bdv,bv->bd", A, p)
        G = torch.einsum("bdv,bv,bev->bde", A, p, A) - mean[:, :, None] * mean[:, None, :]
        parts.append((0.5 * (G + G.transpose(1, 2))).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, width, width, dtype=torch.float64)


def layer_velocity_chunks(model, sample, layer, U: torch.Tensor, batch_size: int = 16, memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """Yield `(positions [B], A [B, D, V], z [B, V])` per chunk of positions: `layer_velocities` without holding all of `A`."""
    yield from _chunk_velocities(model, sample, layer, U, batch_size, memory_budget)


def _chunk_velocities(model, sample, layer, U, batch_size, memory_budget):
    """Yield `(positions [B], A [B, D, V], z [B, V])` per chunk of positions: velocities and logits, float64."""
    network = network_of(model)
    layer = check_layer(model, layer)
    n_positions = len(contexts_of(sample))
    U = torch.as_tensor(U)
    if U.dim() != 3 or U.shape[0] != n_positions:
        raise ValueError(f"U must be [P, D, d] with P = {n_positions} positions, got {tuple(U.shape)}")
    hook = hook_module(network, layer)
    vocab = network.get_output_embeddings().weight.shape[0]
    max_queries = query_budget(network, vocab, U.shape[-1], memory_budget)
    D, width = U.shape[1], U.shape[2]
    with torch.no_grad():
        for chunk, prefix in prefixes(model, sample, batch_size):
            U_lines = U[chunk].reshape(-1, width).to(prefix.device).double()
            A = torch.empty(len(chunk), D, vocab, dtype=torch.float64, device=prefix.device)
            # The unperturbed logits from one copy per position (also when there are no directions).
            zeros = torch.zeros(len(chunk), 1, width, dtype=torch.float64, device=prefix.device)
            z, _, _ = jvp_logits(prefix, hook, torch.arange(len(chunk), device=prefix.device), zeros)
            row_of = torch.arange(len(chunk)).repeat_interleave(D)
            for rows, local, slot, items in pack(row_of, max_queries):
                tangent = torch.zeros(len(rows), int(slot.max()) + 1, width, dtype=torch.float64, device=prefix.device)
                tangent[local, slot] = U_lines[items]
                _, derivative, _ = jvp_logits(prefix, hook, rows.to(prefix.device), torch.zeros_like(tangent), tangent)
                A.view(-1, vocab)[items.to(prefix.device)] = derivative[local, slot]
            yield chunk, A, z[:, 0]


def layer_boundary(
    model,
    sample,
    layer,
    U: torch.Tensor,
    eps,
    divergence: str = "forward",
    rtol: float = 1e-6,
    t_max: float | None = None,
    scan_ratio: float = 2**0.5,
    batch_size: int = 16,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    return_info: bool = False,
    _generic: bool = False,
):
    """Return `t_emp [P, D, E]` float64: the smallest `t > 0` at which the divergence along `r_ℓ + t u` reaches ε.

    `inf` marks a censored line: zero curvature (`Var_p[a] = 0`), or no crossing up to `t_max` (default:
    unbounded at `"head"`, `T_MAX_FACTOR · ‖r_ℓ‖` at inner layers, where normalisation makes the
    divergence saturate). Only the target token is forwarded; the prefix's keys and values are computed
    once per chunk of `batch_size` positions.

    At `"head"` the logits are affine in `t`, `z + t W u`, so the root is that of `empirical_boundary`
    on the JVP velocities. At inner layers the divergence need not be monotone in `t`: a geometric scan
    (ratio `scan_ratio`, from a quarter of the smallest closed-form `t_pred`) brackets the first
    crossing of each ε, then a safeguarded Newton iteration (JVP slopes, bisection fallback) solves it to
    relative accuracy `rtol` (float64 line search; the model's dtype sets the attainable accuracy: about
    1e-6 in float64, 1e-4 in float32). A crossing that enters and leaves ε between two scan points is
    missed; `return_info` adds `nonmonotone [P, D]` (the divergence fell somewhere along the scan) and
    `unconverged [P, D, E]` (the refinement stopped at its iteration cap) to the result.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, not {divergence!r}")
    if rtol <= 0:
        raise ValueError("rtol must be positive")
    if scan_ratio <= 1:
        raise ValueError("scan_ratio must exceed 1")
    eps = torch.as_tensor(eps, dtype=torch.float64).reshape(-1)
    if eps.numel() == 0 or (eps <= 0).any() or not torch.isfinite(eps).all():
        raise ValueError("every ε must be a positive finite number")
    network = network_of(model)
    layer = check_layer(model, layer)
    contexts = contexts_of(sample)
    U = torch.as_tensor(U)
    if U.dim() != 3 or U.shape[0] != len(contexts):
        raise ValueError(f"U must be [P, D, d] with P = {len(contexts)} positions, got {tuple(U.shape)}")
    P, D, width = U.shape
    E = eps.numel()
    t_emp = torch.full((P, D, E), math.inf, dtype=torch.float64)
    nonmonotone = torch.zeros(P, D, dtype=torch.bool)
    unconverged = torch.zeros(P, D, E, dtype=torch.bool)
    hook = hook_module(network, layer)
    vocab = network.get_output_embeddings().weight.shape[0]
    max_queries = query_budget(network, vocab, width, memory_budget)

    with torch.no_grad():
        for chunk, prefix in prefixes(model, sample, batch_size):
            U_lines = U[chunk].reshape(-1, width).to(prefix.device).double()
            line_row = torch.arange(len(chunk)).repeat_interleave(D)
            # t = 0: the logits, the velocities (curvature) and the residual's norm, in one pass.
            z0 = torch.empty(len(chunk), vocab, dtype=torch.float64, device=prefix.device)
            A0 = torch.empty(len(line_row), vocab, dtype=torch.float64, device=prefix.device)
            r_norm = torch.empty(len(chunk), dtype=torch.float64, device=prefix.device)
            for rows, local, slot, items in pack(line_row, max_queries):
                tangent = torch.zeros(len(rows), int(slot.max()) + 1, width, dtype=torch.float64, device=prefix.device)
                tangent[local, slot] = U_lines[items]
                logits, derivative, [(r, _)] = jvp_logits(
                    prefix, hook, rows.to(prefix.device), torch.zeros_like(tangent), tangent, capture=[hook]
                )
                z0[rows] = logits[:, 0]
                A0[items] = derivative[local, slot]
                r_norm[rows] = r[:, 0].norm(dim=-1)
            if layer == HEAD and not _generic:
                # Affine logits: the exact one-dimensional problem of the rest of the study.
                t = empirical_boundary(z0, A0.reshape(len(chunk), D, vocab), eps.to(prefix.device), divergence, rtol=rtol, t_max=t_max)
                t_emp[chunk] = t.cpu()
                continue
            log_p = torch.log_softmax(z0, -1)
            curv = (log_p.exp()[line_row] * (A0 - (log_p.exp()[line_row] * A0).sum(-1, keepdim=True)) ** 2).sum(-1)
            cap = torch.full_like(curv, math.inf if t_max is None else float(t_max))
            if t_max is None and layer != HEAD:
                cap = T_MAX_FACTOR * r_norm[line_row]

            def evaluate(lines: torch.Tensor, t: torch.Tensor, slopes: bool = True):
                return _evaluate(prefix, hook, U_lines, line_row, z0, log_p, lines, t, divergence, max_queries, slopes)

            t, flat, stuck = _first_crossing(evaluate, curv, cap, eps.to(prefix.device), rtol, scan_ratio)
            t_emp[chunk] = t.reshape(len(chunk), D, E).cpu()
            nonmonotone[chunk] = flat.reshape(len(chunk), D).cpu()
            unconverged[chunk] = stuck.reshape(len(chunk), D, E).cpu()
    if return_info:
        return t_emp, dict(nonmonotone=nonmonotone, unconverged=unconverged)
    return t_emp


def _evaluate(prefix, hook, U_lines, line_row, z0, log_p, lines, t, divergence, max_queries, slopes=True):
    """Return the divergence and (with `slopes`, else None) its derivative `[N]` at steps `t [N]` along `lines [N]`."""
    value = torch.empty(len(lines), dtype=torch.float64, device=z0.device)
    slope = torch.empty_like(value) if slopes else None
    rows_of_items = line_row[lines.cpu()]
    width = U_lines.shape[-1]
    for rows, local, slot, items in pack(rows_of_items, max_queries):
        M = int(slot.max()) + 1
        delta = torch.zeros(len(rows), M, width, dtype=torch.float64, device=z0.device)
        u = U_lines[lines[items]]
        delta[local, slot] = t[items, None] * u
        tangent = None
        if slopes:
            tangent = torch.zeros_like(delta)
            tangent[local, slot] = u
        logits, derivative, _ = jvp_logits(prefix, hook, rows.to(z0.device), delta, tangent)
        r = rows.to(z0.device)[local]
        z = logits[local, slot]
        zdot = derivative[local, slot] if slopes else torch.zeros_like(z)
        v, s = _divergence(log_p[r], z0[r], z, zdot, divergence)
        value[items] = v
        if slopes:
            slope[items] = s
    return value, slope


def _first_crossing(evaluate, curv, cap, eps, rtol, scan_ratio, steps_per_round: int = 8):
    """Solve `D(t) = ε` at the first crossing for every line `[L]` and ε `[E]`; return `(t [L, E], nonmonotone [L], unconverged [L, E])`.

    Scan: `t_j = ¼ t_pred(ε_min) · ratio^j` in rounds of `steps_per_round`, every live line together,
    until the divergence reaches the largest ε or `t` passes the line's cap; the first scan point at or
    above ε and the one before it bracket ε's first crossing. Refine: Newton on `sqrt(2D)` (near linear
    in `t`) and on `D`, kept inside the bracket, with bisection where Newton leaves it or stops halving.
    """
    device = curv.device
    L, E = len(curv), len(eps)
    order = torch.argsort(eps)
    eps_sorted = eps[order]
    t_out = torch.full((L, E), math.inf, dtype=torch.float64, device=device)
    unconverged = torch.zeros(L, E, dtype=torch.bool, device=device)
    nonmonotone = torch.zeros(L, dtype=torch.bool, device=device)
    usable = (curv > 0) & torch.isfinite(curv)
    start = 0.25 * torch.sqrt(2 * eps_sorted[0] / torch.where(usable, curv, torch.ones_like(curv)))
    lo = torch.zeros(L, E, dtype=torch.float64, device=device)
    hi = torch.full((L, E), math.inf, dtype=torch.float64, device=device)
    v_lo = torch.zeros(L, E, dtype=torch.float64, device=device)
    v_hi = torch.full((L, E), math.inf, dtype=torch.float64, device=device)
    last_t = torch.zeros(L, dtype=torch.float64, device=device)
    last_v = torch.zeros(L, dtype=torch.float64, device=device)
    live = usable.clone()
    j = 0
    while live.any():
        lines = torch.nonzero(live).flatten()
        powers = scan_ratio ** torch.arange(j, j + steps_per_round, dtype=torch.float64, device=device)
        t_grid = start[lines, None] * powers  # [n, S]
        values, _ = evaluate(lines.repeat_interleave(steps_per_round), t_grid.reshape(-1), slopes=False)
        values = values.reshape(len(lines), steps_per_round)
        prev_t = torch.cat([last_t[lines, None], t_grid[:, :-1]], 1)
        prev_v = torch.cat([last_v[lines, None], values[:, :-1]], 1)
        # Past the cap a step does not count.
        inside = t_grid <= torch.minimum(cap[lines], torch.tensor(_HUGE_T, device=device))[:, None]
        # A fall before the divergence first reaches the largest ε could hide an earlier crossing.
        before_top = torch.cumsum((values >= eps_sorted[-1]).long(), 1) == 0
        nonmonotone[lines] |= ((values < prev_v) & inside & before_top).any(1)
        open_ = torch.isinf(hi[lines])  # [n, E]: not yet bracketed
        crossed = (values[:, None, :] >= eps_sorted[None, :, None]) & inside[:, None, :]  # [n, E, S]
        has = crossed.any(-1) & open_
        first = crossed.long().argmax(-1)  # [n, E]
        take = lambda x: torch.gather(x[:, None, :].expand(-1, E, -1), 2, first[..., None])[..., 0]  # noqa: E731
        lo[lines] = torch.where(has, take(prev_t), lo[lines])
        v_lo[lines] = torch.where(has, take(prev_v), v_lo[lines])
        hi[lines] = torch.where(has, take(t_grid), hi[lines])
        v_hi[lines] = torch.where(has, take(values), v_hi[lines])
        last_t[lines] = t_grid[:, -1]
        last_v[lines] = values[:, -1]
        done = ~torch.isinf(hi[lines]).any(1) | ~inside[:, -1]
        live[lines[done]] = False
        j += steps_per_round

    # Refinement of every bracketed (line, ε).
    items = torch.nonzero(torch.isfinite(hi))
    line, e = items[:, 0], items[:, 1]
    target = eps_sorted[e]
    a, b, fa, fb = lo[line, e], hi[line, e], v_lo[line, e], v_hi[line, e]
    root_target = torch.sqrt(2 * target)
    ga, gb = torch.sqrt(2 * fa), torch.sqrt(2 * fb)
    # Secant on sqrt(2D), which is close to linear in t: a start accurate to second order in the bracket.
    t = a + (root_target - ga) / torch.where(gb > ga, gb - ga, torch.ones_like(ga)) * (b - a)
    t = torch.where((t > a) & (t < b), t, (a + b) / 2)
    result = torch.full_like(t, math.inf)
    pending = torch.ones_like(t, dtype=torch.bool)
    last_step = torch.full_like(t, math.inf)
    step_before = torch.full_like(t, math.inf)
    nan = torch.tensor(math.nan, dtype=torch.float64, device=device)
    for _ in range(_MAX_REFINE):
        if not pending.any():
            break
        idx = torch.nonzero(pending).flatten()
        value, slope = evaluate(line[idx], t[idx])
        tt, aa, bb, goal, goal_root = t[idx], a[idx], b[idx], target[idx], root_target[idx]
        below = value < goal
        aa = torch.where(below, tt, aa)
        bb = torch.where(below, bb, tt)
        root = torch.sqrt(2 * value)
        g_slope = slope / torch.where(root > 0, root, torch.ones_like(root))
        newton_root = tt - (root - goal_root) / torch.where(g_slope > 0, g_slope, nan)
        newton_plain = tt - (value - goal) / torch.where(slope > 0, slope, nan)
        first, second = torch.where(below, newton_root, newton_plain), torch.where(below, newton_plain, newton_root)

        def in_bracket(x):
            return torch.isfinite(x) & (x > aa) & (x < bb)

        newton = torch.where(in_bracket(first), first, second)
        step = torch.abs(newton - tt)
        cycling = step > 0.5 * step_before[idx]
        use_newton = in_bracket(newton) & ~cycling
        step_before[idx] = last_step[idx]
        last_step[idx] = torch.where(use_newton, step, math.inf)
        t_next = torch.where(use_newton, newton, (aa + bb) / 2)
        # Newton's error after a step is about (step/t)² in relative terms: a step below 0.01·sqrt(rtol)·t
        # leaves an error near 1e-4·rtol.
        tiny = torch.isfinite(newton) & in_bracket(newton) & (step <= 1e-2 * math.sqrt(rtol) * tt)
        # A bracket this narrow pins the root to 0.05·rtol whichever point of it is taken.
        narrow = (bb - aa) <= 0.1 * rtol * aa
        finished = tiny | narrow
        settled = torch.where(in_bracket(newton), newton, (aa + bb) / 2)
        result[idx] = torch.where(finished, settled, result[idx])
        t[idx], a[idx], b[idx] = t_next, aa, bb
        pending[idx] = ~finished
    # Lines that hit the iteration cap keep their bracket's midpoint and are flagged.
    result = torch.where(pending, (a + b) / 2, result)
    t_out[line, e] = result
    unconverged[line, e] = pending
    # Back to the caller's order of ε.
    inverse = torch.argsort(order)
    return t_out[:, inverse], nonmonotone, unconverged[:, inverse]


def layer_fisher_eigh(
    model,
    sample,
    layer,
    k: int = 7,
    top_k: int | None = None,
    tol: float | None = None,
    block: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the top `k` eigenpairs of `G_ℓ = J_ℓᵀ F J_ℓ`: eigenvalues `[P, k]` (descending) and eigenvectors `[P, k, d]`.

    Matrix-free: block Krylov iteration with Rayleigh–Ritz on products `G v`, each one JVP (`J v`,
    forward mode) and one VJP (`J_ℓᵀ (F J v)`, reverse mode), a block of `block` (default `2k`)
    vectors at once. It stops when every wanted Ritz pair's residual
    `‖G x − λ x‖` is below `tol · λ₁` (default 1e-10 in float64, 1e-5 otherwise) or the Krylov basis
    spans all of `R^d` (then the result is exact). `top_k` uses the study's truncated `F_k` (p_K not
    renormalised) instead of `F`. Eigenvector signs are arbitrary. Float64 results, on the CPU.
    """
    network = network_of(model)
    layer = check_layer(model, layer)
    contexts = contexts_of(sample)
    hook = hook_module(network, layer)
    dtype = next(network.parameters()).dtype
    tol = (1e-10 if dtype == torch.float64 else 1e-5) if tol is None else tol
    eigvals, eigvecs = [], []
    generator = torch.Generator().manual_seed(seed)
    for chunk, prefix in prefixes(model, sample, batch_size):
        rows = torch.arange(len(prefix), device=prefix.device)
        with torch.no_grad():
            logits, [r] = prefix.forward(hook, rows, torch.zeros(len(prefix), 1, 1, dtype=prefix.dtype, device=prefix.device), capture=[hook])
        width = r.shape[-1]
        p = torch.softmax(logits[:, 0].double(), -1)
        if top_k is not None:
            keep = torch.zeros_like(p, dtype=torch.bool).scatter_(1, torch.topk(p, min(top_k, p.shape[-1]), -1).indices, True)
            p = torch.where(keep, p, torch.zeros_like(p))

        def apply(Q: torch.Tensor) -> torch.Tensor:  # [R, d, b] -> G Q
            return _fisher_products(prefix, hook, rows, p, Q)

        start = torch.randn(len(prefix), width, block or min(width, 2 * k), dtype=torch.float64, generator=generator)
        values, vectors = _block_krylov(apply, start.to(prefix.device), k, tol)
        eigvals.append(values.cpu())
        eigvecs.append(vectors.transpose(1, 2).cpu())
    return torch.cat(eigvals), torch.cat(eigvecs)


def _fisher_products(prefix: Prefix, hook, rows, p: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Return `G Q [R, d, b]` for `Q [R, d, b]`: `J Q` by forward mode, then `Jᵀ(F J Q)` by reverse mode.

    Two passes: a reverse pass through a graph of dual tensors would need forward-mode rules for the
    backward kernels (SiLU's has none).
    """
    tangent = Q.transpose(1, 2).to(prefix.dtype)  # [R, b, d]: one copy of the target token per vector
    with torch.no_grad():
        _, jv, _ = jvp_logits(prefix, hook, rows, torch.zeros_like(tangent), tangent)
    pp = p[:, None, :]
    # F y = diag(p) y − p (pᵀ y), zero where p is (with top_k) truncated away.
    fjv = pp * jv - pp * (pp * jv).sum(-1, keepdim=True)
    base = torch.zeros_like(tangent, requires_grad=True)
    with torch.enable_grad():
        logits, _ = prefix.forward(hook, rows, base)
        (grad,) = torch.autograd.grad(logits, base, fjv.to(logits.dtype))
    return grad.double().transpose(1, 2)


def _block_krylov(apply, start: torch.Tensor, k: int, tol: float, max_dim: int | None = None):
    """Return the top `k` eigenpairs `([R, k], [R, d, k])` of symmetric PSD operators given by `apply`."""
    R, d, b = start.shape
    k = min(k, d)
    max_dim = d if max_dim is None else max_dim
    Q, _ = torch.linalg.qr(start)
    basis, images = [Q], []
    while True:
        images.append(apply(basis[-1]))
        Qall, GQ = torch.cat(basis, -1), torch.cat(images, -1)
        H = Qall.transpose(1, 2) @ GQ
        H = (H + H.transpose(1, 2)) / 2
        values, Y = torch.linalg.eigh(H)
        values, Y = values.flip(-1)[:, :k], Y.flip(-1)[:, :, :k]
        X = Qall @ Y
        residual = (GQ @ Y - X * values[:, None, :]).norm(dim=1)
        scale = values[:, :1].abs().clamp_min(torch.finfo(torch.float64).tiny)
        m = Qall.shape[-1]
        if bool((residual <= tol * scale).all()) or m >= max_dim:
            return values.clamp_min(0), X
        basis.append(_extend_basis(Qall, images[-1][..., : min(b, max_dim - m)]))


def _extend_basis(Q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Return orthonormal columns `[R, d, c]` orthogonal to `Q [R, d, m]`, spanning `candidates [R, d, c]` where they can.

    Column by column (Gram–Schmidt, twice): a candidate that has (nearly) nothing left outside the span
    built so far, because the basis already holds an invariant subspace, is replaced by a random
    direction, so the basis keeps growing until it spans R^d. Block QR would instead amplify rounding
    noise of nearly dependent columns into directions that are not orthogonal to `Q`.
    """
    columns: list[torch.Tensor] = []
    for j in range(candidates.shape[-1]):
        v = candidates[..., j : j + 1]
        size = v.norm(dim=1, keepdim=True)
        span = torch.cat([Q, *columns], -1)
        v = _orthogonalise(v, span)
        weak = v.norm(dim=1, keepdim=True) <= 1e-8 * size
        if weak.any():
            v = torch.where(weak, _orthogonalise(torch.randn_like(v), span), v)
        columns.append(v / v.norm(dim=1, keepdim=True))
    return torch.cat(columns, -1)


def _orthogonalise(X: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Return `X [R, d, b]` with its components along the orthonormal columns of `Q [R, d, m]` removed (twice)."""
    for _ in range(2):
        X = X - Q @ (Q.transpose(1, 2) @ X)
    return X


