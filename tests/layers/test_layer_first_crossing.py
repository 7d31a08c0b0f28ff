"""`layer_boundary`'s first crossing (`fisherlib.layers.first_crossing.first_crossing`) on lines built to be non-monotone.

Synthetic lines: `D(t) = ½ s² + bump(s)`, `s = sqrt(κ) t`, a Gaussian bump whose window above ε lies between
two points of the scan (ratio √2), with its exact first crossing from a dense grid and bisection. Real lines:
inner layers of a small float64 LM, against a dense full-context brute force.
"""

from __future__ import annotations

import math

import pytest
import torch

from fisherlib.layers import pullback as L
from fisherlib.layers.first_crossing import first_crossing

RATIO = 2**0.5


class Bumps:
    """Lines `D(s) = ½ s² + h exp(−(s − c)² / 2w²)`, `s = sqrt(κ) t`, with exact values and slopes."""

    def __init__(self, kappa, c, w, h):
        self.kappa, self.c, self.w, self.h = (torch.as_tensor(x, dtype=torch.float64) for x in (kappa, c, w, h))
        self.calls = 0

    def value_slope(self, lines, t):
        k, c, w, h = self.kappa[lines], self.c[lines], self.w[lines], self.h[lines]
        s = torch.sqrt(k) * t
        g = h * torch.exp(-((s - c) ** 2) / (2 * w**2))
        return 0.5 * s**2 + g, torch.sqrt(k) * (s - g * (s - c) / w**2)

    def evaluate(self, lines, t, slopes=True):
        self.calls += 1
        value, slope = self.value_slope(lines, t)
        return value, slope if slopes else None

    def first_crossing(self, eps: float) -> torch.Tensor:
        """The exact first crossing per line: a grid of 10⁵ points in s, then 60 bisection steps."""
        n = len(self.kappa)
        s = torch.linspace(0, 4 * math.sqrt(2 * eps) + 4, 100_001, dtype=torch.float64)
        lines = torch.arange(n)
        value = 0.5 * s**2 + self.h[:, None] * torch.exp(-((s - self.c[:, None]) ** 2) / (2 * self.w[:, None] ** 2))
        k = (value >= eps).long().argmax(1)
        lo, hi = s[k - 1], s[k]
        for _ in range(60):
            mid = (lo + hi) / 2
            below = self.value_slope(lines, mid / torch.sqrt(self.kappa))[0] < eps
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2 / torch.sqrt(self.kappa)


def _solve(bumps, eps, rtol=1e-6, cap=1e6):
    n = len(bumps.kappa)
    return first_crossing(bumps.evaluate, bumps.kappa, torch.full((n,), cap, dtype=torch.float64),
                             torch.as_tensor(eps, dtype=torch.float64), rtol, RATIO)  # fmt: skip


def _windows(n=40, seed=0):
    """Bumps peaking above ε = 1 between the scan points s = 2^{-1/2} and 1, falling at s = 1."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
    c = u(0.85, 0.90)
    w = u(0.06, 0.09)
    peak = u(1.02, 1.2)  # the bump's top above ε = 1
    h = peak - 0.5 * c**2
    kappa = 10 ** u(-2, 3)
    return Bumps(kappa, c, w, h)


def test_a_window_above_eps_between_scan_points_is_found():
    bumps = _windows()
    value, slope = bumps.value_slope(torch.arange(40), 1 / torch.sqrt(bumps.kappa))
    assert (value < 1).all() and (slope < 0).all()  # the scan point after the window: below ε, falling
    truth = bumps.first_crossing(1.0)
    assert (truth * torch.sqrt(bumps.kappa) < 0.9).all() and (truth * torch.sqrt(bumps.kappa) > 2**-0.5).all()
    for eps in ([1.0], [0.01, 1.0], [1.0, 5.0]):
        t, _, unconverged, unresolved = _solve(bumps, eps)
        e = eps.index(1.0)
        assert not unconverged.any() and not unresolved.any()
        assert ((t[:, e] - truth).abs() <= 1e-6 * truth).all(), (t[:, e] / truth - 1).abs().max()


def test_the_answer_for_one_eps_does_not_depend_on_the_others():
    bumps = _windows(seed=1)
    alone = _solve(bumps, [1.0])[0][:, 0]
    for others in ([0.01, 1.0], [1.0, 5.0], [1e-4, 0.3, 1.0, 2.0], [5.0, 1.0, 0.02]):
        with_others = _solve(bumps, others)[0][:, others.index(1.0)]
        assert torch.equal(with_others, alone), others


@pytest.mark.parametrize("rtol", [1e-6, 1e-8, 1e-10])
def test_rtol_holds_on_smooth_and_bumpy_lines(rtol):
    g = torch.Generator().manual_seed(3)
    n = 60
    kappa = 10 ** (-2 + 5 * torch.rand(n, generator=g, dtype=torch.float64))
    c = 0.2 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
    w = torch.minimum(0.05 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64), c / 5)  # D(0) = 0 to 1e-5
    h = torch.where(torch.arange(n) % 2 == 0, 0.0, 2 * torch.rand(n, generator=g, dtype=torch.float64))
    bumps = Bumps(kappa, c, w, h)
    eps = [0.01, 0.5, 1.0, 3.0]
    t, _, unconverged, unresolved = _solve(bumps, eps, rtol=rtol)
    assert not unconverged.any() and not unresolved.any()
    for e, x in enumerate(eps):
        truth = bumps.first_crossing(x)
        err = ((t[:, e] - truth).abs() / truth).max()
        assert err <= rtol, (x, float(err))


def test_an_interval_that_cannot_be_resolved_is_reported():
    """Slopes that flip sign at every point, values just below ε: every split stays suspect."""

    def evaluate(lines, t, slopes=True):
        s = t.clone()
        inside = (s > 0.6) & (s < 0.8)  # holds the scan point 2^{-1/2}
        value = torch.where(inside, torch.full_like(s, 1 - 1e-12), 0.5 * s**2)
        slope = torch.where(inside, 1e3 * torch.sign(torch.sin(1e9 * s)), s)
        return value, slope if slopes else None

    curv = torch.ones(1, dtype=torch.float64)
    t, _, unconverged, unresolved = first_crossing(evaluate, curv, torch.full((1,), 1e6, dtype=torch.float64),
                                                      torch.tensor([1.0], dtype=torch.float64), 1e-12, RATIO)  # fmt: skip
    assert unresolved[0, 0] >= 1 and not unconverged.any()
    assert abs(float(t[0, 0]) - math.sqrt(2)) <= 1e-12 * math.sqrt(2)  # past the unresolved interval: ½ s² = 1


# --- real lines, against a dense full-context brute force ---------------------------------------------


def _dense_reference(model, contexts, layer, U, eps, ratio=1.02, n_bisect=40):
    """First crossings `[P, D, E]`: a geometric grid (ratio 1.02, from 1/20 of the smallest `t_pred`) of
    full-context forward passes up to the first point ≥ ε, then bisection to ~1e-12; inf where none by the grid's end `t_end [P, D]` (10·t_pred(ε_max))."""
    P, D, d = U.shape
    eps = torch.as_tensor(eps, dtype=torch.float64)
    curv = L.layer_curvature(model, contexts, layer, U)["curv"]
    z0 = L.full_context_logits(model, contexts, layer, torch.zeros(P, 1, d, dtype=torch.float64))[:, 0]
    log_p = torch.log_softmax(z0, -1)

    def divergence(t):  # [P, D, M] -> [P, D, M]
        M = t.shape[-1]
        z = L.full_context_logits(model, contexts, layer, (t[..., None] * U[:, :, None]).reshape(P, D * M, d), batch_size=256)
        lq = torch.log_softmax(z, -1).reshape(P, D, M, -1)
        return (log_p.exp()[:, None, None] * (log_p[:, None, None] - lq)).sum(-1)

    t_pred = torch.sqrt(2 * eps / curv[..., None])
    K = int(math.log(200 * float(eps.max() / eps.min()) ** 0.5) / math.log(ratio)) + 1
    grid = t_pred[..., :1] / 20 * ratio ** torch.arange(K, dtype=torch.float64)
    values = torch.cat([divergence(grid[..., k : k + 64]) for k in range(0, K, 64)], -1)
    above = values[..., None, :] >= eps[:, None]  # [P, D, E, K]
    first = above.long().argmax(-1)
    has = above.any(-1)
    hi = grid[..., None, :].expand_as(above).gather(-1, first[..., None])[..., 0]
    lo = torch.where(first > 0, grid[..., None, :].expand_as(above).gather(-1, (first - 1).clamp_min(0)[..., None])[..., 0], 0.0)
    hi = torch.where(has, hi, torch.ones_like(hi))
    for _ in range(n_bisect):
        mid = (lo + hi) / 2
        below = divergence(mid.reshape(P, D, -1)).reshape(mid.shape) < eps
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    crossings = (above[..., 1:] & ~above[..., :-1]).sum(-1) + above[..., 0].long()
    return torch.where(has, (lo + hi) / 2, math.inf), crossings, grid[..., -1]


@pytest.fixture(scope="module")
def stories_lines(shared_dir):
    """stories260K in float64 (norms too), 10 positions from GSM8K and WikiText-2, 3 random unit directions each."""
    import fisherlib as fl
    from fisherlib.data.corpora import load_corpus
    from helpers.layers import _norms_in_model_dtype

    model = fl.load_model(shared_dir / "fixtures" / "models" / "stories260K" / "hf", device="cpu", dtype=torch.float64)
    _norms_in_model_dtype(model.model)
    corpora = shared_dir / "fixtures" / "corpora"
    g = torch.Generator().manual_seed(0)
    contexts = []
    for corpus in (corpora / "gsm8k" / "test.jsonl", corpora / "wikitext2" / "wiki.test.raw.head"):
        docs = [d for d in load_corpus(str(corpus), 20, 0, tokenizer=model.tokenizer)]
        for doc in docs:
            ids = model.tokenizer(doc.text, truncation=True, max_length=64)["input_ids"]
            if len(ids) > 10 and len(contexts) < (5 if corpus.parent.name == "gsm8k" else 10):
                contexts.append(torch.tensor(ids[: int(torch.randint(9, len(ids), (1,), generator=g)) + 1]))
    U = torch.nn.functional.normalize(torch.randn(len(contexts), 3, 64, dtype=torch.float64, generator=g), dim=-1)
    return model, contexts, U


@pytest.mark.integration
@pytest.mark.parametrize("layer", [0, 2])
def test_stories_first_crossings_against_dense_brute_force(stories_lines, layer):
    model, contexts, U = stories_lines
    eps = [0.01, 1.0, 5.0]
    reference, crossings, t_end = _dense_reference(model, contexts, layer, U, eps)
    if layer == 0:  # the case: at the first block some of these lines cross an ε more than once
        assert (crossings >= 2).sum() >= 1
    for rtol in (1e-6, 1e-8):
        t, info = L.layer_boundary(model, contexts, layer, U, eps, rtol=rtol, return_info=True)
        seen = torch.isfinite(reference) | (t <= t_end[..., None])  # censoring is compared within the grid
        assert torch.equal(torch.isinf(t)[seen], torch.isinf(reference)[seen])
        finite = torch.isfinite(reference)
        error = ((t - reference).abs() / reference)[finite]
        assert float(error.max()) <= rtol, (rtol, float(error.max()), int((error > rtol).sum()))
        assert not info["unresolved"].any() and not info["unconverged"].any()
    # Each ε alone, in other company, other batches and chunks: the same answer.
    together = L.layer_boundary(model, contexts, layer, U, eps)
    for e, x in enumerate(eps):
        alone = L.layer_boundary(model, contexts, layer, U, [x], batch_size=3)[..., 0]
        torch.testing.assert_close(alone, together[..., e], rtol=1e-9, atol=0)
    split = L.layer_boundary(model, contexts, layer, U, [1.0, 0.01], memory_budget=1)
    torch.testing.assert_close(split, together[..., [1, 0]], rtol=1e-9, atol=0)


@pytest.mark.integration
def test_stories_float32_reaches_its_stated_accuracy(stories_lines, shared_dir):
    """In float32 the logits' rounding bounds `t` to ~2e-5 relative (docstring of `layer_boundary`), whatever `rtol`."""
    import fisherlib as fl

    model64, contexts, U = stories_lines
    model32 = fl.load_model(shared_dir / "fixtures" / "models" / "stories260K" / "hf", device="cpu", dtype=torch.float32)
    eps = [0.01, 1.0]
    reference, _, _ = _dense_reference(model64, contexts, 2, U, eps)
    finite = torch.isfinite(reference)
    for rtol in (1e-6, 1e-4):
        t = L.layer_boundary(model32, contexts, 2, U, eps, rtol=rtol)
        assert torch.equal(torch.isfinite(t), finite)
        assert float(((t - reference).abs() / reference)[finite].max()) <= 5e-5
