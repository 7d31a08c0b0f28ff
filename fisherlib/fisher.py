"""The Fisher pullback `F = Wᵀ(diag p − ppᵀ)W`, its spectrum, and the closed-form boundary.

Shapes: `P` positions, `D` directions per position, `E` thresholds ε, `V` vocabulary, `d` model width,
`k` the top-k truncation.
"""

from __future__ import annotations

import math

import torch

# Below this many multiples of float64 machine epsilon (relative to Σλ) an eigenvalue counts as zero.
_EIGEN_FLOOR = 64 * torch.finfo(torch.float64).eps
# |a_K| below this fraction of max |a| counts as orthogonal to W_K (float32 W gives ~1e-7; rounding ~1e-16).
_ORTHOGONAL_TOL = 1e-10


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of distributions `p [..., V]`, with 0·log 0 = 0."""
    p = p.double()
    return -torch.xlogy(p, p).sum(-1)


def top_k_distribution(p: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the `top_k` largest probabilities `[P, k]` (descending) and their token ids `[P, k]`."""
    top_k = min(int(top_k), p.shape[-1])
    probs, ids = torch.topk(p, top_k, dim=-1, sorted=True)
    return probs, ids


def _covariance_weights(p_k: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """Return `C = diag(p) − ppᵀ` `[P, k, k]` in float64 (p_K not renormalised unless asked)."""
    p_k = p_k.double()
    if renormalize:
        p_k = p_k / p_k.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.diag_embed(p_k) - p_k[..., :, None] * p_k[..., None, :]


def fisher_pullback(
    W: torch.Tensor,
    p: torch.Tensor,
    top_k: int | None = None,
    renormalize: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Return the Fisher pullback `F [P, d, d]` of `p [P, V]` through the unembedding `W [V, d]`.

    `top_k=None` gives the full `F = Wᵀ diag(p) W − (Wᵀp)(Wᵀp)ᵀ`; otherwise the study's truncation
    `F_k = W_Kᵀ (diag p_K − p_K p_Kᵀ) W_K` over the `top_k` most probable tokens. The full matrix is
    accumulated one position at a time so no `[P, V, d]` array is ever formed.
    """
    if p.dim() == 1:
        p = p[None]
    W64 = W.to(dtype)
    if top_k is not None:
        p_k, ids = top_k_distribution(p, top_k)
        W_k = W64[ids]  # [P, k, d]: k is small, so this gather is cheap
        C = _covariance_weights(p_k, renormalize).to(dtype)
        return W_k.transpose(-1, -2) @ C @ W_k
    if renormalize:
        raise ValueError("renormalize only applies to a top-k truncation; pass top_k")
    out = torch.empty(p.shape[0], W.shape[1], W.shape[1], dtype=dtype, device=W.device)
    for i, p_i in enumerate(p.to(dtype)):
        mean_row = p_i @ W64  # Wᵀp, [d]
        out[i] = (W64.T * p_i) @ W64 - torch.outer(mean_row, mean_row)
    return out


def fisher_eigh(
    W: torch.Tensor, p: torch.Tensor, top_k: int, renormalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the eigenpairs of `F_k`: eigenvalues `[P, k]` (descending) and eigenvectors `[P, d, k]`.

    `F_k = Bᵀ B` with `B = C^{1/2} W_K`, so its nonzero spectrum is that of the `k × k` matrix `B Bᵀ`;
    this costs `O(k²d)` per position instead of the `O(d³)` of a dense `d × d` eigensolve. Eigenvalues
    are float64; columns of the eigenvector matrix whose eigenvalue is (numerically) zero are arbitrary
    unit vectors orthogonal to the others.
    """
    if p.dim() == 1:
        p = p[None]
    p_k, ids = top_k_distribution(p, top_k)
    W_k = W.double()[ids]  # [P, k, d]
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


def effective_rank(eigvals: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """Return the effective rank of spectra `eigvals [..., n]`: `exp(H(λ/Σλ))` or `(Σλ)²/Σλ²`.

    A zero spectrum (no curvature at all) has effective rank 0.
    """
    lam = eigvals.double().clamp_min(0)
    total = lam.sum(-1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    if kind == "entropy":
        q = lam / safe_total[..., None]
        rank = torch.exp(-torch.xlogy(q, q).sum(-1))
    elif kind == "participation":
        rank = total**2 / torch.where(total > 0, (lam**2).sum(-1), torch.ones_like(total))
    else:
        raise ValueError(f"kind must be 'entropy' or 'participation', not {kind!r}")
    return torch.where(total > 0, rank, torch.zeros_like(rank))


def _weighted_moments(p: torch.Tensor, A: torch.Tensor, order: int) -> list[torch.Tensor]:
    """Return the central moments μ₂…μ_order of `a` under `p`, each `[P, D]` float64."""
    p64 = p.double()[:, None, :]
    A64 = A.double()
    mean = (p64 * A64).sum(-1, keepdim=True)
    centred = A64 - mean
    return [(p64 * centred**n).sum(-1) for n in range(2, order + 1)]


def curvature(p: torch.Tensor, A: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Return `uᵀFu = Var_p[a]` `[P, D]` (float64) from `p [P, V]` and velocities `A = W u` `[P, D, V]`.

    With `top_k`, return the study's truncated `uᵀF_k u = Σ_K p a² − (Σ_K p a)²` over the `top_k` most
    probable tokens (p_K not renormalised); `curvature_topk` does the same from pre-gathered columns.
    """
    if top_k is None:
        return _weighted_moments(p, A, 2)[0]
    p_k, ids = top_k_distribution(p, top_k)
    A_k = torch.gather(A, -1, ids[:, None, :].expand(-1, A.shape[1], -1))
    curv = curvature_topk(p_k, A_k)
    # A direction orthogonal to every row of W_K (a control) has a_K = 0 up to rounding; call that exactly
    # zero curvature, so that t_pred is inf rather than ~1e15.
    negligible = A_k.abs().amax(-1) <= _ORTHOGONAL_TOL * A.abs().amax(-1)
    return torch.where(negligible, torch.zeros_like(curv), curv)


def curvature_topk(p_k: torch.Tensor, A_k: torch.Tensor) -> torch.Tensor:
    """Return `uᵀF_k u` `[P, D]` from top-k probabilities `[P, k]` and the matching velocities `[P, D, k]`."""
    p64 = p_k.double()[:, None, :]
    A64 = A_k.double()
    first = (p64 * A64).sum(-1)
    second = (p64 * A64**2).sum(-1)
    # Σ_K p a² − (Σ_K p a)² ≥ 0 since Σ_K p ≤ 1; clamp the rounding below zero.
    return (second - first**2).clamp_min(0)


def cumulants(p: torch.Tensor, A: torch.Tensor, order: int = 4) -> torch.Tensor:
    """Return the cumulants `κ₂…κ_order` of `a` under `p` as `[P, D, order − 1]` float64 (order ≤ 4)."""
    if not 2 <= order <= 4:
        raise ValueError("cumulants are implemented for order 2, 3 or 4")
    moments = _weighted_moments(p, A, order)
    kappas = moments[:2]
    if order == 4:
        kappas.append(moments[2] - 3 * moments[0] ** 2)
    return torch.stack(kappas[: order - 1], -1)


def predicted_boundary(curv: torch.Tensor, eps) -> torch.Tensor:
    """Return the closed form `t_pred = sqrt(2ε / uᵀFu)` `[P, D, E]` (float64; `inf` where curvature is 0)."""
    curv = curv.double()
    eps = torch.as_tensor(eps, dtype=torch.float64, device=curv.device).reshape(-1)
    positive = curv > 0
    safe = torch.where(positive, curv, torch.ones_like(curv))
    t = torch.sqrt(2 * eps / safe[..., None])
    return torch.where(positive[..., None], t, torch.full_like(t, math.inf))


def cumulant_boundary(kappas: torch.Tensor, eps, n_bisect: int = 80) -> torch.Tensor:
    """Return the smallest `t > 0` solving `κ₂t²/2 + κ₃t³/6 + κ₄t⁴/24 = ε` `[P, D, E]`.

    `kappas [P, D, 3]` from `cumulants`. The quartic is the fourth-order Taylor series of the forward
    KL; it is a sharper predictor than `t_pred` at moderate ε. Where it has no positive root below
    100·t_pred (negative skew and kurtosis bend it down), the result is `inf`.
    """
    k2, k3, k4 = (kappas[..., i, None].double() for i in range(3))
    t_pred = predicted_boundary(kappas[..., 0], eps)
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=kappas.device).reshape(-1)

    def residual(t):
        return k2 * t**2 / 2 + k3 * t**3 / 6 + k4 * t**4 / 24 - eps_t

    finite = torch.isfinite(t_pred)
    base = torch.where(finite, t_pred, torch.ones_like(t_pred))
    # Scan a geometric grid (a trailing axis) for the first sign change, then bisect inside it.
    grid = torch.logspace(-2, 2, 129, dtype=torch.float64, device=kappas.device)
    ts = base[..., None] * grid
    values = residual(ts.movedim(-1, 0)).movedim(0, -1)
    crossed = values >= 0
    has_root = crossed.any(-1) & finite
    first = crossed.to(torch.int64).argmax(-1)
    hi = torch.gather(ts, -1, first[..., None])[..., 0]
    lo = torch.where(first > 0, torch.gather(ts, -1, (first - 1).clamp_min(0)[..., None])[..., 0], 0.0)
    for _ in range(n_bisect):
        mid = (lo + hi) / 2
        above = residual(mid) >= 0
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    t = (lo + hi) / 2
    return torch.where(has_root, t, torch.full_like(t, math.inf))
