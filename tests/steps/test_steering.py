"""The steering budget's API: the per-token table, the population budget and its methods, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import fisherlib as fl
from fisherlib.core.boundary import empirical_boundary
from fisherlib.core.errors import InputError
from fisherlib.layers import steering_pass as engine
from fisherlib.steps import steering as S
from helpers.layers import VOCAB, WIDTH, _random_lm


@pytest.fixture(scope="module")
def model():
    return _random_lm("llama")


def _texts(lengths=(7, 12, 9), seed: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]


def _vector_of(width: int, seed: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(width, dtype=torch.float64, generator=generator)
    return v / v.norm()


def _vector(seed: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(WIDTH, dtype=torch.float64, generator=generator)
    return v / v.norm()


def test_the_names_researchers_import():
    assert fl.steering_budget is S.steering_budget and fl.steering_scale is S.steering_scale


def test_budget_table_and_the_closed_form_at_small_eps(model):
    table = S.steering_budget(model, _texts(), 1, _vector(), [1e-6, 0.3], rtol=1e-9)
    assert list(table.columns) == S.BUDGET_COLUMNS
    assert len(table) == 2 * (7 + 12 + 9)
    assert table.groupby("text")["position"].max().tolist() == [6, 11, 8]
    small = table[table["eps"] == 1e-6]
    # The closed form is the second-order limit: exact as ε -> 0 at every token.
    ratio = small["alpha_pred"] / small["alpha_emp"]
    assert np.all(np.abs(ratio - 1) < 5e-3), ratio.describe()
    large = table[table["eps"] == 0.3]
    assert np.abs(large["alpha_pred"] / large["alpha_emp"] - 1).max() > 1e-2  # and biased at large ε


def test_at_the_head_the_push_is_affine_and_needs_no_attention(model):
    """At the LM head's input every token's logits move by α W v alone: `all` equals `target`, `alpha_emp` is
    the study's exact boundary on `W v`, and the quartic beats the closed form."""
    texts = _texts()
    v = _vector()
    both = {pos: S.steering_budget(model, texts, "head", v, [0.05, 1.0], positions=pos, rtol=1e-10) for pos in S.POSITIONS}
    merged = both["all"].merge(both["target"], on=["text", "position", "eps"], suffixes=("", "_target"))
    assert len(merged) == len(both["target"]) == 2 * (6 + 11 + 8)
    for column in ("curv", "alpha_pred", "alpha_emp"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_target"], rtol=1e-7)
    steered = engine.SteeredTexts.build(model, texts, "head", v)
    z, a, _ = engine.steering_velocities(steered)
    text, position = engine.token_lines(steered.lengths)
    W = model.get_output_embeddings().weight.detach().double()
    np.testing.assert_allclose(a[text, position].numpy(), (W @ v).expand(len(text), -1).numpy(), rtol=1e-9, atol=1e-12)
    exact = empirical_boundary(z[text, position], a[text, position][:, None, :], torch.tensor([0.05, 1.0], dtype=torch.float64))[:, 0]
    np.testing.assert_allclose(both["all"]["alpha_emp"].to_numpy().reshape(-1, 2), exact.numpy(), rtol=1e-8)
    table = both["all"][both["all"]["eps"] == 0.05]
    quartic_error = np.abs(table["alpha_quartic"] / table["alpha_emp"] - 1)
    closed_error = np.abs(table["alpha_pred"] / table["alpha_emp"] - 1)
    assert (quartic_error < closed_error).mean() > 0.8


def test_inner_layer_all_positions_differ_from_target_only(model):
    """At an inner layer the push reaches token t also through attention from the tokens before it."""
    v = _vector()
    both = {pos: S.steering_budget(model, _texts(), 0, v, [0.1], positions=pos, exact=False) for pos in S.POSITIONS}
    assert both["all"]["alpha_emp"].isna().all()
    merged = both["all"].merge(both["target"], on=["text", "position", "eps"], suffixes=("", "_target"))
    assert np.abs(merged["curv"] / merged["curv_target"] - 1).median() > 1e-3


def test_population_methods_agree_where_they_must(model):
    texts, v = _texts(), _vector()
    eps, quantile, rtol = 0.3, 0.9, 1e-7
    scales = {m: S.steering_scale(model, texts, 1, v, eps=eps, quantile=quantile, method=m, rtol=rtol) for m in S.METHODS}
    table = S.steering_budget(model, texts, 1, v, [eps], rtol=1e-10)
    assert not table["nonmonotone"].any()
    # closed / quartic: order statistics of the per-token predictions; exact: of the per-token crossings.
    forward = {m: S.steering_scale(model, texts, 1, v, eps=eps, quantile=quantile, method=m, tangent="forward") for m in ("closed", "quartic")}
    assert forward["closed"].alpha == engine.population_alpha(torch.tensor(table["alpha_pred"].to_numpy()), quantile)
    assert forward["quartic"].alpha == engine.population_alpha(torch.tensor(table["alpha_quartic"].to_numpy()), quantile)
    assert forward["closed"].passes == len(texts)
    # The default central difference lands far closer to forward mode than the closed form to the exact budget.
    for method in ("closed", "quartic"):
        assert scales[method].alpha == pytest.approx(forward[method].alpha, rel=1e-3)
        assert scales[method].alpha != forward[method].alpha
    crossing = engine.population_alpha(torch.tensor(table["alpha_emp"].to_numpy()), quantile)
    assert abs(scales["exact"].alpha / crossing - 1) < 2 * rtol
    assert abs(scales["bisection"].alpha / crossing - 1) < 2 * rtol
    assert scales["closed"].passes == 3 * len(texts) < scales["exact"].passes < scales["bisection"].passes
    assert all(s.n_tokens == 7 + 12 + 9 for s in scales.values())
    # Steering away is the same question for -v: the closed form is symmetric, the exact budget need not be.
    away = S.steering_scale(model, texts, 1, -v, eps=eps, quantile=quantile, method="closed")
    assert away.alpha == pytest.approx(scales["closed"].alpha, rel=1e-12)


def test_population_quantile_is_inverted_cdf():
    values = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7], dtype=torch.float64)
    for q in (0.1, 0.5, 0.8, 0.95):
        assert S.population_quantile(values, q) == float(np.quantile(values.numpy(), q, method="inverted_cdf"))


def test_bad_input_gets_one_clear_error(model):
    texts, v = _texts(), _vector()
    with pytest.raises(InputError, match="positions must be one of"):
        S.steering_budget(model, texts, 1, v, 0.1, positions="last")
    with pytest.raises(InputError, match="positive finite"):
        S.steering_budget(model, texts, 1, v, [0.1, -1])
    with pytest.raises(InputError, match="method must be one of"):
        S.steering_scale(model, texts, 1, v, method="newton")
    with pytest.raises(InputError, match="quantile"):
        S.steering_scale(model, texts, 1, v, quantile=1.0)
    with pytest.raises(InputError, match="zero"):
        S.steering_scale(model, texts, 1, torch.zeros(WIDTH))
    with pytest.raises(InputError, match="layer must be"):
        S.steering_budget(model, texts, 99, v, 0.1)
    with pytest.raises(InputError, match="empty"):
        S.steering_scale(model, [], 1, v)
    limit = model.config.max_position_embeddings
    long = _texts((limit + 1, 7))
    with pytest.raises(InputError, match=f"text 0 has {limit + 1} tokens, more than the model's context of {limit} positions"):
        S.steering_budget(model, long, 1, v, 0.1)
    assert len(S.steering_budget(model, _texts((limit,)), 1, v, 0.1, positions="target"))  # the whole context is fine
    assert math.isfinite(S.steering_scale(model, texts, 1, v, eps=0.1).alpha)


@pytest.mark.integration
def test_strings_are_tokenised_as_the_model_is_run_and_match_an_independent_brute_force(shared_dir):
    """On a BOS-adding tokenizer (stories260K's Llama tokenizer) a string's budget is its `tokenizer(text)` ids' budget,
    BOS included, and agrees with a hand-written hook, full float64 passes, a grid and bisections."""
    from fisherlib.models.loading import load_model

    model = load_model(shared_dir / "fixtures" / "models" / "stories260K" / "hf", device="cpu", dtype="float64")
    text, layer, eps = "Once upon a time, there was a little cat.", 2, 0.1
    ids = model.tokenizer(text)["input_ids"]
    assert ids[0] == model.tokenizer.bos_token_id, "the fixture's tokenizer adds a BOS"
    v = _vector_of(model.model.config.hidden_size)
    from_string = S.steering_budget(model, [text], layer, v, eps)
    from_ids = S.steering_budget(model, [ids], layer, v, eps)
    pd.testing.assert_frame_equal(from_string, from_ids)
    assert from_string["token"].tolist() == ids and from_string["position"].tolist() == list(range(len(ids)))
    without = S.steering_budget(model, [text], layer, v, eps, add_special_tokens=False, exact=False)
    assert without["token"].tolist() == ids[1:]  # the option leaves the BOS out, and the table says which tokens it holds

    network, input_ids = model.model, torch.tensor([ids])

    def kl_per_token(alpha: float) -> torch.Tensor:
        handle = network.model.layers[layer].register_forward_pre_hook(lambda module, args: (args[0] + alpha * v, *args[1:]))
        try:
            with torch.no_grad():
                return network(input_ids).logits[0].double().log_softmax(-1)
        finally:
            handle.remove()

    base = kl_per_token(0.0)
    kl = lambda alpha: (base.exp() * (base - kl_per_token(alpha))).sum(-1)  # noqa: E731 - KL(p ‖ p_α) per token
    grid = torch.logspace(-2, 2, 60, dtype=torch.float64)
    values = torch.stack([kl(float(a)) for a in grid])  # [J, T]
    compared = 0
    for position in range(len(ids)):
        hit = torch.nonzero(values[:, position] >= eps).flatten()
        if not len(hit):
            continue
        j = int(hit[0])
        lo, hi = (float(grid[j - 1]) if j else 0.0), float(grid[j])
        for _ in range(34):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if float(kl(mid)[position]) >= eps else (mid, hi)
        got = float(from_string["alpha_emp"].iloc[position])
        assert got == pytest.approx(0.5 * (lo + hi), rel=1e-5), position
        compared += 1
    assert compared >= len(ids) - 1, f"only {compared} of {len(ids)} tokens crossed ε within the grid"


def test_the_central_difference_matches_forward_mode_in_float32():
    """In float32 the step `DIFFERENCE_STEPS` balances truncation against rounding: α_pred within 1e-3 of forward mode's."""
    model = _random_lm("llama").float()
    texts, v = _texts(), _vector()
    steered = engine.SteeredTexts.build(model, texts, 1, v)
    text, position = engine.token_lines(steered.lengths)
    alphas = {}
    for tangent in engine.TANGENTS:
        z, a, r_norm = engine.steering_velocities(steered, tangent=tangent)
        _, pred, _ = S._predictions(torch.softmax(z[text, position], -1), a[text, position], np.array([1.0]), quartic=False)
        alphas[tangent] = pred[:, 0]
    assert engine.velocity_passes(steered, "difference") == 3 * len(texts)
    error = (alphas["difference"] / alphas["forward"] - 1).abs()
    assert float(error.max()) < 1e-3 and float(error.median()) < 2e-4
    with pytest.raises(InputError, match="tangent"):
        engine.steering_velocities(steered, tangent="backward")


def test_steering_methods_are_one_table():
    """`steering_scale` dispatches through `STEERING_METHODS`: a method added there is callable by name."""
    assert S.METHODS == tuple(S.STEERING_METHODS) == ("closed", "quartic", "exact", "bisection")
    model = _random_lm("llama")
    texts, v = _texts(), _vector()
    halved = S.SteeringMethod("half_closed", "half the closed form (a test's method)", lambda problem: 0.5 * S._closed(problem))
    S.STEERING_METHODS["half_closed"] = halved
    try:
        found = S.steering_scale(model, texts, 1, v, eps=0.3, method="half_closed")
    finally:
        del S.STEERING_METHODS["half_closed"]
    closed = S.steering_scale(model, texts, 1, v, eps=0.3, method="closed")
    assert found.alpha == 0.5 * closed.alpha and found.passes == closed.passes and found.method == "half_closed"
