"""The direction sweep of docs/method.md §7: classes, signs, orthogonality, seeding."""

import pytest
import torch

import fisherlib as fl
from fisherlib.core.errors import DegenerateInputError, InputError


def _problem(P=3, V=60, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, d, generator=g, dtype=torch.float64)
    h = 2 * torch.randn(P, d, generator=g, dtype=torch.float64)
    return W, h, torch.softmax(h @ W.T, -1)


def test_sweep_shapes_classes_and_unit_norm():
    W, h, p = _problem()
    U, table = fl.direction_sweep(W, h, p, top_k=8, n_random=5, n_control=3)
    counts = table[table.position == 0]["cls"].value_counts()
    assert dict(counts) == {"eigvec": 14, "structured": 12, "tangent": 14, "random": 5, "control": 3}
    assert U.shape == (3, 48, 24) and len(table) == 3 * 48
    torch.testing.assert_close(U.norm(dim=-1), torch.ones(3, 48, dtype=torch.float64))
    assert not table.isna().any().any()


def test_control_directions_have_no_truncated_curvature_but_some_true_curvature():
    W, h, p = _problem()
    U, table = fl.direction_sweep(W, h, p, top_k=8, n_random=0, n_control=4)
    control = torch.tensor((table.cls == "control").to_numpy()).reshape(3, -1)
    A = torch.einsum("pnd,vd->pnv", U, W)
    curv_k = fl.curvature(p, A, top_k=8)
    assert curv_k[control].abs().max() < 1e-20
    assert (fl.curvature(p, A)[control] > 0).all()
    ids = torch.topk(p, 8).indices
    for i in range(3):
        assert (W[ids[i]] @ U[i, control[i]].T).abs().max() < 1e-10


def test_eigenvectors_are_oriented_toward_swapping_the_top_two_and_both_signs_present():
    W, h, p = _problem()
    U, table = fl.direction_sweep(W, h, p, top_k=8, n_random=0, n_control=0)
    ids = torch.topk(p, 2).indices
    for i in range(3):
        rows = table[(table.position == i) & (table.cls == "eigvec")]
        swap = W[ids[i, 1]] - W[ids[i, 0]]
        for row in rows.itertuples():
            assert row.sign * float(U[i, row.direction] @ swap) >= 0
        plus = rows[rows.sign == 1].direction.tolist()
        minus = rows[rows.sign == -1].direction.tolist()
        torch.testing.assert_close(U[i, plus], -U[i, minus])


def test_eigvec_directions_match_a_dense_eigendecomposition():
    W, h, p = _problem()
    F_k = fl.fisher_pullback(W, p, top_k=8)
    U_dense, table = fl.direction_sweep(W, h, p, F_k=F_k, top_k=8, n_random=0, n_control=0)
    U_gram, _ = fl.direction_sweep(W, h, p, top_k=8, n_random=0, n_control=0)
    eig = torch.tensor((table.cls == "eigvec").to_numpy()).reshape(3, -1)
    # Eigenvalues of F_k are distinct here, so the oriented eigenvectors agree.
    torch.testing.assert_close(U_dense[eig], U_gram[eig], atol=1e-8, rtol=0)


def test_tangent_directions_are_orthogonal_to_h_and_pairs_are_token_differences():
    W, h, p = _problem()
    U, table = fl.direction_sweep(W, h, p, top_k=8, n_random=0, n_control=0)
    for row in table[table.cls == "tangent"].itertuples():
        assert abs(float(U[row.position, row.direction] @ h[row.position])) < 1e-9
    for row in table[(table.cls == "structured") & (table.sign == 1)].itertuples():
        expected = torch.nn.functional.normalize(W[row.token_j] - W[row.token_i], dim=0)
        torch.testing.assert_close(U[row.position, row.direction], expected)


def test_random_directions_depend_on_seed_and_position_id_not_on_the_batch():
    W, h, p = _problem()
    U_all, table = fl.direction_sweep(W, h, p, top_k=8, n_random=4, n_control=2, seed=7, position_ids=[10, 11, 12])
    U_one, _ = fl.direction_sweep(W, h[1:2], p[1:2], top_k=8, n_random=4, n_control=2, seed=7, position_ids=[11])
    torch.testing.assert_close(U_all[1], U_one[0])
    U_other, _ = fl.direction_sweep(W, h, p, top_k=8, n_random=4, n_control=2, seed=8, position_ids=[10, 11, 12])
    random = torch.tensor((table[table.position == 10].cls == "random").to_numpy())
    assert not torch.allclose(U_all[0, random], U_other[0, random])


def test_control_needs_top_k_below_the_width():
    W, h, p = _problem(d=8)
    with pytest.raises(DegenerateInputError, match="lower top_k"):
        fl.direction_sweep(W, h, p, top_k=8, n_control=2)
    fl.direction_sweep(W, h, p, top_k=8, n_control=0)  # without controls it is fine


def test_mismatched_shapes_and_bad_arguments_raise_one_clear_error():
    W, h, p = _problem(P=3, V=60, d=24)
    with pytest.raises(InputError, match=r"h must be \[P, d\] to match W \[V, d\] = \(60, 24\); got h of shape \(3, 23\)"):
        fl.direction_sweep(W, h[:, :23], p, top_k=8)
    with pytest.raises(InputError, match=r"p must be \[P, V\] to match .* \(P = 2, not 3\)"):
        fl.direction_sweep(W, h, p[:2], top_k=8)
    with pytest.raises(InputError, match=r"F_k must be \[P, d, d\]"):
        fl.direction_sweep(W, h, p, F_k=torch.zeros(3, 24, 23, dtype=torch.float64), top_k=8)
    bad_p = p.clone()
    bad_p[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fl.direction_sweep(W, h, bad_p, top_k=8)
    for top_k in (0, 61):
        with pytest.raises(InputError, match="top_k must be"):
            fl.direction_sweep(W, h, p, top_k=top_k, n_control=0)
    with pytest.raises(InputError, match="position_ids must be P = 3"):
        fl.direction_sweep(W, h, p, top_k=8, position_ids=[0, 1])
    with pytest.raises(InputError, match="n_random must be an integer >= 0"):
        fl.direction_sweep(W, h, p, top_k=8, n_random=-1)


def test_numpy_inputs_give_the_tensor_result():
    W, h, p = _problem(P=2)
    U, table = fl.direction_sweep(W, h, p, top_k=8, n_random=2, n_control=1)
    U_np, table_np = fl.direction_sweep(W.numpy(), h.numpy(), p.numpy(), top_k=8, n_random=2, n_control=1)
    torch.testing.assert_close(U_np, U, rtol=0, atol=0)
    assert table_np.equals(table)


def test_the_class_table_is_the_single_source_of_the_sweep(monkeypatch: pytest.MonkeyPatch):
    """A class added to `DIRECTION_CLASSES` appears in the sweep and its table, in its place, with its signs and pools."""
    from fisherlib.core import directions

    def _half_sum(at):  # the first pair direction plus the first eigenvector, normalised
        yield directions._unit(at.pairs[0][0] + at.eig_dirs[0]), dict(eig_rank=1)

    extra = directions.DirectionClass("half_sum", signed=True, build=_half_sum, pools=(directions.POOL_CONTRASTIVE,), report_rank=9)
    table_before = directions.DIRECTION_CLASSES
    monkeypatch.setattr(directions, "DIRECTION_CLASSES", (*table_before[:3], extra, *table_before[3:]))
    assert directions.class_names() == ("eigvec", "structured", "tangent", "half_sum", "random", "control")
    assert directions.pool_members(directions.POOL_CONTRASTIVE) == ("structured", "tangent", "half_sum")
    assert "half_sum" in directions.signed_classes() and directions.report_order(["half_sum", "eigvec"]) == ("eigvec", "half_sum")
    W, h, p = _problem()
    U, table = fl.direction_sweep(W, h, p, top_k=8, n_random=5, n_control=3)
    counts = table[table.position == 0]["cls"].value_counts()
    assert dict(counts) == {"eigvec": 14, "structured": 12, "tangent": 14, "half_sum": 2, "random": 5, "control": 3}
    assert list(table["cls"].cat.categories) == list(directions.class_names())
    order = table[table.position == 0]["cls"].astype(str).drop_duplicates().tolist()
    assert order == list(directions.class_names())
    added = table[table.cls == "half_sum"]
    assert sorted(added.sign.unique()) == [-1, 1] and (added.eig_rank == 1).all()
    # The existing classes keep their directions and random draws: only the new rows are inserted.
    monkeypatch.setattr(directions, "DIRECTION_CLASSES", table_before)
    U_plain, plain = fl.direction_sweep(W, h, p, top_k=8, n_random=5, n_control=3)
    kept = torch.tensor((table.cls != "half_sum").to_numpy()).reshape(3, -1)
    torch.testing.assert_close(U[kept].reshape(3, -1, 24), U_plain, atol=0, rtol=0)


def test_the_steps_read_class_names_and_pools_from_the_table():
    from fisherlib.core import directions
    from fisherlib.steps import calibration, exactness, power_law, stats

    assert stats.PREDICTED_CLASSES == directions.pool_members(directions.POOL_PREDICTED) == ("eigvec", "structured", "tangent", "random")
    assert stats.SIGNED_CLASSES == ("eigvec", "structured", "tangent") and stats.ALL_PREDICTED == directions.POOL_PREDICTED
    assert stats.TABLE2_GROUPS == ("structured", "tangent", "random", "eigvec", stats.TOP_EIGVEC, "control")
    assert calibration.COMPARISON_GROUPS == (stats.ALL_PREDICTED, stats.TOP_EIGVEC, *directions.PREDICTED_CLASSES)
    assert exactness.GROUPS_WITH_TOP == (stats.TOP_EIGVEC, *directions.PREDICTED_CLASSES)
    assert dict(power_law.SWEEP_GROUPS) == {"contrastive": ("structured", "tangent"), "structured": ("structured",),
                                            "tangent": ("tangent",), "random": ("random",), "eigvec": ("eigvec",)}  # fmt: skip
