"""The steering push (`α v` at every position) against brute force: central differences, autograd second
derivatives of the KL, and a dense scan with bisection of full forward passes."""

from __future__ import annotations

import math

import pytest
import torch

from fisherlib.core.errors import InputError
from fisherlib.layers import steering_pass as S
from helpers.layers import VOCAB, WIDTH, _random_lm

LAYER = 1


def _texts(lengths=(6, 11, 9), seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def _vector(seed: int = 4, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(WIDTH, dtype=torch.float64, generator=generator)
    return scale * v / v.norm()


@pytest.fixture(scope="module", params=["gpt_neox", "llama", "gpt2"])
def steered(request):
    model = _random_lm(request.param)
    return S.SteeredTexts.build(model, _texts(), LAYER, _vector())


def _kl_at(steered, alpha: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL `[N, T]` of every text with its own `alpha [N]`, from plain forward passes (padding slots: junk)."""
    rows = torch.arange(len(steered.ids))
    if z0 is None:
        z0, _, _ = steered.logits(rows, torch.zeros(len(rows), dtype=torch.float64))
    z, _, _ = steered.logits(rows, alpha)
    log_p, log_q = torch.log_softmax(z0, -1), torch.log_softmax(z, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def test_velocities_match_central_differences(steered):
    z, a, _ = S.steering_velocities(steered)
    h = 1e-5
    rows = torch.arange(len(steered.ids))
    plus, _, _ = steered.logits(rows, torch.full((len(rows),), h, dtype=torch.float64))
    minus, _, _ = steered.logits(rows, torch.full((len(rows),), -h, dtype=torch.float64))
    difference = (plus - minus) / (2 * h)
    for i, n in enumerate(steered.lengths.tolist()):
        error = (difference[i, :n] - a[i, :n]).abs().max() / a[i, :n].abs().max()
        assert error < 1e-7, (i, float(error))
    # Every position moves, not only the last: steering pushes them all.
    assert bool((a[0, : steered.lengths[0]].abs().amax(-1) > 0).all())


def test_curvature_is_the_second_derivative_of_the_kl(steered):
    """Var_p[a_t] = d²KL(p_t ‖ q_t(α))/dα² at α = 0, by double backward through the network, per token."""
    found = S.steering_boundary(steered, [0.01], alpha_max=1.0)  # only for its curv
    text, position = S.token_lines(steered.lengths)
    network, hook = steered.network, steered.hook
    second = []
    for i, n in enumerate(steered.lengths.tolist()):
        alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)

        def push(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = hidden + alpha * steered.v
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        ids = steered.ids[i : i + 1, :n]
        # transformers' own eager attention (not fisherlib's; the fused kernels have no double backward),
        # whose softmax runs in float32: hence the tolerance below.
        network.set_attn_implementation("eager")
        handle = hook.register_forward_pre_hook(push, with_kwargs=True)
        try:
            with torch.no_grad():
                z0 = network(input_ids=ids).logits[0]
            z = network(input_ids=ids).logits[0]
        finally:
            handle.remove()
            network.set_attn_implementation("sdpa")
        log_p = torch.log_softmax(z0, -1)
        kl = (log_p.exp() * (log_p - torch.log_softmax(z, -1))).sum(-1)  # [n]
        for t in range(n):
            (first,) = torch.autograd.grad(kl[t], alpha, create_graph=True)
            (d2,) = torch.autograd.grad(first, alpha, retain_graph=True)
            second.append(float(d2))
    second = torch.tensor(second, dtype=torch.float64)
    assert torch.allclose(found["curv"], second, rtol=1e-5, atol=1e-12), (found["curv"][:5], second[:5])


def _dense_first_crossing(steered, eps: float, alpha_max: float, n_grid: int = 240, n_bisect: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force `[L]`: a geometric grid of α up to `alpha_max` (one pass of every text per point), the first
    grid point at or above ε, then bisection of its bracket, each step a full pass. Also whether the KL fell
    anywhere on the grid before the crossing (non-monotone)."""
    text, position = S.token_lines(steered.lengths)
    z0, _, _ = steered.logits(torch.arange(len(steered.ids)), torch.zeros(len(steered.ids), dtype=torch.float64))
    grid = torch.logspace(-3, math.log10(alpha_max), n_grid, dtype=torch.float64)
    kl = torch.stack([_kl_at(steered, torch.full((len(steered.ids),), float(g), dtype=torch.float64), z0)[text, position] for g in grid])  # [J, L]
    L = len(text)
    hit = kl >= eps
    first = torch.where(hit.any(0), hit.float().argmax(0), torch.full((L,), -1))
    falls = torch.zeros(L, dtype=torch.bool)
    lo = torch.zeros(L, dtype=torch.float64)
    hi = torch.full((L,), math.inf, dtype=torch.float64)
    for line in range(L):
        j = int(first[line])
        if j < 0:
            continue
        falls[line] = bool((kl[1 : j + 1, line] < kl[:j, line]).any())
        lo[line], hi[line] = (grid[j - 1] if j > 0 else 0.0), grid[j]
    live = torch.isfinite(hi)
    for _ in range(n_bisect):
        mid = 0.5 * (lo + hi)
        for line in torch.nonzero(live).flatten().tolist():
            alpha = torch.zeros(len(steered.ids), dtype=torch.float64)
            alpha[text[line]] = mid[line]
            value = _kl_at(steered, alpha, z0)[text[line], position[line]]
            if value >= eps:
                hi[line] = mid[line]
            else:
                lo[line] = mid[line]
    return torch.where(live, 0.5 * (lo + hi), math.inf), falls


def test_alpha_emp_is_the_first_crossing_of_dense_bisection():
    """At large ε the KL along α saturates and falls on some tokens: the first crossing is still found."""
    model = _random_lm("llama")
    steered = S.SteeredTexts.build(model, _texts(), 0, _vector(scale=1.0))
    eps, alpha_max = 0.5, 40.0
    found = S.steering_boundary(steered, [0.05, eps], rtol=1e-8, alpha_max=alpha_max)
    reference, falls = _dense_first_crossing(steered, eps, alpha_max)
    got = found["alpha_emp"][:, 1]
    both = torch.isfinite(reference)
    assert bool((falls & both).any()) and bool(found["nonmonotone"].any()), "the test needs lines that fall before they cross"
    assert bool(both.sum() >= 5) and torch.equal(both, torch.isfinite(got))
    relative = (got[both] - reference[both]).abs() / reference[both]
    assert float(relative.max()) < 1e-6, relative.max()


def test_population_alpha_is_the_order_statistic_of_the_crossings():
    model = _random_lm("llama")
    steered = S.SteeredTexts.build(model, _texts(), LAYER, _vector(scale=1.0))
    found = S.steering_boundary(steered, [0.5], rtol=1e-9)
    alphas = found["alpha_emp"][:, 0]
    quantile = 0.8
    alpha = S.population_alpha(alphas, quantile)
    k = S.order_statistic_rank(len(alphas), quantile)
    below = S.population_kl(steered, alpha * (1 - 1e-6))
    above = S.population_kl(steered, alpha * (1 + 1e-6))
    # The ⌈qL⌉-th smallest KL is below ε just before α and at or above it just after.
    assert float(torch.sort(below).values[k - 1]) < 0.5 <= float(torch.sort(above).values[k - 1])


def test_bad_steering_inputs_are_refused():
    model = _random_lm("llama")
    texts = _texts()
    with pytest.raises(InputError, match="zero"):
        S.SteeredTexts.build(model, texts, LAYER, torch.zeros(WIDTH))
    with pytest.raises(InputError, match="NaN or inf"):
        S.SteeredTexts.build(model, texts, LAYER, torch.full((WIDTH,), math.nan))
    with pytest.raises(InputError, match="width d = 32"):
        S.SteeredTexts.build(model, texts, LAYER, torch.ones(WIDTH + 1))
    with pytest.raises(InputError, match="layer must be"):
        S.SteeredTexts.build(model, texts, 7, torch.ones(WIDTH))
    with pytest.raises(InputError, match="empty"):
        S.SteeredTexts.build(model, [], LAYER, torch.ones(WIDTH))
    with pytest.raises(InputError, match="vocabulary"):
        S.SteeredTexts.build(model, [torch.tensor([1, VOCAB + 3])], LAYER, torch.ones(WIDTH))
    with pytest.raises(InputError, match="tokenizer"):
        S.SteeredTexts.build(model, ["a string"], LAYER, torch.ones(WIDTH))
