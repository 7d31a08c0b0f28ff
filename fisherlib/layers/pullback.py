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

from ..core import checks
from ..core.boundary import DEFAULT_MEMORY_BUDGET, DIVERGENCES, empirical_boundary
from ..core.directions import KRYLOV_STREAM, position_generator
from ..core.errors import InputError
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
    query_budget,
)
from .first_crossing import T_MAX_FACTOR, divergence_and_slope, first_crossing, one_pass_curvature
from .krylov import block_krylov
from .passes import prefixes

__all__ = [
    "HEAD", "T_MAX_FACTOR", "check_layer", "default_layers", "full_context_logits", "layer_boundary", "layer_curvature",
    "layer_fisher_eigh", "layer_residuals", "layer_velocities", "n_layers",
]  # fmt: skip

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


def layer_fisher_matrix(model, sample, layer, width: int, batch_size: int = 16, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
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
            for rows, local, slot, items in pack(row_of, prefix.copies_per_pass(max_queries)):
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
    on the JVP velocities. At inner layers the divergence need not be monotone in `t`. A geometric scan on
    the line's own lattice `t_j = scan_ratio^j / sqrt(curv)` (values and JVP slopes) serves every ε: ε
    reads the points from a quarter of its `t_pred` on, so its answer is the same whatever other ε, batch
    or memory budget is asked (the same points, the same arithmetic). Walking from `t = 0`, every interval
    whose ends' values and slopes leave room for a window above ε (a slope that changes sign, a value that
    falls, a Hermite interpolant or a slope bound reaching ε) is split until a point at or above ε turns up
    or the interval cannot hold one; the first crossing's bracket is then shrunk (Newton on `sqrt(2D)` and
    on `D`, bisection as safeguard) until its width is at most `rtol` times its lower end, so the answer is
    within `rtol` of a crossing, and of the first crossing wherever the scan's data can see a window (a
    bump that leaves no trace at the scan points, rising at both ends, cannot be seen). Accuracy: `rtol`
    holds in float64 (tested at 1e-6 and 1e-8; give a float64 model float64 norms too, see
    `tests/helpers/layers.py::_norms_in_model_dtype`: transformers' RMSNorm computes in float32 and caps `t`
    at ~2e-6); in float32 the logits' rounding (~1e-7) limits `t` to about 2e-5 relative whatever `rtol`
    (measured on stories260K, layers 0, 2 and 4: at most 1.7e-5).

    `return_info` adds `nonmonotone [P, D]` (the divergence fell, or a slope was negative, somewhere along
    the scan before the largest ε was reached), `unconverged [P, D, E]` (the refinement stopped at its
    iteration cap; the bracket's midpoint is returned) and `unresolved [P, D, E]` (how many intervals
    that may hold a window above ε were left after `_MAX_SPLITS` splits; the walk goes on past them).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, not {divergence!r}")
    if rtol <= 0:
        raise ValueError("rtol must be positive")
    if scan_ratio <= 1:
        raise ValueError("scan_ratio must exceed 1")
    eps = checks.check_eps(eps, None)
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
    unresolved = torch.zeros(P, D, E, dtype=torch.long)
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
            for rows, local, slot, items in pack(line_row, prefix.copies_per_pass(max_queries)):
                tangent = torch.zeros(len(rows), int(slot.max()) + 1, width, dtype=torch.float64, device=prefix.device)
                tangent[local, slot] = U_lines[items]
                logits, derivative, [(r, _)] = jvp_logits(prefix, hook, rows.to(prefix.device), torch.zeros_like(tangent), tangent, capture=[hook])
                z0[rows] = logits[:, 0]
                A0[items] = derivative[local, slot]
                r_norm[rows] = r[:, 0].norm(dim=-1)
            if layer == HEAD and not _generic:
                # Affine logits: the exact one-dimensional problem of the rest of the study.
                t = empirical_boundary(z0, A0.reshape(len(chunk), D, vocab), eps.to(prefix.device), divergence, rtol=rtol, t_max=t_max)
                t_emp[chunk] = t.cpu()
                continue
            log_p = torch.log_softmax(z0, -1)
            curv = one_pass_curvature(log_p.exp()[line_row], A0)
            cap = torch.full_like(curv, math.inf if t_max is None else float(t_max))
            if t_max is None and layer != HEAD:
                cap = T_MAX_FACTOR * r_norm[line_row]

            def evaluate(lines: torch.Tensor, t: torch.Tensor, slopes: bool = True):
                return _evaluate(prefix, hook, U_lines, line_row, z0, log_p, lines, t, divergence, max_queries, slopes)

            t, flat, stuck, left = first_crossing(evaluate, curv, cap, eps.to(prefix.device), rtol, scan_ratio)
            t_emp[chunk] = t.reshape(len(chunk), D, E).cpu()
            nonmonotone[chunk] = flat.reshape(len(chunk), D).cpu()
            unconverged[chunk] = stuck.reshape(len(chunk), D, E).cpu()
            unresolved[chunk] = left.reshape(len(chunk), D, E).cpu()
    if return_info:
        return t_emp, dict(nonmonotone=nonmonotone, unconverged=unconverged, unresolved=unresolved)
    return t_emp


def _evaluate(prefix, hook, U_lines, line_row, z0, log_p, lines, t, divergence, max_queries, slopes=True):
    """Return the divergence and (with `slopes`, else None) its derivative `[N]` at steps `t [N]` along `lines [N]`."""
    value = torch.empty(len(lines), dtype=torch.float64, device=z0.device)
    slope = torch.empty_like(value) if slopes else None
    rows_of_items = line_row[lines.cpu()]
    width = U_lines.shape[-1]
    for rows, local, slot, items in pack(rows_of_items, prefix.copies_per_pass(max_queries)):
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
        v, s = divergence_and_slope(log_p[r], z0[r], z, zdot, divergence)
        value[items] = v
        if slopes:
            slope[items] = s
    return value, slope


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
    position_ids=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the top `k` eigenpairs of `G_ℓ = J_ℓᵀ F J_ℓ`: eigenvalues `[P, k]` (descending) and eigenvectors `[P, k, d]`.

    Matrix-free: block Krylov iteration with Rayleigh–Ritz on products `G v`, each one JVP (`J v`,
    forward mode) and one VJP (`J_ℓᵀ (F J v)`, reverse mode), a block of `block` (default `2k`)
    vectors at once. It stops when every wanted Ritz pair's residual
    `‖G x − λ x‖` is below `tol · λ₁` (default 1e-10 in float64, 1e-5 otherwise) or the Krylov basis
    spans all of `R^d` (then the result is exact). `top_k` uses the study's truncated `F_k` (p_K not
    renormalised) instead of `F`. Eigenvector signs are arbitrary. Float64 results, on the CPU.
    Each position's Krylov start depends only on `(seed, position_ids[i])` (default: its index), so a
    position measured in another shard of the sample starts from the same vectors.
    """
    network = network_of(model)
    layer = check_layer(model, layer)
    contexts = contexts_of(sample)
    hook = hook_module(network, layer)
    dtype = next(network.parameters()).dtype
    tol = (1e-10 if dtype == torch.float64 else 1e-5) if tol is None else tol
    eigvals, eigvecs = [], []
    position_ids = range(len(contexts)) if position_ids is None else [int(i) for i in position_ids]
    if len(position_ids) != len(contexts):
        raise InputError(f"position_ids must be one id per position ({len(contexts)}), got {len(position_ids)}")
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

        n_start = block or min(width, 2 * k)
        start = torch.stack([
            torch.randn(width, n_start, dtype=torch.float64, generator=position_generator(seed, position_ids[i], stream=KRYLOV_STREAM))
            for i in chunk.tolist()
        ])  # fmt: skip
        values, vectors = block_krylov(apply, start.to(prefix.device), k, tol)
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
