"""The layer study against brute force: full-context forward passes with a hook, bisection, finite differences."""

from __future__ import annotations

import math

import pytest
import torch

import fisherlib as fl
from fisherlib.core.bisection import bisection_boundary
from fisherlib.core.boundary import empirical_boundary
from fisherlib.core.errors import FisherlibError
from fisherlib.layers import pullback as L
from helpers.layers import VOCAB, WIDTH, _contexts, _directions, _divergence_full_context, _norms_in_model_dtype, _random_lm


def _bisection_reference(model, contexts, layer, U, eps: float, n_bisect: int = 60) -> torch.Tensor:
    """Brute force: doubling from 1e-3 until the divergence reaches ε, then `n_bisect` bisection steps, full context."""
    P, D, _ = U.shape
    return bisection_boundary(
        lambda t: _divergence_full_context(model, contexts, layer, U, t), eps,
        torch.full((P, D), 1e-3, dtype=torch.float64), n_bisect=n_bisect,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["gpt_neox", "llama", "gpt2"])
def arch_model(request):
    return request.param, _random_lm(request.param)


# --- the head: today's study ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_head_velocities_are_W_u_and_residuals_are_h(kind):
    model = _random_lm(kind)
    contexts = _contexts()
    U = _directions(len(contexts), 4)
    A = L.layer_velocities(model, contexts, "head", U)
    W = model.get_output_embeddings().weight.double()
    torch.testing.assert_close(A, U @ W.T, rtol=1e-10, atol=1e-12)
    r = L.layer_residuals(model, contexts, "head")
    captured = torch.stack([
        fl.capture_final_residual(model, c[None], None, [0], [len(c) - 1]).double()[0] for c in contexts
    ])  # fmt: skip
    # capture_final_residual returns float32.
    torch.testing.assert_close(r, captured, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
@pytest.mark.parametrize("generic", [False, True])
def test_head_boundary_equals_empirical_boundary(divergence, generic):
    model = _random_lm("gpt_neox")
    contexts = _contexts()
    U = _directions(len(contexts), 5)
    eps = [1e-3, 1e-2, 0.1, 0.5]
    t = L.layer_boundary(model, contexts, "head", U, eps, divergence=divergence, _generic=generic)
    z = L.full_context_logits(model, contexts, "head", torch.zeros(len(contexts), 1, WIDTH, dtype=torch.float64))[:, 0]
    A = U @ model.get_output_embeddings().weight.double().T
    expected = empirical_boundary(z, A, eps, divergence=divergence)
    assert torch.equal(torch.isinf(t), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert finite.float().mean() > 0.5
    torch.testing.assert_close(t[finite], expected[finite], rtol=1e-6, atol=0)


# --- inner layers -----------------------------------------------------------------------------------


def test_inner_boundary_matches_full_context_bisection(arch_model):
    kind, model = arch_model
    contexts = _contexts()
    U = _directions(len(contexts), 3)
    for layer in [0, L.n_layers(model) - 1, L.n_layers(model)]:
        for eps in (1e-3, 0.05):
            t = L.layer_boundary(model, contexts, layer, U, [eps])[..., 0]
            reference = _bisection_reference(model, contexts, layer, U, eps)
            torch.testing.assert_close(t, reference, rtol=1e-6, atol=0, msg=f"{kind} layer {layer} eps {eps}")


def test_velocities_match_central_differences(arch_model):
    kind, model = arch_model
    contexts = _contexts()
    U = _directions(len(contexts), 4)
    h, rtol = 1e-6, 1e-6
    for layer in L.default_layers(model):
        A = L.layer_velocities(model, contexts, layer, U)
        difference = (L.full_context_logits(model, contexts, layer, h * U) - L.full_context_logits(model, contexts, layer, -h * U)) / (2 * h)
        scale = A.abs().amax()
        assert (A - difference).abs().max() <= rtol * scale, f"{kind} layer {layer}"


def _dense_pullback(model, contexts, layer, top_k=None) -> torch.Tensor:
    """`J_ℓᵀ F J_ℓ [P, d, d]` with `J_ℓ` by central differences of full-context forward passes."""
    h = 1e-5
    basis = torch.eye(WIDTH, dtype=torch.float64).expand(len(contexts), -1, -1)
    J = (L.full_context_logits(model, contexts, layer, h * basis) - L.full_context_logits(model, contexts, layer, -h * basis)) / (2 * h)
    z = L.full_context_logits(model, contexts, layer, torch.zeros(len(contexts), 1, WIDTH, dtype=torch.float64))[:, 0]
    F = fl.fisher_pullback(torch.eye(VOCAB, dtype=torch.float64), torch.softmax(z, -1), top_k=top_k)  # logit space
    return J @ F @ J.transpose(1, 2)  # J is [P, d, V]: row i = ∂z/∂r_i


@pytest.mark.parametrize("top_k", [None, 8])
def test_layer_fisher_eigh_matches_dense_pullback(top_k):
    model = _random_lm("gpt_neox")
    contexts = _contexts()
    G = _dense_pullback(model, contexts, 1, top_k=top_k)
    dense_values, dense_vectors = torch.linalg.eigh(G)
    k = 4
    values, vectors = L.layer_fisher_eigh(model, contexts, 1, k=k, top_k=top_k, block=3)
    assert values.shape == (len(contexts), k) and vectors.shape == (len(contexts), k, WIDTH)
    expected = dense_values.flip(-1)[:, :k]
    torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-9 * float(expected.max()))
    alignment = (vectors * dense_vectors.flip(-1)[:, :, :k].transpose(1, 2)).sum(-1).abs()
    assert (alignment > 1 - 1e-6).all(), alignment
    # Rayleigh quotients along the returned vectors are the eigenvalues (uᵀGu = Var_p[a]).
    A = L.layer_velocities(model, contexts, 1, vectors)
    z = L.full_context_logits(model, contexts, 1, torch.zeros(len(contexts), 1, WIDTH, dtype=torch.float64))[:, 0]
    curvature = fl.curvature(torch.softmax(z, -1), A, top_k=top_k)
    torch.testing.assert_close(curvature, values, rtol=1e-6, atol=1e-9 * float(expected.max()))


def test_a_positions_eigenpairs_do_not_depend_on_the_batch_it_is_measured_in():
    """A shard of the layer study (`fisherlib.run.distributed`) measures some positions alone: same Krylov starts, same bits."""
    model = _random_lm("gpt_neox")
    contexts = _contexts(lengths=(5, 11, 8, 7))
    # A loose tolerance stops the iteration before the basis spans R^d: the result depends on the start.
    values, vectors = L.layer_fisher_eigh(model, contexts, 1, k=2, tol=1e-3, batch_size=2)
    alone_values, alone_vectors = L.layer_fisher_eigh(model, contexts[2:], 1, k=2, tol=1e-3, batch_size=2, position_ids=[2, 3])
    assert torch.equal(alone_values, values[2:]) and torch.equal(alone_vectors, vectors[2:])
    # Without the ids the two contexts start from positions 0 and 1's vectors: other Ritz values, in the last bits.
    other_values, _ = L.layer_fisher_eigh(model, contexts[2:], 1, k=2, tol=1e-3, batch_size=2)
    assert not torch.equal(other_values, values[2:])
    with pytest.raises(FisherlibError, match="one id per position"):
        L.layer_fisher_eigh(model, contexts, 1, k=2, position_ids=[0, 1])


@pytest.mark.parametrize("layer", [1, "head"])
def test_layer_fisher_matrix_is_the_dense_pullback(layer):
    model = _random_lm("gpt_neox")
    contexts = _contexts()
    G = L.layer_fisher_matrix(model, contexts, layer, WIDTH, batch_size=2)
    expected = _dense_pullback(model, contexts, layer) if layer != "head" else None
    if expected is not None:
        torch.testing.assert_close(G, expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    values, _ = L.layer_fisher_eigh(model, contexts, layer, k=2)
    torch.testing.assert_close(torch.linalg.eigvalsh(G).flip(-1)[:, :2], values, rtol=1e-6, atol=1e-9 * float(values.max()))


def test_the_lens_pass_gives_the_dense_metric_and_a_held_out_lens():
    from fisherlib.steps import jacobian_lens

    model = _random_lm("gpt_neox")
    contexts = _contexts(lengths=(5, 11, 8, 7))
    rows, G, G_bar_pass = jacobian_lens.measure_lens(model, contexts, 1, WIDTH, [3, 4, 5, 6], n_per_class=2, batch_size=3,
                                                     return_lens_metric=True)  # fmt: skip
    torch.testing.assert_close(G, L.layer_fisher_matrix(model, contexts, 1, WIDTH))
    A, z = L.layer_velocities(model, contexts, 1, torch.eye(WIDTH, dtype=torch.float64).expand(4, WIDTH, WIDTH), return_logits=True)
    _, G_bar, _ = jacobian_lens.lens_metrics(A, torch.softmax(z, -1))
    torch.testing.assert_close(G_bar_pass, G_bar)  # the one-pass fold sums give the held-out lens's metric
    U = jacobian_lens.random_directions([3, 4, 5, 6], 2, WIDTH, seed=0)
    assert rows["curv_lens"].to_numpy() == pytest.approx(jacobian_lens.curvatures(G_bar, U).reshape(-1), rel=1e-9)
    assert len(rows) == 8 and ((rows["angle_deg"] >= 0) & (rows["angle_deg"] <= 90)).all()


def test_padding_and_batching_do_not_change_results():
    model = _random_lm("gpt_neox")
    contexts = _contexts(lengths=(4, 13, 7, 9))
    U = _directions(len(contexts), 3)
    eps = [1e-3, 0.1]
    together = L.layer_boundary(model, contexts, 1, U, eps, batch_size=4)
    alone = torch.cat([L.layer_boundary(model, [c], 1, U[i : i + 1], eps, batch_size=1) for i, c in enumerate(contexts)])
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=0)
    # A tiny memory budget splits one position's copies over several passes.
    split = L.layer_boundary(model, contexts, 1, U, eps, memory_budget=1)
    torch.testing.assert_close(split, together, rtol=1e-9, atol=0)
    A_together = L.layer_velocities(model, contexts, 2, U, batch_size=4)
    A_alone = torch.cat([L.layer_velocities(model, [c], 2, U[i : i + 1]) for i, c in enumerate(contexts)])
    torch.testing.assert_close(A_together, A_alone, rtol=1e-10, atol=1e-12)
    r_together = L.layer_residuals(model, contexts, 2, batch_size=4)
    r_alone = torch.cat([L.layer_residuals(model, [c], 2) for c in contexts])
    torch.testing.assert_close(r_together, r_alone, rtol=1e-10, atol=1e-12)


def test_censoring_and_first_crossing_bookkeeping():
    model = _random_lm("gpt_neox")
    contexts = _contexts()
    U = _directions(len(contexts), 2)
    # A threshold beyond what the saturating inner layer can reach within a small cap is censored (inf).
    t, info = L.layer_boundary(model, contexts, 1, U, [1e-3, 1e6], t_max=50.0, return_info=True)
    assert torch.isfinite(t[..., 0]).all() and torch.isinf(t[..., 1]).all()
    assert info["nonmonotone"].shape == (len(contexts), 2) and not info["unconverged"].any()
    # ε given in any order comes back in that order.
    backwards = L.layer_boundary(model, contexts, 1, U, [0.1, 1e-3])
    forwards = L.layer_boundary(model, contexts, 1, U, [1e-3, 0.1])
    torch.testing.assert_close(backwards, forwards.flip(-1), rtol=1e-12, atol=0)


def test_bad_inputs_are_refused():
    model = _random_lm("gpt_neox")
    contexts = _contexts()
    with pytest.raises(ValueError, match="layer"):
        L.layer_residuals(model, contexts, 7)
    with pytest.raises(ValueError, match="U must be"):
        L.layer_velocities(model, contexts, 1, torch.zeros(2, 1, WIDTH))
    with pytest.raises(FisherlibError, match="prefix"):
        L.layer_residuals(model, [torch.tensor([3])], 1)
    with pytest.raises(ValueError, match="ε"):
        L.layer_boundary(model, contexts, 1, _directions(3, 1), [0.0])
    assert L.default_layers(model) == [0, 1, 2, 3, "head"]


# --- issue 23: sliding windows that never bind, OPT ---------------------------------------------------


def _engine_logits(model, contexts, layer, delta) -> torch.Tensor:
    """The engine's logits `[P, M, V]` with `delta [P, M, d]` added at `layer`: the prefix cached, M copies of the target."""
    from fisherlib.layers import engine

    network = engine.network_of(model)
    prefix = engine.Prefix(network, contexts)
    logits, _ = prefix.forward(engine.hook_module(network, layer), torch.arange(len(contexts)), delta)
    return logits.double()


@pytest.mark.parametrize("kind", ["mistral", "opt_projected", "opt"])
def test_engine_is_exact_on_sliding_windows_that_never_bind_and_on_opt(kind):
    model = _random_lm(kind)
    contexts = _contexts()
    generator = torch.Generator().manual_seed(3)
    from fisherlib.layers.engine import residuals_by_layer

    residuals = residuals_by_layer(model, contexts, L.default_layers(model))
    for layer, r in residuals.items():
        width = r.shape[-1]
        delta = 0.3 * torch.randn(len(contexts), 4, width, dtype=torch.float64, generator=generator)
        expected = L.full_context_logits(model, contexts, layer, delta)
        torch.testing.assert_close(_engine_logits(model, contexts, layer, delta), expected, rtol=1e-10, atol=1e-10, msg=f"{kind} layer {layer}")
    U = _directions(len(contexts), 2, d=residuals[1].shape[-1])
    t = L.layer_boundary(model, contexts, 1, U, [0.05])[..., 0]
    # At the engine's first crossing the full-context divergence is ε (one brute-force pass, not a bisection).
    divergence = _divergence_full_context(model, contexts, 1, U, t)
    torch.testing.assert_close(divergence, torch.full_like(divergence, 0.05), rtol=1e-5, atol=0, msg=kind)


def test_a_sliding_window_shorter_than_the_context_runs_on_the_full_context_engine():
    from fisherlib.layers.passes import engine_path

    model = _random_lm("mistral_binding")
    contexts = _contexts()
    path = engine_path(model, max(len(c) for c in contexts))
    assert path.path == "full-context"
    assert "sliding window of 4 tokens" in path.reason and "11 tokens" in path.reason
    U = _directions(len(contexts), 2, d=64)
    t = L.layer_boundary(model, contexts, 1, U, [0.05])[..., 0]
    assert torch.isfinite(t).all()
    # The model's own windowed attention decides: at the first crossing its full-context divergence is ε.
    divergence = _divergence_full_context(model, contexts, 1, U, t)
    torch.testing.assert_close(divergence, torch.full_like(divergence, 0.05), rtol=1e-5, atol=0)


def test_directions_of_the_wrong_width_are_named():
    # OPT's residual stream (64) is wider than the LM head's input (32): today a bare RuntimeError (64 vs 32).
    model = _random_lm("opt_projected")
    contexts = _contexts()
    with pytest.raises(ValueError) as error:
        L.layer_boundary(model, contexts, 1, _directions(len(contexts), 2, d=WIDTH), [0.05])
    message = str(error.value)
    assert "width 32" in message and "width 64" in message and "layer 1" in message


# --- the stories260K fixture (Llama architecture, trained) ------------------------------------------


@pytest.fixture(scope="module")
def stories(shared_dir):
    model64 = fl.load_model(shared_dir / "fixtures" / "models" / "stories260K" / "hf", device="cpu", dtype=torch.float64)
    _norms_in_model_dtype(model64.model)
    model32 = fl.load_model(shared_dir / "fixtures" / "models" / "stories260K" / "hf", device="cpu", dtype=torch.float32)
    text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
    ids = torch.tensor(model64.tokenizer(text)["input_ids"])
    contexts = [ids[:n] for n in (9, 15, len(ids))]
    return model64, model32, contexts


@pytest.mark.integration
def test_stories_boundary_matches_full_context_in_float64_and_float32(stories):
    model64, model32, contexts = stories
    U = _directions(len(contexts), 3, d=64)
    for layer in (1, 4):
        reference = _bisection_reference(model64, contexts, layer, U, 0.01)
        t64 = L.layer_boundary(model64, contexts, layer, U, [0.01])[..., 0]
        torch.testing.assert_close(t64, reference, rtol=1e-6, atol=0)
        # In float32 the logits carry ~1e-7 relative rounding; the boundary is good to about 1e-4.
        t32 = L.layer_boundary(model32, contexts, layer, U, [0.01])[..., 0]
        torch.testing.assert_close(t32, reference, rtol=1e-4, atol=0)


@pytest.mark.integration
def test_stories_sample_carries_contexts(stories, tmp_path, shared_dir):
    from fisherlib.data.corpora import fixture_corpora
    from fisherlib.data.sampling import PositionSample

    _, model32, _ = stories
    sample = fl.sample_positions(
        model32, fixture_corpora(shared_dir)[:2], 10, top_k=16, max_context=64, pool_factor=2, progress=False,
    )  # fmt: skip
    assert len(sample.context_ids) == len(sample)
    for context, (_, row) in zip(sample.context_ids, sample.table.iterrows()):
        assert len(context) == row["index"] + 1 and int(context[-1]) == row["token"]
    # The target's residual at the head is the sample's h.
    r = L.layer_residuals(model32, sample, "head")
    torch.testing.assert_close(r, sample.h, rtol=1e-4, atol=1e-4)
    sample.save(tmp_path / "s")
    loaded = PositionSample.load(tmp_path / "s")
    assert all(torch.equal(a, b) for a, b in zip(loaded.context_ids, sample.context_ids))


def test_missing_contexts_are_explained():
    class Old:
        context_ids = None

    with pytest.raises(FisherlibError, match="rerun notebook 01"):
        L.layer_residuals(_random_lm("gpt2"), Old(), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_agrees_with_cpu():
    model = _random_lm("gpt_neox")
    contexts = _contexts()
    U = _directions(len(contexts), 3)
    eps = [1e-3, 0.1]
    cpu = L.layer_boundary(model, contexts, 1, U, eps)
    values_cpu, _ = L.layer_fisher_eigh(model, contexts, 1, k=3)
    model = model.cuda()
    gpu = L.layer_boundary(model, contexts, 1, U.cuda(), eps)
    values_gpu, _ = L.layer_fisher_eigh(model, contexts, 1, k=3)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-8, atol=0)
    torch.testing.assert_close(values_gpu.cpu(), values_cpu, rtol=1e-8, atol=0)
    assert math.isfinite(float(gpu.min()))


def test_residuals_by_layer_stop_at_the_deepest_layer_asked():
    """The pass stops once every residual asked for is captured (no head, no blocks above), with the same values."""
    from fisherlib.layers.engine import residuals_by_layer

    model = _random_lm("llama")
    contexts = _contexts()
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    try:
        shallow = residuals_by_layer(model, contexts, [0, 1])
        assert not calls
        deep = residuals_by_layer(model, contexts, [1, "head"])
    finally:
        handle.remove()
    torch.testing.assert_close(shallow[1], deep[1], rtol=0, atol=0)
    with torch.no_grad():
        hidden = [model(input_ids=c[None], output_hidden_states=True).hidden_states for c in contexts]
    for layer in (0, 1):
        expected = torch.stack([h[layer][0, -1] for h in hidden]).to(shallow[layer].dtype)
        torch.testing.assert_close(shallow[layer], expected, rtol=1e-10, atol=1e-10)
