"""The Fisher pullback `F = Wᵀ(diag p − ppᵀ)W`, its spectrum, and the closed-form boundary.

Shapes: `P` positions, `D` directions per position, `E` thresholds ε, `V` vocabulary, `d` model width,
`k` the top-k truncation.

Every public function accepts inputs that require grad (a model's `W`) and returns tensors without a
graph. No function makes a float64 copy of the whole of `W`: rows are gathered first, or `W` is read
in chunks of rows.

Inputs (the conventions of `fisherlib.core.checks`): tensors, or numpy arrays, which are converted with
`torch.as_tensor` onto the device of the other tensors. Every public function raises one
`fisherlib.core.errors.InputError` (a ValueError and a TypeError) before any work for: another type, a
non-floating dtype, a shape that does not fit the notation above or does not match the other
arguments (the message gives the expected shape), NaN or ±inf in any array (one vectorised reduction
per array), `top_k < 1` or `top_k > V` (`> n_tokens` with `n_tokens`), and ε ≤ 0 or non-finite.
"""

from __future__ import annotations

import functools
import math

import torch

from . import checks
from .errors import InputError

# Below this many multiples of float64 machine epsilon (relative to Σλ) an eigenvalue counts as zero.
_EIGEN_FLOOR = 64 * torch.finfo(torch.float64).eps
# |a_K| below this fraction of max |a| counts as orthogonal to W_K (float32 W gives ~1e-7; rounding ~1e-16).
_ORTHOGONAL_TOL = 1e-10
# Rows of W converted to float64 at a time where a whole-vocabulary product is needed.
_ROW_CHUNK = 8192


def _no_grad(fn):
    """Run `fn` without autograd, so inputs that require grad (model weights) are accepted."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _check_head(W, p) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `W [V, d]` and `p [P, V]` (a `[V]` p becomes `[1, V]`, on W's device), checked."""
    W = checks.tensor("W", W, "[V, d]", device=checks.device_of(p))
    p = checks.tensor("p", p, "[P, V]", "[V]", device=W.device)
    if p.dim() == 1:
        p = p[None]
    checks.check_shapes(("W", W, "[V, d]"), ("p", p, "[P, V]"))
    return W, p.to(W.device)


@_no_grad
def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of distributions `p [..., V]`, with 0·log 0 = 0."""
    p = checks.tensor("p", p, "[..., V]").double()
    return -torch.xlogy(p, p).sum(-1)


@_no_grad
def top_k_distribution(p: torch.Tensor, top_k: int, n_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the `top_k` largest probabilities `[P, k]` (descending) and their token ids `[P, k]`.

    `n_tokens`: rank only rows `[0, n_tokens)`, the tokenizer's tokens, never the rows that pad a
    vocabulary for speed (`LMHead.n_tokens`); their probabilities stay in `p`, so a top-k mass is not
    renormalised either way. `1 <= top_k <= V` (`<= n_tokens` where that is smaller).
    """
    p = checks.tensor("p", p, "[..., V]")
    top_k = checks.check_top_k(top_k, p.shape[-1], n_tokens)
    return _top_k(p, top_k, n_tokens)


def _top_k(p: torch.Tensor, top_k: int, n_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_distribution` on checked arguments."""
    if n_tokens is not None and n_tokens < p.shape[-1]:
        p = p[..., :n_tokens]
    probs, ids = torch.topk(p, top_k, dim=-1, sorted=True)
    return probs, ids


def _covariance_weights(p_k: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """Return `C = diag(p) − ppᵀ` `[P, k, k]` in float64 (p_K not renormalised unless asked)."""
    p_k = p_k.double()
    if renormalize:
        p_k = p_k / p_k.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.diag_embed(p_k) - p_k[..., :, None] * p_k[..., None, :]


@_no_grad
def fisher_pullback(
    W: torch.Tensor,
    p: torch.Tensor,
    top_k: int | None = None,
    renormalize: bool = False,
    dtype: torch.dtype = torch.float64,
    n_tokens: int | None = None,
) -> torch.Tensor:
    """Return the Fisher pullback `F [P, d, d]` of `p [P, V]` through the unembedding `W [V, d]`.

    `top_k=None` gives the full `F = Wᵀ diag(p) W − (Wᵀp)(Wᵀp)ᵀ`; otherwise the study's truncation
    `F_k = W_Kᵀ (diag p_K − p_K p_Kᵀ) W_K` over the `top_k` most probable tokens. The full matrix is
    accumulated over chunks of `_ROW_CHUNK` rows of `W`, so neither a `dtype` copy of `W` nor a
    `[d, V]` temporary is formed; its cost is `O(V d²)` per position, the GEMM itself. `n_tokens`:
    the top k are taken among the first `n_tokens` rows only (see `top_k_distribution`). `p [V]` is
    taken as `[1, V]`; a `p` on another device than `W` is moved to W's.
    """
    W, p = _check_head(W, p)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if top_k is None and renormalize:
        raise InputError("renormalize only applies to a top-k truncation; pass top_k")
    if top_k is not None:
        top_k = checks.check_top_k(top_k, W.shape[0], n_tokens)
        p_k, ids = _top_k(p, top_k, n_tokens)
        W_k = W[ids].to(dtype)  # [P, k, d]: gather first, so only k rows per position are converted
        C = _covariance_weights(p_k, renormalize).to(dtype)
        return W_k.transpose(-1, -2) @ C @ W_k
    P, (V, d) = p.shape[0], W.shape
    out = torch.zeros(P, d, d, dtype=dtype, device=W.device)
    mean_rows = torch.zeros(P, d, dtype=dtype, device=W.device)
    p = p.to(dtype=dtype)
    for start in range(0, V, _ROW_CHUNK):
        W_c = W[start : start + _ROW_CHUNK].to(dtype)  # [c, d]
        p_c = p[:, start : start + _ROW_CHUNK]  # [P, c]
        mean_rows += p_c @ W_c
        for i in range(P):
            out[i].addmm_(W_c.T * p_c[i], W_c)
    out -= mean_rows[:, :, None] * mean_rows[:, None, :]
    return out


@_no_grad
def fisher_eigh(
    W: torch.Tensor, p: torch.Tensor, top_k: int, renormalize: bool = False, n_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the eigenpairs of `F_k`: eigenvalues `[P, k]` (descending) and eigenvectors `[P, d, k]`.

    `F_k = Bᵀ B` with `B = C^{1/2} W_K`, so its nonzero spectrum is that of the `k × k` matrix `B Bᵀ`;
    this costs `O(k²d)` per position instead of the `O(d³)` of a dense `d × d` eigensolve. Eigenvalues
    are float64; columns of the eigenvector matrix whose eigenvalue is (numerically) zero are arbitrary
    unit vectors orthogonal to the others. Arguments as for `fisher_pullback`.
    """
    W, p = _check_head(W, p)
    top_k = checks.check_top_k(top_k, W.shape[0], n_tokens)
    p_k, ids = _top_k(p, top_k, n_tokens)
    W_k = W[ids].double()  # [P, k, d]: gathered before the conversion, never a float64 copy of W
    C = _covariance_weights(p_k, renormalize)
    c_vals, c_vecs = torch.linalg.eigh(C)
    C_half = c_vecs @ torch.diag_embed(c_vals.clamp_min(0).sqrt()) @ c_vecs.transpose(-1, -2)
    B = C_half @ W_k  # [P, k, d]
    gram = B @ B.transpose(-1, -2)  # [P, k, k]
    eigvals, small_vecs = torch.linalg.eigh(gram)
    eigvals, small_vecs = eigvals.flip(-1), small_vecs.flip(-1)
    eigvals = eigvals.clamp_min(0)
    # Bᵀ y / sqrt(λ) is a unit eigenvector of BᵀB for every λ > 0.
    scale = eigvals.sqrt()
    floor = _EIGEN_FLOOR * eigvals.sum(-1, keepdim=True)
    usable = eigvals > floor
    vecs = B.transpose(-1, -2) @ small_vecs / torch.where(usable, scale, 1.0)[..., None, :]
    # Orthonormalise, which also makes the columns of null eigenvalues well-defined unit vectors.
    vecs, r = torch.linalg.qr(vecs)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    vecs = vecs * torch.where(signs == 0, 1.0, signs)[..., None, :]
    eigvals = torch.where(usable, eigvals, torch.zeros_like(eigvals))
    return eigvals, vecs


@_no_grad
def effective_rank(eigvals: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """Return the effective rank of spectra `eigvals [..., n]`: `exp(H(λ/Σλ))` or `(Σλ)²/Σλ²`.

    A zero spectrum (no curvature at all) has effective rank 0.
    """
    if kind not in ("entropy", "participation"):
        raise InputError(f"kind must be 'entropy' or 'participation', not {kind!r}")
    lam = checks.tensor("eigvals", eigvals, "[..., n]").double().clamp_min(0)
    total = lam.sum(-1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    if kind == "entropy":
        q = lam / safe_total[..., None]
        rank = torch.exp(-torch.xlogy(q, q).sum(-1))
    else:
        rank = total**2 / torch.where(total > 0, (lam**2).sum(-1), torch.ones_like(total))
    return torch.where(total > 0, rank, torch.zeros_like(rank))


def _check_velocities(p, A, p_name: str = "p", A_name: str = "A", V: str = "V") -> tuple[torch.Tensor, torch.Tensor]:
    """Return `p [P, V]` and `A [P, D, V]` checked (for the top-k forms, `V` is `k`)."""
    device = checks.device_of(A, p)
    p = checks.tensor(p_name, p, f"[P, {V}]", device=device)
    A = checks.tensor(A_name, A, f"[P, D, {V}]", device=device)
    checks.check_shapes((p_name, p, f"[P, {V}]"), (A_name, A, f"[P, D, {V}]"))
    checks.check_same_device((p_name, p), (A_name, A))
    return p, A


def _weighted_moments(p: torch.Tensor, A: torch.Tensor, order: int) -> list[torch.Tensor]:
    """Return the central moments μ₂…μ_order of `a` under `p`, each `[P, D]` float64.

    The centring is the corrected two-pass one (see boundary._centred_velocities), so near-deterministic
    `p` (p_top1 ≈ 1 − 1e-11) keeps its tiny variance to full relative precision.
    """
    p64 = p.double()[:, None, :]
    A64 = A.double()
    centred = A64 - (p64 * A64).sum(-1, keepdim=True)
    centred -= (p64 * centred).sum(-1, keepdim=True)
    return [(p64 * centred**n).sum(-1) for n in range(2, order + 1)]


@_no_grad
def curvature(p: torch.Tensor, A: torch.Tensor, top_k: int | None = None, n_tokens: int | None = None) -> torch.Tensor:
    """Return `uᵀFu = Var_p[a]` `[P, D]` (float64) from `p [P, V]` and velocities `A = W u` `[P, D, V]`.

    With `top_k`, return the study's truncated `uᵀF_k u = Σ_K p a² − (Σ_K p a)²` over the `top_k` most
    probable tokens (p_K not renormalised); `curvature_topk` does the same from pre-gathered columns.
    """
    p, A = _check_velocities(p, A)
    if top_k is None:
        return _weighted_moments(p, A, 2)[0]
    top_k = checks.check_top_k(top_k, p.shape[-1], n_tokens)
    p_k, ids = _top_k(p, top_k, n_tokens)
    A_k = torch.gather(A, -1, ids[:, None, :].expand(-1, A.shape[1], -1))
    # The mass outside the top k, summed from its own (small) terms rather than as 1 − Σ_K p.
    tail = p.double().scatter(-1, ids, 0.0).sum(-1)
    curv = _curvature_topk(p_k, A_k, tail)
    # A direction orthogonal to every row of W_K (a control) has a_K = 0 up to rounding; call that exactly
    # zero curvature, so that t_pred is inf rather than ~1e15.
    negligible = A_k.abs().amax(-1) <= _ORTHOGONAL_TOL * A.abs().amax(-1)
    return torch.where(negligible, torch.zeros_like(curv), curv)


@_no_grad
def curvature_topk(p_k: torch.Tensor, A_k: torch.Tensor, tail_mass: torch.Tensor | None = None) -> torch.Tensor:
    """Return `uᵀF_k u` `[P, D]` from top-k probabilities `[P, k]` and the matching velocities `[P, D, k]`.

    Computed as `Σ_K p (a − μ)² + m (1 − m) μ²` (m = Σ_K p, μ = Σ_K p a / m), which equals
    `Σ_K p a² − (Σ_K p a)²` but is a sum of non-negative terms: the textbook difference loses all
    digits when p_top1 ≈ 1. `tail_mass [P]` is `1 − m` summed from the probabilities outside the top k
    (more accurate than `1 − m` when m ≈ 1); by default `1 − m`.
    """
    p_k, A_k = _check_velocities(p_k, A_k, "p_k", "A_k", "k")
    if tail_mass is not None:
        tail_mass = checks.tensor("tail_mass", tail_mass, "[P]", device=p_k.device)
        checks.check_shapes(("p_k", p_k, "[P, k]"), ("tail_mass", tail_mass, "[P]"))
    return _curvature_topk(p_k, A_k, tail_mass)


def _curvature_topk(p_k: torch.Tensor, A_k: torch.Tensor, tail_mass: torch.Tensor | None) -> torch.Tensor:
    """`curvature_topk` on checked arguments."""
    p64 = p_k.double()[:, None, :]
    A64 = A_k.double()
    mass = p64.sum(-1)
    safe_mass = torch.where(mass > 0, mass, torch.ones_like(mass))
    mu = (p64 * A64).sum(-1) / safe_mass
    mu = mu + (p64 * (A64 - mu[..., None])).sum(-1) / safe_mass  # corrected two-pass mean
    spread = (p64 * (A64 - mu[..., None]) ** 2).sum(-1)
    tail = (1 - mass).clamp_min(0) if tail_mass is None else tail_mass.double().to(mass.device)[:, None].expand_as(mass)
    return spread + mass * tail * mu**2


@_no_grad
def cumulants(p: torch.Tensor, A: torch.Tensor, order: int = 4) -> torch.Tensor:
    """Return the cumulants `κ₂…κ_order` of `a` under `p` as `[P, D, order − 1]` float64 (order ≤ 4)."""
    if isinstance(order, bool) or order not in (2, 3, 4):
        raise InputError(f"cumulants are implemented for order 2, 3 or 4, not {order!r}")
    p, A = _check_velocities(p, A)
    moments = _weighted_moments(p, A, order)
    kappas = moments[:2]
    if order == 4:
        kappas.append(moments[2] - 3 * moments[0] ** 2)
    return torch.stack(kappas[: order - 1], -1)


@_no_grad
def predicted_boundary(curv: torch.Tensor, eps) -> torch.Tensor:
    """Return the closed form `t_pred = sqrt(2ε / uᵀFu)` `[P, D, E]` (float64; `inf` where curvature is ≤ 0).

    `curv [P, D]` (any shape; finite), `eps` a positive finite number or a sequence of them `[E]`.
    """
    curv = checks.tensor("curv", curv, "[...]")
    return _predicted_boundary(curv, checks.check_eps(eps, curv.device))


def _predicted_boundary(curv: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """`predicted_boundary` on checked arguments (`eps` float64 `[E]`)."""
    curv = curv.double()
    positive = curv > 0
    safe = torch.where(positive, curv, torch.ones_like(curv))
    t = torch.sqrt(2 * eps / safe[..., None])
    return torch.where(positive[..., None], t, torch.full_like(t, math.inf))


@_no_grad
def cumulant_boundary(kappas: torch.Tensor, eps, n_bisect: int = 100) -> torch.Tensor:
    """Return the smallest `t > 0` solving `κ₂t²/2 + κ₃t³/6 + κ₄t⁴/24 = ε` `[P, D, E]`.

    `kappas [P, D, 3]` from `cumulants`. The quartic is the fourth-order Taylor series of the forward
    KL; it is a sharper predictor than `t_pred` at moderate ε. Where it has no positive root (negative
    skew and kurtosis bend it down before it reaches ε), or where κ₂ = 0, the result is `inf`.

    In units of `t_pred = sqrt(2ε/κ₂)` the equation is `f(s) = y s⁴ + x s³ + s² − 1 = 0` with
    `x = κ₃t_pred/(3κ₂)`, `y = κ₄t_pred²/(12κ₂)`. `f(0) = −1` and `f′(s) = s(4ys² + 3xs + 2)` vanishes at
    most twice for s > 0, so f is monotone between those critical points: the smallest root lies in the
    first monotone piece whose right end has `f ≥ 0`, where a geometric bisection finds it. The pieces
    are bounded by Cauchy's bounds on the roots, so no root is missed however narrow or far it is.

    `kappas [..., 3]` must be finite, `eps` positive and finite, `n_bisect` a positive integer.
    """
    kappas = checks.tensor("kappas", kappas, "[..., 3]")
    checks.check_shapes(("kappas", kappas, "[..., 3]"))
    n_bisect = checks.check_count("n_bisect", n_bisect, minimum=1)
    k2, k3, k4 = (kappas[..., i, None].double() for i in range(3))
    t_pred = _predicted_boundary(kappas[..., 0], checks.check_eps(eps, kappas.device))
    finite = torch.isfinite(t_pred)
    base = torch.where(finite, t_pred, torch.ones_like(t_pred))
    safe_k2 = torch.where(k2 > 0, k2, torch.ones_like(k2))
    x = k3 * base / (3 * safe_k2)
    y = k4 * base**2 / (12 * safe_k2)

    def f(s):
        return ((y * s + x) * s + 1) * s * s - 1

    # Cauchy's bounds: every root has lower <= |s| <= upper.
    big = torch.maximum(torch.maximum(x.abs(), y.abs()), torch.ones_like(x))
    lower = 0.5 / (1 + big)
    upper = torch.where(
        y != 0,
        1 + torch.maximum(x.abs(), torch.ones_like(x)) / y.abs().clamp_min(1e-300),
        torch.where(x != 0, 1 + 1 / x.abs().clamp_min(1e-300), torch.full_like(x, 2.0)),
    )
    upper = 2 * upper.clamp_max(1e300)
    # Positive critical points: roots of 4y s² + 3x s + 2 = 0 (at most two), clamped into [lower, upper].
    disc = 9 * x**2 - 32 * y
    sqrt_disc = torch.sqrt(disc.clamp_min(0))
    safe_y = torch.where(y != 0, y, torch.ones_like(y))
    quadratic = torch.stack([(-3 * x - sqrt_disc) / (8 * safe_y), (-3 * x + sqrt_disc) / (8 * safe_y)], -1)
    linear = torch.where(x < 0, -2 / (3 * torch.where(x != 0, x, torch.ones_like(x))), torch.full_like(x, -1.0))
    critical = torch.where(
        (y != 0)[..., None],
        torch.where((disc >= 0)[..., None], quadratic, torch.full_like(quadratic, -1.0)),
        torch.stack([linear, torch.full_like(linear, -1.0)], -1),
    )
    critical = torch.where(torch.isfinite(critical), critical, torch.full_like(critical, -1.0))
    critical = torch.minimum(torch.maximum(critical, lower[..., None]), upper[..., None])
    ends = torch.cat([lower[..., None], critical.sort(-1).values, upper[..., None]], -1)  # [..., 4]
    crossed = f(ends[..., 1:].movedim(-1, 0)).movedim(0, -1) >= 0  # right end of each piece
    has_root = crossed.any(-1) & finite
    piece = crossed.to(torch.int64).argmax(-1)
    lo = torch.gather(ends, -1, piece[..., None])[..., 0]
    hi = torch.gather(ends, -1, (piece + 1)[..., None])[..., 0]
    for _ in range(n_bisect):
        mid = torch.sqrt(lo * hi)
        above = f(mid) >= 0
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    t = base * (lo + hi) / 2
    return torch.where(has_root, t, torch.full_like(t, math.inf))
