"""The empirical boundary against brute force: dense KL from softmax and 60-step bisection."""

import math

import pytest
import torch

import fisherlib as fl
from fisherlib.core.boundary import reverse_kl_bound
from fisherlib.core.errors import InputError

EPS = [1e-3, 1e-2, 0.1, 1.0, 3.0]


def _lines(P=3, D=6, V=80, d=12, scale=2.5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    h = scale * torch.randn(P, d, generator=g, dtype=torch.float64)
    U = torch.nn.functional.normalize(torch.randn(P, D, d, generator=g, dtype=torch.float64), dim=-1)
    z = h @ W.T
    A = torch.einsum("vd,pnd->pnv", W, U)
    return z.to(dtype), A.to(dtype), W, h, U


def dense_divergence(z, a, t, divergence="forward"):
    """KL between softmax(z) and softmax(z + t a), written out from the definition."""
    log_p = torch.log_softmax(z.double(), -1)
    log_q = torch.log_softmax(z.double() + t * a.double(), -1)
    if divergence == "forward":
        return float((log_p.exp() * (log_p - log_q)).sum())
    return float((log_q.exp() * (log_q - log_p)).sum())


def bisection_boundary(z, a, eps, divergence="forward", steps=60):
    """Double an upper end until the divergence passes ε, then bisect `steps` times."""
    lo, hi = 0.0, 1e-3
    while dense_divergence(z, a, hi, divergence) < eps:
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dense_divergence(z, a, mid, divergence) < eps else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_boundary_agrees_with_bisection_and_hits_eps(divergence):
    z, A, *_ = _lines(P=2, D=4)
    eps = [0.01, 0.1, 1.0]
    t = fl.empirical_boundary(z, A, eps, divergence=divergence)
    bound = reverse_kl_bound(z, A)
    for i in range(2):
        for j in range(4):
            for e, target in enumerate(eps):
                if divergence == "reverse" and target >= bound[i, j]:
                    assert math.isinf(t[i, j, e])
                    continue
                reference = bisection_boundary(z[i], A[i, j], target, divergence)
                assert abs(t[i, j, e].item() / reference - 1) < 1e-6
                assert abs(dense_divergence(z[i], A[i, j], t[i, j, e].item(), divergence) / target - 1) < 1e-6


def test_kl_along_line_matches_the_dense_definition():
    z, A, *_ = _lines(P=2, D=3)
    ts = torch.tensor([0.0, 0.05, 0.7, 4.0], dtype=torch.float64)
    for divergence in ("forward", "reverse"):
        kl = fl.kl_along_line(z, A, ts, divergence=divergence)
        for i in range(2):
            for j in range(3):
                for e, t in enumerate(ts.tolist()):
                    assert kl[i, j, e].item() == pytest.approx(dense_divergence(z[i], A[i, j], t, divergence), rel=1e-9, abs=1e-15)


def test_rho_tends_to_one_as_eps_vanishes_for_every_direction():
    z, A, *_ = _lines(P=4, D=10)
    p = torch.softmax(z, -1)
    curv = fl.curvature(p, A)
    eps = torch.tensor([1e-2, 1e-4, 1e-6], dtype=torch.float64)
    t = fl.empirical_boundary(z, A, eps)
    rho = 0.5 * t**2 * curv[..., None] / eps
    deviation = (rho - 1).abs().amax((0, 1))
    assert deviation[-1] < 1e-2
    assert (deviation[1:] < deviation[:-1]).all()  # shrinks with ε, as √ε from the cubic term


def test_near_binary_top_eigenvector_is_exact_at_small_eps():
    g = torch.Generator().manual_seed(1)
    V, d = 300, 32
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    z = torch.randn(V, generator=g, dtype=torch.float64) - 12.0
    z[10], z[20] = 3.0, 2.6
    p = torch.softmax(z, -1)[None]
    assert p[0, [10, 20]].sum() > 0.99
    directions, table = fl.direction_sweep(W, W[0] * 0 + 1.0, p, top_k=16, n_random=0, n_control=0)
    top = ((table.cls == "eigvec") & (table.eig_rank == 1) & (table.sign == 1)).to_numpy().nonzero()[0][0]
    u = directions[0, top]
    diff = torch.nn.functional.normalize(W[20] - W[10], dim=0)
    assert float(u @ diff) > 0.99
    A = (W @ u)[None, None]
    eps = [1e-3]
    t = fl.empirical_boundary(z[None], A, eps)
    rho = 0.5 * t**2 * fl.curvature(p, A, top_k=16)[..., None] / 1e-3
    assert abs(rho.item() - 1) < 0.01


def test_reverse_kl_is_bounded_and_censored_above_the_bound():
    z, A, *_ = _lines(P=2, D=3)
    bound = reverse_kl_bound(z, A)
    far = fl.kl_along_line(z, A, torch.tensor([1e6], dtype=torch.float64), divergence="reverse")[..., 0]
    torch.testing.assert_close(far, bound, rtol=1e-6, atol=1e-9)
    p = torch.softmax(z.double(), -1)
    torch.testing.assert_close(bound, -torch.log(torch.gather(p, 1, A.argmax(-1))))
    eps = torch.stack([0.5 * bound.min(), bound.max() * 1.01]).double()
    t = fl.empirical_boundary(z, A, eps, divergence="reverse")
    assert torch.isfinite(t[..., 0]).all()
    assert torch.isinf(t[..., 1]).all()


def test_degenerate_inputs_give_finite_numbers_or_inf_never_nan():
    V = 30
    g = torch.Generator().manual_seed(0)
    a = torch.randn(V, generator=g, dtype=torch.float64)
    one_hot_logits = torch.full((V,), -1e4, dtype=torch.float64)
    one_hot_logits[0] = 0.0  # p underflows to exactly one-hot in float64
    exact_zeros = torch.zeros(V, dtype=torch.float64)
    exact_zeros[5:] = -math.inf  # tokens the model rules out completely
    huge = 1e6 * torch.randn(V, generator=g, dtype=torch.float64)
    z = torch.stack([one_hot_logits, exact_zeros, huge, torch.zeros(V, dtype=torch.float64)])
    A = torch.stack([a, a, a, torch.zeros(V, dtype=torch.float64)])[:, None, :]
    for divergence in ("forward", "reverse"):
        t = fl.empirical_boundary(z, A, EPS, divergence=divergence)
        assert not torch.isnan(t).any()
        kl = fl.kl_along_line(z, A, torch.tensor([0.0, 1.0, 1e3], dtype=torch.float64), divergence=divergence)
        assert not torch.isnan(kl).any()
    t = fl.empirical_boundary(z, A, EPS)
    assert torch.isinf(t[3]).all()  # a = 0: zero curvature, no boundary
    assert torch.isfinite(t[1]).all()
    # A constant a moves no probability: zero curvature even though a ≠ 0.
    assert torch.isinf(fl.empirical_boundary(z[1:2], torch.ones(1, 1, V, dtype=torch.float64), EPS)).all()
    p = torch.softmax(z, -1)
    assert not torch.isnan(fl.curvature(p, A)).any()
    assert not torch.isnan(fl.predicted_boundary(fl.curvature(p, A), EPS)).any()
    assert not torch.isnan(fl.entropy(p)).any()


def test_cap_censors_far_boundaries():
    z, A, *_ = _lines(P=1, D=3)
    t = fl.empirical_boundary(z, A, EPS)
    capped = fl.empirical_boundary(z, A, EPS, t_max=float(t.median()))
    assert torch.isinf(capped[t > t.median()]).all()
    torch.testing.assert_close(capped[t <= t.median()], t[t <= t.median()])


def test_results_do_not_depend_on_the_chunk_size():
    z, A, *_ = _lines(P=5, D=7, V=200)
    whole = fl.empirical_boundary(z, A, EPS)
    for budget in (1, 200 * 8 * 8 * 5 * 3, 10**6):
        torch.testing.assert_close(fl.empirical_boundary(z, A, EPS, memory_budget=budget), whole, rtol=1e-12, atol=0)
    ts = torch.tensor(EPS, dtype=torch.float64)
    torch.testing.assert_close(fl.kl_along_line(z, A, ts, memory_budget=1), fl.kl_along_line(z, A, ts), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_are_solved_in_float64(dtype):
    z, A, *_ = _lines(P=2, D=4)
    z_low, A_low = z.to(dtype), A.to(dtype)
    t = fl.empirical_boundary(z_low, A_low, EPS)
    assert t.dtype == torch.float64
    # Exact for the inputs as rounded: same answer as float64 on the rounded values.
    torch.testing.assert_close(t, fl.empirical_boundary(z_low.double(), A_low.double(), EPS), rtol=1e-9, atol=0)
    kl = fl.kl_along_line(z_low, A_low, t)
    torch.testing.assert_close(kl, torch.tensor(EPS, dtype=torch.float64).expand_as(kl), rtol=1e-6, atol=0)


def test_bad_arguments_are_refused():
    z, A, *_ = _lines(P=1, D=1)
    with pytest.raises(ValueError, match="divergence"):
        fl.empirical_boundary(z, A, EPS, divergence="js")
    with pytest.raises(ValueError, match="positive"):
        fl.empirical_boundary(z, A, [0.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_gives_the_cpu_answer():
    z, A, *_ = _lines(P=3, D=5)
    cpu = fl.empirical_boundary(z, A, EPS)
    gpu = fl.empirical_boundary(z.cuda(), A.cuda(), EPS)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=0)


def test_inputs_that_require_grad_are_accepted():
    """A = W @ u straight from a model's weight carries autograd; out= arithmetic used to refuse it."""
    z, A, *_ = _lines(P=2, D=3, dtype=torch.float32)
    z, A = z.requires_grad_(), A.requires_grad_()
    t = fl.empirical_boundary(z, A, [0.1, 1.0])
    reference = fl.empirical_boundary(z.detach(), A.detach(), [0.1, 1.0])
    assert not t.requires_grad and torch.equal(t, reference)
    assert not fl.kl_along_line(z, A, torch.tensor([0.5])).requires_grad
    assert not reverse_kl_bound(z, A).requires_grad


def test_automatic_memory_budget_gives_the_same_answer():
    from fisherlib.core.boundary import resolve_memory_budget

    z, A, *_ = _lines(P=3, D=5)
    budget = resolve_memory_budget("cpu")
    assert 64 << 20 <= budget <= 16 << 30
    assert resolve_memory_budget("cpu", 12345) == 12345
    with pytest.raises(ValueError, match="positive number of bytes"):
        resolve_memory_budget("cpu", 0)
    torch.testing.assert_close(fl.empirical_boundary(z, A, EPS), fl.empirical_boundary(z, A, EPS, memory_budget=50_000))


def test_mismatched_shapes_are_refused():
    z, A, *_ = _lines(P=2, D=3)
    with pytest.raises(ValueError, match=r"A must be \[P, D, V\] to match z \[P, V\]"):
        fl.empirical_boundary(z[:, :-1], A, EPS)
    with pytest.raises(ValueError, match="3 dimensions"):
        fl.empirical_boundary(z, A[0], EPS)
    with pytest.raises(ValueError, match="t_max must be positive"):
        fl.empirical_boundary(z, A, EPS, t_max=0)
    with pytest.raises(ValueError, match=r"t must be \[E\]"):
        fl.kl_along_line(z, A, torch.ones(5, 3, 2))


def test_a_nan_logit_or_velocity_is_an_error_not_a_censored_line():
    z, A, *_ = _lines(P=2, D=3)
    bad_z, bad_A = z.clone(), A.clone()
    bad_z[1, 4], bad_A[0, 2, 7] = math.nan, math.nan
    for call in (
        fl.empirical_boundary, lambda z, A, eps: fl.kl_along_line(z, A, torch.tensor(eps)), lambda z, A, eps: reverse_kl_bound(z, A),
    ):  # fmt: skip
        with pytest.raises(InputError, match=r"z \[P, V\] holds 1 NaN"):
            call(bad_z, A, EPS)
        with pytest.raises(InputError, match=r"A \[P, D, V\] holds 1 NaN"):
            call(z, bad_A, EPS)
    plus_inf, all_minus_inf = z.clone(), z.clone()
    plus_inf[0, 0] = math.inf
    all_minus_inf[1] = -math.inf
    with pytest.raises(InputError, match=r"1 \+inf"):
        fl.empirical_boundary(plus_inf, A, EPS)
    with pytest.raises(InputError, match=r"1 row\(s\) of -inf only"):
        fl.empirical_boundary(all_minus_inf, A, EPS)
    with pytest.raises(InputError, match="t .* holds"):
        fl.kl_along_line(z, A, torch.tensor([0.1, math.nan]))
    some_minus_inf = z.clone()
    some_minus_inf[:, :5] = -math.inf  # tokens ruled out are allowed
    assert not torch.isnan(fl.empirical_boundary(some_minus_inf, A, EPS)).any()


def test_numpy_inputs_are_converted_and_other_types_refused():
    z, A, *_ = _lines(P=2, D=3)
    torch.testing.assert_close(fl.empirical_boundary(z.numpy(), A.numpy(), EPS), fl.empirical_boundary(z, A, EPS), rtol=0, atol=0)
    torch.testing.assert_close(fl.kl_along_line(z.numpy(), A, [0.5]), fl.kl_along_line(z, A, [0.5]), rtol=0, atol=0)
    with pytest.raises(InputError, match=r"z must be a torch.Tensor \[P, V\]"):
        fl.empirical_boundary(z.tolist(), A, EPS)
    with pytest.raises(InputError, match=r"A must be a floating-point tensor \[P, D, V\] \(3 dimensions\), got torch.int64"):
        fl.empirical_boundary(z, A.long(), EPS)
    with pytest.raises(InputError, match=r"rtol must be a number in \(0, 1\)"):
        fl.empirical_boundary(z, A, EPS, rtol=math.nan)
