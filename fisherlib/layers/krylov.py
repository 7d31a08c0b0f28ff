"""Block Krylov iteration with Rayleigh–Ritz for the top eigenpairs of batched symmetric PSD operators.

`layer_fisher_eigh` runs it on `G_ℓ v` products (one JVP and one VJP per block of vectors); it needs only a
function that applies the operator to a batch of blocks `[R, d, b]`.
"""

from __future__ import annotations

import torch

__all__ = ["block_krylov"]


def block_krylov(apply, start: torch.Tensor, k: int, tol: float, max_dim: int | None = None):
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
