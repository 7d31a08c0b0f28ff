"""The layer engine on every architecture of the battery: the path it chooses, and its answers against brute force.

Brute force is `full_context_logits` (the model's own forward pass with its default attention, a hook
adding the perturbation) with central differences for JVPs and a dense `G = J F Jᵀ` for eigenvalues. The
whole battery (30 architectures) takes about 10 s, so CI runs all of it; `make test-architectures` runs
this file alone.
"""

from __future__ import annotations

import pytest
import torch

from fisherlib.layers import pullback as L
from fisherlib.layers import steering_pass as S
from fisherlib.layers.engine import residuals_by_layer
from fisherlib.layers.passes import Prefilled, engine_path
from helpers.battery import DOUBLE_BACKWARD, FLOAT32_ONLY, FULL_CONTEXT, VOCAB, build, configs


def _contexts(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in (5, 11, 8)]


def _forward_kl(z0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(z0, -1)[:, None]
    return (log_p.exp() * (log_p - torch.log_softmax(z, -1))).sum(-1)


def check_architecture(name: str) -> None:
    """The engine's choice, residuals, velocities, first crossings and top eigenvalue on `name`, against brute force."""
    model = build(name)
    float64 = name not in FLOAT32_ONLY
    contexts = _contexts()
    path = engine_path(model, max(len(c) for c in contexts))
    assert path.path == ("full-context" if name in FULL_CONTEXT else "prefix-cached"), (name, path)
    assert path.jvp == ("double-backward" if name in DOUBLE_BACKWARD else "forward-mode"), (name, path)
    assert (path.reason != "") == (name in FULL_CONTEXT)
    # After the last block (the final norm's input; BioGPT and XGLM call it layer_norm) as well as inside.
    last = L.n_layers(model)
    torch.testing.assert_close(L.layer_residuals(model, contexts, last), residuals_by_layer(model, contexts, [last])[last], rtol=1e-5, atol=1e-5)
    layer = 1
    residual = L.layer_residuals(model, contexts, layer)
    torch.testing.assert_close(residual, residuals_by_layer(model, contexts, [layer])[layer], rtol=1e-5, atol=1e-5)
    width = residual.shape[-1]
    generator = torch.Generator().manual_seed(2)
    U = torch.nn.functional.normalize(torch.randn(len(contexts), 2, width, dtype=torch.float64, generator=generator), dim=-1)

    # Velocities: the engine's JVP (forward mode or double backward) against central differences. Much of a
    # float64 model still computes in float32 (attention softmax, RMSNorm upcasts), ~1e-7 noise in the
    # logits, so the steps are large: truncation and noise stay below 1e-3, a wrong JVP is off by O(1).
    A, z = L.layer_velocities(model, contexts, layer, U, return_logits=True)
    errors = []
    for h in (1e-2, 1e-3) if float64 else (1e-1, 3e-2):  # the better of two steps (Mamba's scan is noisier)
        plus = L.full_context_logits(model, contexts, layer, h * U)
        minus = L.full_context_logits(model, contexts, layer, -h * U)
        difference = (plus - minus) / (2 * h)
        errors.append(float((A - difference).abs().max() / difference.abs().max()))
    assert min(errors) < (1e-3 if float64 else 3e-2), (name, errors)
    z0 = L.full_context_logits(model, contexts, layer, torch.zeros(len(contexts), 1, width, dtype=torch.float64))[:, 0]
    assert float((z - z0).abs().max() / z0.abs().max()) < (1e-6 if float64 else 1e-4), name

    # First crossings: at the engine's t the model's own divergence is ε.
    eps = 0.05
    t = L.layer_boundary(model, contexts, layer, U, [eps])[..., 0]
    finite = torch.isfinite(t)
    assert int(finite.sum()) >= 3, (name, t)
    divergence = _forward_kl(z0, L.full_context_logits(model, contexts, layer, torch.where(finite, t, 0.0)[..., None] * U))
    error = ((divergence - eps).abs() / eps)[finite]
    assert float(error.max()) < (1e-5 if float64 else 2e-2), (name, float(error.max()))

    # The top eigenvalue of G against the dense matrix from the velocities along a basis.
    values, _ = L.layer_fisher_eigh(model, contexts, layer, k=1)
    basis = torch.eye(width, dtype=torch.float64).expand(len(contexts), width, width)
    J = L.layer_velocities(model, contexts, layer, basis)  # [P, d, V]: row i is J e_i
    p = torch.softmax(z0, -1)
    F = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    dense = torch.linalg.eigvalsh(J @ F @ J.transpose(1, 2))[:, -1]
    torch.testing.assert_close(values[:, 0], dense, rtol=1e-6 if float64 else 1e-3, atol=0, msg=name)

    # A Prefilled sample reports and uses the same engine.
    assert Prefilled(model, contexts).path == path


@pytest.mark.parametrize("name", sorted(configs()))
def test_every_architecture(name):
    check_architecture(name)


@pytest.mark.parametrize("name", ["gpt_neo", "bloom", "falcon"])
def test_steering_passes_on_models_with_their_own_attention(name):
    """GPT-Neo, Bloom and Falcon keep their own attention code (Bloom's JVP by double backward): the steering pass
    runs them eager, and its velocities match central differences of its own plain passes."""
    model = build(name)
    v = torch.nn.functional.normalize(torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), dim=0)
    steered = S.SteeredTexts.build(model, _contexts(), 1, v)
    _, a, _ = S.steering_velocities(steered)
    assert steered.own_attention
    rows = torch.arange(len(steered.ids))
    h = 1e-3
    plus, _, _ = steered.logits(rows, torch.full((len(rows),), h, dtype=torch.float64))
    minus, _, _ = steered.logits(rows, torch.full((len(rows),), -h, dtype=torch.float64))
    difference = (plus - minus) / (2 * h)
    for i, n in enumerate(steered.lengths.tolist()):
        error = (difference[i, :n] - a[i, :n]).abs().max() / a[i, :n].abs().max()
        assert error < 1e-3, (name, i, float(error))
