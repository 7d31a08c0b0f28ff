"""Fisher-whitened steering: the target effects, the natural gradient, the equal-gain search, against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fisherlib.core.errors import InputError
from fisherlib.layers import steering_pass as engine
from fisherlib.steps import natural_steering as N
from fisherlib.steps import steering_vectors as SV
from helpers.layers import VOCAB, WIDTH, _random_lm


@pytest.fixture(scope="module")
def steered():
    generator = torch.Generator().manual_seed(7)
    texts = [torch.randint(0, VOCAB, (n,), generator=generator) for n in (6, 9)]
    return engine.SteeredTexts.build(_random_lm("gpt_neox"), texts, 1, torch.ones(WIDTH, dtype=torch.float64))


def test_a_block_move_onto_the_target_set_has_no_off_target_kl():
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 30, dtype=torch.float64, generator=generator)
    target = torch.tensor([3, 7, 11])
    z = z0.clone()
    z[:, target] += 1.5  # every target token up by the same amount: mass moves between S and the rest as a block
    effects = N.target_effects(z0, z, target)
    assert torch.all(effects["gain"] > 0) and torch.all(effects["total_kl"] > 1e-3)
    assert float(effects["off_target_kl"].abs().max()) < 1e-14
    z[:, 0] += 0.7  # and a change outside S is off-target
    assert torch.all(N.target_effects(z0, z, target)["off_target_kl"] > 1e-4)


def test_natural_gradient_spends_the_least_second_order_kl_per_gain():
    generator = torch.Generator().manual_seed(1)
    B = torch.randn(12, 5, dtype=torch.float64, generator=generator)
    G = B @ B.T  # rank 5 in R^12
    g = G @ torch.randn(12, dtype=torch.float64, generator=generator)  # in the range, as the target gradient is
    x = N.natural_gradient(G, g)
    assert torch.allclose(G @ x, g, atol=1e-10)

    def cost(u):  # KL per squared first-order gain
        return float(u @ G @ u) / float(g @ u) ** 2

    for _ in range(20):
        other = g + 0.5 * torch.randn(12, dtype=torch.float64, generator=generator)
        assert cost(x) <= cost(other) + 1e-12
    assert cost(x) < cost(g)


def test_target_gradient_matches_finite_differences(steered):
    n = len(steered.ids)
    reference = steered.logits(torch.arange(n), torch.zeros(n, dtype=torch.float64))[0]
    target = torch.tensor([2, 5, 40])
    g = N.target_gradient(steered, reference, target)
    text, position = engine.token_lines(steered.lengths)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        u = torch.nn.functional.normalize(torch.randn(WIDTH, dtype=torch.float64, generator=generator), dim=0)
        h = 1e-5
        gains = [float(N._effects_at(steered, u, s * h, reference, target)["gain"].mean()) for s in (1, -1)]
        assert (gains[0] - gains[1]) / (2 * h) == pytest.approx(float(g @ u), rel=1e-6, abs=1e-10)


def test_equal_gain_search_reaches_the_gain_and_the_table_reports_it(steered):
    n = len(steered.ids)
    reference = steered.logits(torch.arange(n), torch.zeros(n, dtype=torch.float64))[0]
    target = torch.tensor([2, 5, 40])
    g = N.target_gradient(steered, reference, target)
    G = SV.population_metric(steered, top_k=VOCAB)
    table = N.compare_at_equal_gain(steered, {"euclidean_gradient": g, "natural_gradient": N.natural_gradient(G, g)}, target, 0.2, 200.0, rtol=1e-6)
    assert list(table.direction) == ["euclidean_gradient", "natural_gradient"] and table.reached.all()
    np.testing.assert_allclose(table.gain, 0.2, rtol=1e-4)
    missed = N.compare_at_equal_gain(steered, {"tiny": g}, target, 1e6, 1.0)
    assert not missed.reached.iloc[0] and missed.alpha.iloc[0] == 1.0 and math.isfinite(missed.gain.iloc[0])


def test_population_metric_gives_the_mean_truncated_curvature_of_any_push(steered):
    from fisherlib.core.fisher import curvature

    top_k = 20
    G = SV.population_metric(steered, top_k)
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):
        u = torch.randn(WIDTH, dtype=torch.float64, generator=generator)
        pushed = engine.SteeredTexts(steered.network, steered.hook, steered.ids, steered.lengths, u)
        z, a, _ = engine.steering_velocities(pushed)
        text, position = engine.token_lines(steered.lengths)
        p = torch.softmax(z[text, position], -1)
        truncated = curvature(p, a[text, position][:, None, :], top_k=top_k)[:, 0]
        # The metric multiplies the head input's velocity by W in float64; the brute force's logit velocities are
        # the float32 model's own product: they agree to float32 rounding.
        assert float(u @ G @ u) == pytest.approx(float(truncated.mean()), rel=1e-6)


def test_characteristic_tokens_and_the_vectors():
    p = torch.full((4, 10), 0.1, dtype=torch.float64)
    p[:2, 3], p[:2, 4] = 0.4, 0.05  # domain a favours token 3
    p[2:, 7] = 0.4
    p = p / p.sum(-1, keepdim=True)
    domains = ["a", "a", "b", "b"]
    assert N.characteristic_tokens(p, domains, "a", "b", 1).tolist() == [3]
    with pytest.raises(InputError, match="fewer than"):
        N.characteristic_tokens(p, domains, "a", "b", 11)
    residuals = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    assert SV.mean_difference(residuals, domains, "a", "b").tolist() == [2.0, -3.0]
    with pytest.raises(InputError, match="no position of domain"):
        SV.mean_difference(residuals, domains, "a", "c")
    with pytest.raises(InputError, match="zero"):
        SV.unit(torch.zeros(3))
    first, second = SV.contrastive_contexts([torch.tensor([1, 2])], [5], [6])
    assert first[0].tolist() == [1, 2, 5] and second[0].tolist() == [1, 2, 6]
    G = torch.diag(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64))
    assert SV.top_eigenvector(G).tolist() == [0.0, 1.0, 0.0]
