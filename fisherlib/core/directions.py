"""The per-position direction sweep of docs/method.md §7: eigvec, structured, tangent, random and control directions."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from . import checks
from .errors import DegenerateInputError, InputError
from .fisher import _top_k, fisher_eigh

NOT_APPLICABLE = -1  # integer columns use -1, never NaN, where a field does not apply to a class


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Normalise the last axis; a zero vector stays zero (and is reported as zero curvature)."""
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


# Streams start this far apart in the seed space: no (seed, position) of a study reaches the next stream.
_STREAM_STRIDE = 1_000_003 * 2**32
KRYLOV_STREAM = 1


def position_generator(seed: int, position_id: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Generator:
    """Return a generator seeded by `(seed, position_id, stream)`, so a position's draws do not depend on its batch.

    `stream` separates independent uses at one position (0: the sweep's and the layer study's random
    directions; `KRYLOV_STREAM`: the layer study's Krylov starts), so that no two share their numbers.
    `seed`, `position_id` and `stream` are integers (numpy integers too); anything else raises InputError.
    """
    for name, value in (("seed", seed), ("position_id", position_id), ("stream", stream)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InputError(f"{name} must be an integer, got {value!r}")
    generator = torch.Generator(device=device)
    generator.manual_seed((int(seed) * 1_000_003 + int(position_id) + int(stream) * _STREAM_STRIDE) % (2**63 - 1))
    return generator


def sweep_directions(
    W: torch.Tensor,
    h: torch.Tensor,
    p: torch.Tensor,
    F_k: torch.Tensor | None = None,
    n_random: int = 20,
    n_control: int = 8,
    seed: int = 0,
    top_k: int = 64,
    n_eigvec: int = 7,
    n_pair_tokens: int = 4,
    both_signs: bool = True,
    position_ids=None,
) -> tuple[torch.Tensor, list[dict]]:
    """Return unit directions `[P, D, d]` (float64) and their labels, one dict per (position, direction).

    `W [V, d]` unembedding, `h [P, d]` residuals, `p [P, V]` next-token distributions. `F_k [P, d, d]`
    is used for the eigenvectors when given; otherwise they come from `fisher_eigh(W, p, top_k)`, which
    never forms a `d × d` matrix. Eigenvector signs are oriented so that `uᵀ(w_b − w_a) ≥ 0` (a, b the
    top two tokens): `+` pushes toward swapping them. Pair directions are `(w_j − w_i)/‖·‖` for ranks
    `i < j`. With `both_signs`, eigvec, structured and tangent directions appear as `+u` and `−u`.
    Control directions are orthogonal to every row of `W_K` and need `top_k < d`.

    Label keys: position, direction, cls, eig_rank (1.. or -1), sign (+1/−1), token_i, token_j
    (ids, or -1), eigval (the `F_k` eigenvalue for eigvec rows, else 0).

    Inputs as in `fisherlib.core.fisher`: tensors or numpy arrays (converted with `torch.as_tensor`), one
    device; `h [d]` and `p [V]` are taken as one position. Raises InputError (a ValueError) for another
    type or dtype, shapes that do not match (`W [V, d]`, `h [P, d]`, `p [P, V]`, `F_k [P, d, d]`), NaN or
    inf, `top_k` outside `[1, V]`, `n_pair_tokens > V`, negative counts, or `position_ids` that are not
    `P` integers; DegenerateInputError for controls with `top_k >= d`.
    """
    device = checks.device_of(W, h, p, F_k)
    W = checks.tensor("W", W, "[V, d]", device=device)
    h = checks.tensor("h", h, "[P, d]", "[d]", device=device)
    p = checks.tensor("p", p, "[P, V]", "[V]", device=device)
    h = h[None] if h.dim() == 1 else h
    p = p[None] if p.dim() == 1 else p
    if F_k is not None:
        F_k = checks.tensor("F_k", F_k, "[P, d, d]", device=device)
    sizes = checks.check_shapes(("W", W, "[V, d]"), ("h", h, "[P, d]"), ("p", p, "[P, V]"), ("F_k", F_k, "[P, d, d]"))
    checks.check_same_device(("W", W), ("h", h), ("p", p), ("F_k", F_k))
    V = sizes["V"]
    if V < 2:
        raise InputError(f"the direction sweep needs a vocabulary of at least 2 tokens, got W of shape {tuple(W.shape)}")
    top_k = checks.check_top_k(top_k, V)
    n_pair_tokens = checks.check_count("n_pair_tokens", n_pair_tokens, 0, V, "V (the vocabulary size)")
    n_random = checks.check_count("n_random", n_random)
    n_control = checks.check_count("n_control", n_control)
    n_eigvec = checks.check_count("n_eigvec", n_eigvec)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an integer, got {seed!r}")
    P, d = h.shape
    if n_control > 0 and top_k >= d:
        raise DegenerateInputError(
            f"control directions must be orthogonal to the top_k={top_k} rows of W, which span all of "
            f"R^{d}; lower top_k below the model width {d} (e.g. top_k={max(1, d // 2)}) or set n_control=0"
        )
    if position_ids is None:
        position_ids = list(range(P))
    else:
        position_ids = list(position_ids)
        if len(position_ids) != P or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in position_ids):
            raise InputError(f"position_ids must be P = {P} integers, one per position; got {len(position_ids)} starting {position_ids[:3]!r}")
        position_ids = [int(i) for i in position_ids]
    h64 = h.double()
    _, top_ids = _top_k(p, max(top_k, n_pair_tokens, 2), None)

    if F_k is not None:
        eigvals, eigvecs = torch.linalg.eigh(F_k.double())
        eigvals, eigvecs = eigvals.flip(-1).clamp_min(0), eigvecs.flip(-1)
    else:
        eigvals, eigvecs = fisher_eigh(W, p, top_k)
    n_eig = min(n_eigvec, eigvecs.shape[-1])

    directions, rows = [], []
    for i in range(P):
        position = _Position(
            W=W, h=h64[i], ids=top_ids[i], eigvals=eigvals[i], eigvecs=eigvecs[i], n_eig=n_eig, n_pair_tokens=n_pair_tokens,
            top_k=top_k, n_random=n_random, n_control=n_control, seed=seed, position_id=position_ids[i],
        )  # fmt: skip
        sweep: list[tuple[torch.Tensor, dict]] = []
        for direction_class in DIRECTION_CLASSES:
            for vector, fields in direction_class.build(position):
                meta = {**_LABEL_DEFAULTS, **fields}
                for sign in (1, -1) if (direction_class.signed and both_signs) else (1,):
                    sweep.append((sign * vector, dict(cls=direction_class.name, eig_rank=meta["eig_rank"], sign=sign,
                                                      token_i=meta["token_i"], token_j=meta["token_j"], eigval=meta["eigval"])))  # fmt: skip
        directions.append(torch.stack([v for v, _ in sweep]))
        for j, (_, meta) in enumerate(sweep):
            rows.append(dict(position=position_ids[i], direction=j, **meta))
    return torch.stack(directions), rows


# --- the direction classes ---------------------------------------------------------------------------
#
# One table says what the classes are: their names (the `cls` column, in sweep order), whether each is
# measured as +u and −u, how its directions are built at one position, and which pools it joins
# (`POOL_PREDICTED`, "all": the classes with a finite F_k prediction; `POOL_CONTRASTIVE`: the token-pair
# classes pooled by the power-law fits). `sweep_directions` iterates it; `fisherlib.steps` reads the
# class names and pools from it. A class added here appears in the sweep, its tables and its pools.

POOL_PREDICTED = "all"
POOL_CONTRASTIVE = "contrastive"
_LABEL_DEFAULTS = dict(eig_rank=NOT_APPLICABLE, token_i=NOT_APPLICABLE, token_j=NOT_APPLICABLE, eigval=0.0)


@dataclass
class _Position:
    """What the direction builders of one position share; derived quantities are computed once, when first asked."""

    W: torch.Tensor  # [V, d], the model's dtype
    h: torch.Tensor  # [d] float64
    ids: torch.Tensor  # the position's most probable tokens, most probable first
    eigvals: torch.Tensor  # [r] descending
    eigvecs: torch.Tensor  # [d, r]
    n_eig: int
    n_pair_tokens: int
    top_k: int
    n_random: int
    n_control: int
    seed: int
    position_id: int

    @cached_property
    def eig_dirs(self) -> list[torch.Tensor]:
        """The top `n_eig` eigenvectors, oriented so that `uᵀ(w_b − w_a) ≥ 0` (a, b the top two tokens)."""
        # Only the rows a direction needs become float64: no [V, d] float64 copy of W (2.5 GB for Qwen3).
        top_two = self.W[self.ids[1]].double() - self.W[self.ids[0]].double()  # w_b − w_a
        oriented = []
        for r in range(self.n_eig):
            v = self.eigvecs[:, r]
            oriented.append(-v if v @ top_two < 0 else v)
        return oriented

    @cached_property
    def pairs(self) -> list[tuple[torch.Tensor, int, int]]:
        """`((w_j − w_i)/‖·‖, i, j)` for the token ranks `i < j` below `n_pair_tokens`."""
        out = []
        for a in range(self.n_pair_tokens):
            for b in range(a + 1, self.n_pair_tokens):
                ti, tj = int(self.ids[a]), int(self.ids[b])
                out.append((_unit(self.W[tj].double() - self.W[ti].double()), ti, tj))
        return out

    @cached_property
    def h_unit(self) -> torch.Tensor:
        return _unit(self.h)

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        """`v` with its component along `h` removed, normalised."""
        return _unit(v - (v @ self.h_unit) * self.h_unit)

    @cached_property
    def gaussian(self) -> torch.Tensor:
        """`[n_random + n_control, d]` float64 draws of this (seed, position): random rows first, then control rows."""
        generator = position_generator(self.seed, self.position_id)
        return torch.randn(self.n_random + self.n_control, self.h.shape[-1], generator=generator, dtype=torch.float64)


Built = Iterator[tuple[torch.Tensor, dict]]  # (unit vector, label fields other than cls and sign)


def _eigvec(at: _Position) -> Built:
    for r, v in enumerate(at.eig_dirs):
        yield v, dict(eig_rank=r + 1, eigval=float(at.eigvals[r]))


def _structured(at: _Position) -> Built:
    for v, ti, tj in at.pairs:
        yield v, dict(token_i=ti, token_j=tj)


def _tangent(at: _Position) -> Built:
    for v, ti, tj in at.pairs:
        yield at.tangent(v), dict(token_i=ti, token_j=tj)
    if at.eig_dirs:
        yield at.tangent(at.eig_dirs[0]), dict(eig_rank=1, eigval=float(at.eigvals[0]))


def _random(at: _Position) -> Built:
    for v in _unit(at.gaussian[: at.n_random].to(at.h.device)):
        yield v, {}


def _control(at: _Position) -> Built:
    if at.n_control > 0:
        # Orthonormal basis of span(W_K rows); controls are Gaussian vectors with that span removed.
        basis, _ = torch.linalg.qr(at.W[at.ids[: at.top_k]].double().T)
        raw = at.gaussian[at.n_random :].to(at.h.device)
        for v in _unit(raw - (raw @ basis) @ basis.T):
            yield v, {}


@dataclass(frozen=True)
class DirectionClass:
    """One class of the sweep: its `cls` name, whether it is measured as ±u, its builder, and the pools it joins."""

    name: str
    signed: bool  # measured as +u and −u (with `both_signs`)
    build: Callable[[_Position], Built]  # the class's unit directions at one position, with their labels
    pools: tuple[str, ...] = ()  # POOL_PREDICTED: uᵀF_k u is not ≈ 0 (a finite t_pred); POOL_CONTRASTIVE: token pairs
    report_rank: int = 0  # the classes' order in the write-up's tables (Table 2: structured, tangent, random, eigvec)


DIRECTION_CLASSES: tuple[DirectionClass, ...] = (
    DirectionClass("eigvec", signed=True, build=_eigvec, pools=(POOL_PREDICTED,), report_rank=4),
    DirectionClass("structured", signed=True, build=_structured, pools=(POOL_PREDICTED, POOL_CONTRASTIVE), report_rank=1),
    DirectionClass("tangent", signed=True, build=_tangent, pools=(POOL_PREDICTED, POOL_CONTRASTIVE), report_rank=2),
    DirectionClass("random", signed=False, build=_random, pools=(POOL_PREDICTED,), report_rank=3),
    DirectionClass("control", signed=False, build=_control, report_rank=5),  # uᵀF_k u ≈ 0 by construction
)


def class_names() -> tuple[str, ...]:
    """Return every direction class, in sweep order."""
    return tuple(c.name for c in DIRECTION_CLASSES)


def pool_members(pool: str) -> tuple[str, ...]:
    """Return the classes in `pool` (`POOL_PREDICTED`, `POOL_CONTRASTIVE`), in sweep order."""
    return tuple(c.name for c in DIRECTION_CLASSES if pool in c.pools)


def signed_classes() -> tuple[str, ...]:
    """Return the classes measured as +u and −u, in sweep order."""
    return tuple(c.name for c in DIRECTION_CLASSES if c.signed)


def report_order(names) -> tuple[str, ...]:
    """Return `names` (class names) in the write-up's table order."""
    rank = {c.name: c.report_rank for c in DIRECTION_CLASSES}
    return tuple(sorted(names, key=lambda name: rank[name]))


CLASSES = class_names()
PREDICTED_CLASSES = pool_members(POOL_PREDICTED)  # classes whose uᵀF_k u is not ≈ 0
SIGNED_CLASSES = signed_classes()  # measured as +u and −u
