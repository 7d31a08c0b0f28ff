"""The first crossing of a divergence along a line whose divergence need not be monotone, from values and slopes.

`first_crossing` solves `D(t) = ε` at the smallest `t` for many lines and ε at once, given only a function that
evaluates `D` and `D′` at asked points: a geometric scan on each line's own lattice, then per (line, ε) a walk
from `t = 0` that splits every interval whose ends leave room for a window above ε and shrinks the first
crossing's bracket to `rtol`. `layer_boundary` (one perturbed copy of a target token per evaluation) and the
steering pass (`steering_boundary`: a full forward pass of a text per evaluation) both run it.
`divergence_and_slope` gives `D` and `D′` from the logits at `t` and their derivative. Float64 throughout.
"""

from __future__ import annotations

import math

import torch

from ..core.bisection import sqrt_secant
from ..core.boundary import HUGE_T

__all__ = ["T_MAX_FACTOR", "divergence_and_slope", "first_crossing", "one_pass_curvature"]

T_MAX_FACTOR = 100.0  # default search cap at inner layers, times ‖r_ℓ‖: past it the normalised input is within 1% of u
_MAX_REFINE = 200  # evaluations per (line, ε) after the scan
_TURN_WIDTH = 2**-5  # an interval whose ends show a turn is split down to this relative length
_MAX_SPLITS = 48  # evaluations spent splitting one suspect interval before it is left unresolved


def divergence_and_slope(log_p: torch.Tensor, z0: torch.Tensor, z: torch.Tensor, zdot: torch.Tensor, divergence: str):
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


def one_pass_curvature(p: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Return `Var_p[a]` `[L]` for `p, A [L, V]` with one centring (the searches' lattice scale; `core.fisher.curvature`
    compensates the centring and differs from this in the last bits, which would move every scan point)."""
    return (p * (A - (p * A).sum(-1, keepdim=True)) ** 2).sum(-1)


def first_crossing(evaluate, curv, cap, eps, rtol, scan_ratio, steps_per_round: int = 8, scale=None):
    """Solve `D(t) = ε` at the first crossing for every line `[L]` and ε `[E]`.

    Returns `(t [L, E], nonmonotone [L], unconverged [L, E], unresolved [L, E])`.

    Scan: the lattice `t_j = ratio^j / sqrt(curv)` (a line's own scale, whatever ε is asked), with values and
    JVP slopes, in rounds of `steps_per_round` points per live line. ε uses the points from
    `j₀(ε) = floor(log_ratio(¼ sqrt(2ε)))` (a quarter of its `t_pred`) on, with `t = 0` before them, up to
    its first point at or above ε, so its answer does not depend on the other ε asked. Then each (line, ε)
    walks its intervals from the left (`_Walk`): an interval whose values and slopes allow a window above
    ε (`_may_exceed`) is split until a point at or above ε turns up (the first crossing's bracket) or it
    cannot hide one (resolved, or shorter than `rtol` relative); the first bracket is shrunk (Newton on
    `sqrt(2D)` and on `D`, bisection as safeguard, each new point below ε checked the same way) until its
    width is at most `rtol` times its lower end; the secant root of `sqrt(2D)` inside it is returned.
    The walks are plain Python, one evaluation per walk per round, all of a round in one `evaluate` call.
    `scale [L]` replaces the lattice's unit `1 / sqrt(curv)` (lines that share it share the scan's points;
    it must not exceed `1 / sqrt(curv)`, so that ε still starts at or below a quarter of its `t_pred`).
    """
    device = curv.device
    L, E = len(curv), len(eps)
    eps_list = [float(x) for x in eps.cpu()]
    usable = (curv > 0) & torch.isfinite(curv)
    if scale is None:
        scale = 1 / torch.sqrt(torch.where(usable, curv, torch.ones_like(curv)))
    j_start = [math.floor(math.log(0.25 * math.sqrt(2 * x)) / math.log(scan_ratio)) for x in eps_list]
    top = max(eps_list)
    limit = torch.minimum(cap, torch.full_like(cap, HUGE_T))
    nonmonotone = torch.zeros(L, dtype=torch.bool, device=device)
    # Scan: every live line at the same lattice indices; a line lives until every ε has a point ≥ ε or the cap.
    scan_t, scan_v, scan_s = [], [], []
    live = usable.clone()
    reached = torch.zeros(L, E, dtype=torch.bool, device=device)
    j = j_first = min(j_start)
    while live.any():
        lines = torch.nonzero(live).flatten()
        powers = torch.tensor([scan_ratio**k for k in range(j, j + steps_per_round)], dtype=torch.float64, device=device)
        t_grid = scale[lines, None] * powers  # [n, S]
        values, slopes = evaluate(lines.repeat_interleave(steps_per_round), t_grid.reshape(-1), slopes=True)
        T = torch.full((L, steps_per_round), math.nan, dtype=torch.float64, device=device)
        V, S = T.clone(), T.clone()
        inside = t_grid <= limit[lines, None]
        T[lines] = torch.where(inside, t_grid, math.nan)
        V[lines] = values.reshape(len(lines), -1)
        S[lines] = slopes.reshape(len(lines), -1)
        scan_t.append(T), scan_v.append(V), scan_s.append(S)
        for k in range(steps_per_round):
            ok = inside[:, k]
            for e in range(E):
                if j + k >= j_start[e]:
                    reached[lines, e] |= ok & (V[lines, k] >= eps_list[e])
        done = reached[lines].all(1) | ~inside[:, -1]
        live[lines[done]] = False
        j += steps_per_round
    if scan_t:
        T, V, S = torch.cat(scan_t, 1).cpu(), torch.cat(scan_v, 1).cpu(), torch.cat(scan_s, 1).cpu()
    else:
        T = V = S = torch.zeros(L, 0, dtype=torch.float64)
    # A fall (a value below the one before, or a negative slope) before the largest ε is first reached.
    nonmonotone_cpu = torch.zeros(L, dtype=torch.bool)

    walks, where = [], []
    Tl, Vl, Sl = T.tolist(), V.tolist(), S.tolist()
    usable_l = usable.cpu().tolist()
    for line in range(L):
        if not usable_l[line]:
            continue
        row_t, row_v, row_s = Tl[line], Vl[line], Sl[line]
        n = next((k for k, x in enumerate(row_t) if not x == x), len(row_t))  # points inside the cap (t not NaN)
        prev = 0.0
        for k in range(n):
            if row_v[k] >= top:
                break
            if row_v[k] < prev or row_s[k] < 0:
                nonmonotone_cpu[line] = True
            prev = row_v[k]
        for e in range(E):
            first = max(0, j_start[e] - j_first)
            points = [(0.0, 0.0, 0.0)]
            for k in range(first, n):
                points.append((row_t[k], row_v[k], row_s[k]))
                if row_v[k] >= eps_list[e]:
                    break
            walks.append(_Walk(points, eps_list[e], rtol))
            where.append((line, e))
    nonmonotone |= nonmonotone_cpu.to(device)

    for _ in range(_MAX_REFINE):
        asking = [(i, w) for i, w in enumerate(walks) if w.advance()]
        if not asking:
            break
        lines = torch.tensor([where[i][0] for i, _ in asking], device=device)
        t = torch.tensor([w.ask for _, w in asking], dtype=torch.float64, device=device)
        values, slopes = evaluate(lines, t)
        for (_, w), v, s in zip(asking, values.tolist(), slopes.tolist()):
            w.tell(v, s)
    t_out = torch.full((L, E), math.inf, dtype=torch.float64)
    unconverged = torch.zeros(L, E, dtype=torch.bool)
    unresolved = torch.zeros(L, E, dtype=torch.long)
    for (line, e), w in zip(where, walks):
        t_out[line, e], unconverged[line, e], unresolved[line, e] = w.result()
    return t_out.to(device), nonmonotone, unconverged.to(device), unresolved.to(device)


def _may_exceed(a, b, eps) -> bool:
    """Whether the divergence may exceed `eps` between points `a = (t, D, D')` and `b`, both below `eps`.

    Seen from the ends' values and slopes: the cubic Hermite interpolant's maximum; where the data show a
    turn (a negative slope, or a value that falls), also the tangents' intersection (a bound where the
    divergence is concave) and a bound from the steepest slope seen (`(D_a + D_b + M h) / 2`, `M` twice
    the largest of `|D'_a|`, `|D'_b|` and the chord's slope: a bump between turning ends can be steeper than both).
    """
    ta, va, sa = a
    tb, vb, sb = b
    h = tb - ta
    if h <= 0:
        return False
    # Cubic Hermite on [0, 1]: p(x) = va h00 + h sa h10 + vb h01 + h sb h11; its critical points.
    m0, m1 = h * sa, h * sb
    c3 = 2 * va + m0 - 2 * vb + m1
    c2 = -3 * va - 2 * m0 + 3 * vb - m1
    c1 = m0
    best = max(va, vb)
    roots = []
    A, B, C = 3 * c3, 2 * c2, c1
    if abs(A) > 1e-300:
        disc = B * B - 4 * A * C
        if disc >= 0:
            q = -0.5 * (B + math.copysign(math.sqrt(disc), B))
            roots = [q / A] + ([C / q] if q != 0 else [])
    elif abs(B) > 1e-300:
        roots = [-C / B]
    for x in roots:
        if 0 < x < 1:
            best = max(best, ((c3 * x + c2) * x + c1) * x + va)
    # A turn: a maximum inside (a slope that changes sign), or values against both slopes (a maximum and a
    # minimum inside). Such an interval is split until it is short (relative length 2^-5), where the bounds
    # below are trustworthy; a bump can be steeper than both of its ends.
    turn = (sa >= 0 > sb) or (vb < va and sa >= 0 and sb >= 0) or (vb > va and sa < 0 and sb < 0)
    if turn and h > _TURN_WIDTH * tb:
        return True
    if sa < 0 or sb < 0 or vb < va:
        if sa > 0 > sb:
            x = (vb - va - sb * h) / (sa - sb)  # tangents meet at ta + x
            best = max(best, va + sa * x)
        steep = 4 * max(abs(sa), abs(sb), abs(vb - va) / h)
        best = max(best, (va + vb + steep * h) / 2)
    return best >= eps


def _inside_secant(a, b, eps) -> float:
    """The root of the secant of `sqrt(2D)` through `a < ε ≤ b`, kept in the bracket: within its width of the
    root whatever, and second-order accurate in it (so that two runs whose brackets differ agree closely)."""
    return min(max(sqrt_secant(a[0], a[1], b[0], b[1], eps), a[0]), b[0])


class _Walk:
    """One (line, ε): its points `(t, D, D')` from `t = 0`, walked from the left to the first crossing.

    `advance()` settles what it can without evaluating and says whether it wants `D, D'` at `ask`;
    `tell(value, slope)` gives them. Intervals left of the cursor cannot hold a window above ε.
    """

    def __init__(self, points, eps, rtol):
        self.points, self.eps, self.rtol = points, eps, rtol
        self.cursor = 0
        self.ask = None
        self.done = False
        self.unresolved = 0
        self.splits = 0  # evaluations spent splitting the suspect interval (as first seen) at the cursor
        self.splitting = False
        self.split_end = math.inf
        self.widths = []  # bracket widths, for the bisection safeguard
        self.answer = math.inf
        self.converged = True

    def advance(self) -> bool:
        while not self.done:
            if self.cursor + 1 >= len(self.points):
                self.done = True  # no crossing before the cap: censored
                break
            a, b = self.points[self.cursor], self.points[self.cursor + 1]
            if b[1] >= self.eps:
                width = b[0] - a[0]
                if a[0] > 0 and width <= self.rtol * a[0]:
                    self.answer = _inside_secant(a, b, self.eps)
                    self.done = True
                    break
                self.ask = self._bracket_step(a, b)
                self.splitting = False
                return True
            if _may_exceed(a, b, self.eps) and (b[0] - a[0]) > self.rtol * max(a[0], 1e-300):
                if self.split_end == math.inf:
                    self.split_end = b[0]  # the right end of the suspect interval as first seen
                if self.splits < _MAX_SPLITS:
                    self.ask = self._split_point(a, b)
                    self.splitting = True
                    return True
                # Left unresolved: the walk goes on from the right end of the whole suspect interval.
                self.unresolved += 1
                while self.points[self.cursor + 1][0] < self.split_end:
                    self.cursor += 1
            self.cursor += 1
            if self.points[self.cursor][0] >= self.split_end:
                self.splits, self.split_end = 0, math.inf  # past the whole suspect interval: a fresh budget
        self.ask = None
        return False

    def tell(self, value, slope):
        point = (self.ask, value, slope)
        self.points.insert(self.cursor + 1, point)
        self.splits += self.splitting
        if value >= self.eps:
            del self.points[self.cursor + 2 :]  # past a point at or above ε nothing matters

    def _split_point(self, a, b):
        """A point inside a suspect interval: where the Hermite interpolant peaks, kept in its middle 80%."""
        h = b[0] - a[0]
        x = 0.5
        if a[2] > 0 > b[2]:
            x = (b[1] - a[1] - b[2] * h) / ((a[2] - b[2]) * h)  # where the tangents meet
        if self.splits % 2 == 1 or not 0.1 <= x <= 0.9:
            x = 0.5  # every other split a bisection: the interval at least halves every two steps
        return a[0] + x * h

    def _bracket_step(self, a, b):
        """The next point in the bracket `a < ε ≤ b`: Newton on `sqrt(2D)` from `a` or on `D` from `b`, else bisection."""
        ta, va, sa = a
        tb, vb, sb = b
        width = tb - ta
        self.widths.append(width)
        mid = 0.5 * (ta + tb)
        # Bisect when the last two steps did not halve the bracket.
        if len(self.widths) >= 3 and width > 0.5 * self.widths[-3]:
            self.widths.clear()
            return mid
        goal = math.sqrt(2 * self.eps)
        candidates = []
        ga = math.sqrt(2 * va)
        if ga > 0 and sa > 0:
            candidates.append((ta, ta + (goal - ga) * ga / sa))
        if sb > 0:
            candidates.append((tb, tb - (vb - self.eps) / sb))
        if math.sqrt(2 * vb) > ga:
            candidates.append((None, sqrt_secant(ta, va, tb, vb, self.eps)))
        # The smallest step first (Newton is most accurate close to its origin).
        for origin, x in sorted(candidates, key=lambda c: abs(c[1] - c[0]) if c[0] is not None else math.inf):
            if not ta < x < tb:
                continue
            if origin is not None and abs(x - origin) <= 0.25 * self.rtol * x:
                # Newton has (nearly) converged: step past its root by rtol/4, so that the bracket closes.
                x = x + math.copysign(0.25 * self.rtol * x, x - origin)
                if not ta < x < tb:
                    continue
            return x
        return mid

    def result(self):
        """`(t, unconverged, unresolved)`; a walk stopped by the iteration cap gives its bracket's midpoint."""
        if self.done:
            return self.answer, False, self.unresolved
        for k in range(self.cursor, len(self.points) - 1):
            if self.points[k + 1][1] >= self.eps:
                return 0.5 * (self.points[k][0] + self.points[k + 1][0]), True, self.unresolved + (k > self.cursor)
        return math.inf, True, self.unresolved + 1
