"""The m-centre (Nystrom / Falkon-style) kernel ridge solver against dense references."""
import numpy as np
import pytest
import torch

from kernels import Points, laplace_agop, laplace_kernel
from kernels._reference import agop_autograd
from kernels.solvers.centres import (HELD_OUT_PATIENCE, CentreSystem, default_centre_count, solve_centres,
                                     workspace_bytes)
from kernels.solvers.ridge import RIDGE_RTOL
from tests.conftest import DEVICES, random_spd, sym_sqrt


def _data(n=500, d=5, c=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.stack([torch.sin(X[:, :2].sum(1)), X[:, 0] * X[:, 2]], 1)[:, :c]
    return X, Y + 0.05 * torch.randn(n, c, generator=g, dtype=torch.float64)


def _dense_centre_solution(X, idx, Y, bw, reg, r=None):
    """The m-centre normal equations solved densely in numpy (float64) from the plain kernel matrix."""
    K = laplace_kernel(X, X, bandwidth=bw, sqrt_m=r).numpy()
    Knm, Kmm = K[:, idx], K[np.ix_(idx, idx)]
    return np.linalg.solve(Knm.T @ Knm + reg * Kmm, Knm.T @ Y.numpy()), Knm


def test_all_points_as_centres_is_exact_kernel_ridge():
    X, Y = _data()
    reg = 1e-3
    pts = Points.of(X)
    res = solve_centres(pts, pts, Y, bandwidth=2.0, reg=reg, rtol=1e-14, max_iter=200)
    K = laplace_kernel(X, X, bandwidth=2.0)
    ref = torch.linalg.solve(K + reg * torch.eye(len(X), dtype=X.dtype), Y)
    assert res.method == "nystrom" and res.converged and res.x.dtype == torch.float64
    np.testing.assert_allclose(res.x.numpy(), ref.numpy(), rtol=0, atol=1e-8 * float(ref.abs().max()))
    assert res.n_iter <= 3  # with m = n the preconditioner is exact


@pytest.mark.parametrize("store", [False, True])
@pytest.mark.parametrize("metric", [False, True])
def test_fewer_centres_match_the_dense_normal_equations(store, metric):
    X, Y = _data(seed=1)
    r = sym_sqrt(random_spd(5, seed=2)) if metric else None
    idx = np.sort(np.random.default_rng(3).choice(len(X), 90, replace=False))
    reg = 1e-3
    # tiny budget: many row blocks for the recomputed products
    res = solve_centres(Points.of(X, r), Points.of(X[idx], r), Y, bandwidth=2.0, reg=reg, rtol=1e-15,
                        max_iter=400, store=store, memory_budget=2**18)
    ref, Knm = _dense_centre_solution(X, idx, Y, 2.0, reg, r)
    np.testing.assert_allclose(res.x.numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    np.testing.assert_allclose(Knm @ res.x.numpy(), Knm @ ref, rtol=0, atol=1e-8)
    assert res.details["stored"] is store and res.details["n_centres"] == 90


def test_vector_target_warm_start_and_float32():
    X, Y = _data(seed=4, c=1)
    y = Y[:, 0]
    idx = torch.arange(0, len(X), 5)
    pts, cen = Points.of(X), Points.of(X[idx])
    res = solve_centres(pts, cen, y, bandwidth=2.0, reg=1e-3, rtol=1e-10)
    assert res.x.shape == (len(idx),)
    again = solve_centres(pts, cen, y, bandwidth=2.0, reg=1e-3, rtol=1e-10, x0=res.x)
    assert again.n_iter <= 1
    # float32 kernel blocks, float64 CG vectors: the fitted values agree with the float64 solve to float32 accuracy
    res32 = solve_centres(Points.of(X.float()), Points.of(X[idx].float()), y.float(), bandwidth=2.0, reg=1e-3,
                          rtol=1e-6)
    assert res32.x.dtype == torch.float32
    K = laplace_kernel(X, X[idx], bandwidth=2.0)
    fit64, fit32 = K @ res.x, K @ res32.x.double()
    assert float((fit64 - fit32).abs().max()) < 1e-3 * float(y.abs().max())


def _iterate(pts, cen, Y, k, **kw):
    """The k-th CG iterate of the m-centre solve, from an independent run capped at k steps."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the cap, not the tolerance, ends it)
        return solve_centres(pts, cen, Y, rtol=1e-15, max_iter=k, **kw).x


@pytest.mark.parametrize("errors, stop, returned", [
    # the lowest falls by 0.025% per step after step 3: not an improvement beyond RIDGE_RTOL; the last is the lowest
    ([1.0, 0.5, 0.4, 0.3999, 0.39995, 0.3998, 0.1], 6, 6),
    # worse after step 3 by more than RIDGE_RTOL: step 3's iterate
    ([1.0, 0.5, 0.4, 0.41, 0.42, 0.43, 0.1], 6, 3),
    # the last within RIDGE_RTOL of the lowest (0.05% above): the last, the more converged of equals
    ([1.0, 0.5, 0.4, 0.39, 0.3902, 0.39019, 0.39018, 0.1], 7, 7),
    # an improvement beyond RIDGE_RTOL at step 5 starts the count again
    ([1.0, 0.5, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3, 0.1], 8, 8),
])
def test_held_out_rows_stop_the_cg_by_the_rule(errors, stop, returned):
    X, Y = _data(seed=7, n=400)
    idx = torch.arange(0, len(X), 4)
    pts, cen = Points.of(X), Points.of(X[idx])
    kw = dict(bandwidth=2.0, reg=1e-6)
    seen = []

    def held_out(betas):  # scripted errors; records what it was asked to score
        seen.append(betas[0].clone())
        return [errors[len(seen) - 1]]

    res = solve_centres(pts, cen, Y, rtol=1e-15, max_iter=100, held_out=held_out, **kw)
    assert res.n_iter == stop and len(seen) == stop and not res.converged
    assert res.details["stopped_by"] == "held-out" and res.details["returned_step"] == returned
    assert res.details["held_out_errors"] == errors[:stop]
    # the coefficients scored at each step are that step's iterate, and the returned one is the chosen step's
    for k in (1, returned):
        ref = _iterate(pts, cen, Y, k, **kw)
        np.testing.assert_allclose(seen[k - 1].numpy(), ref.numpy(), rtol=0, atol=1e-9 * float(ref.abs().max()))
    np.testing.assert_allclose(res.x.numpy(), _iterate(pts, cen, Y, returned, **kw).numpy(), rtol=0,
                               atol=1e-9 * float(res.x.abs().max()))
    assert res.final_residual == res.residual_norms[returned]


def test_held_out_stop_ends_where_the_held_out_error_is_flat():
    X, Y = _data(seed=8, n=1400, c=1)
    tr, va = slice(0, 1000), slice(1000, None)
    idx = torch.arange(0, 1000, 10)
    pts, cen = Points.of(X[tr]), Points.of(X[idx])
    kva = laplace_kernel(X[va], X[idx], bandwidth=2.0)  # the held-out rows' kernel, formed independently

    def held_out(betas):
        return [float((kva @ b - Y[va]).square().mean()) for b in betas]

    kw = dict(bandwidth=2.0, reg=1e-7)
    full = solve_centres(pts, cen, Y[tr], rtol=1e-12, max_iter=500, **kw)
    res = solve_centres(pts, cen, Y[tr], rtol=1e-12, max_iter=500, held_out=held_out, **kw)
    assert full.converged and res.details["stopped_by"] == "held-out" and res.n_iter < full.n_iter / 2
    err, err_full = held_out([res.x])[0], held_out([full.x])[0]
    assert err <= err_full * 1.01, (err, err_full)
    # the rule: no step of the last HELD_OUT_PATIENCE lowered the lowest before it by more than RIDGE_RTOL
    errs = res.details["held_out_errors"]
    lowest = min(errs[: -HELD_OUT_PATIENCE])
    assert all(e >= lowest * (1 - RIDGE_RTOL) for e in errs[-HELD_OUT_PATIENCE:])
    with pytest.raises(ValueError, match="patience"):
        solve_centres(pts, cen, Y[tr], held_out=held_out, patience=0, **kw)


def test_agop_of_the_centre_predictor_matches_autograd():
    X, Y = _data(seed=5, n=300, d=4)
    m = random_spd(4, seed=6)
    r = sym_sqrt(m)
    idx = torch.arange(0, len(X), 3)
    res = solve_centres(Points.of(X, r), Points.of(X[idx], r), Y, bandwidth=2.5, reg=1e-3, rtol=1e-10)
    samples = X[1::7]  # not centres: every term is differentiable
    got = laplace_agop(samples, X[idx], res.x, bandwidth=2.5, sqrt_m=r)
    ref = agop_autograd(samples, X[idx], res.x, bandwidth=2.5, m=m)
    assert float((got - ref).norm() / ref.norm()) < 1e-6


def test_errors_and_sizes():
    X, Y = _data(n=50)
    pts = Points.of(X)
    with pytest.raises(ValueError, match="rows"):
        solve_centres(pts, pts, Y[:10], bandwidth=1.0, reg=1e-3)
    with pytest.raises(ValueError, match="at least one centre"):
        solve_centres(pts, Points.of(X[:0]), Y, bandwidth=1.0, reg=1e-3)
    assert default_centre_count(100) == 100 and default_centre_count(10**6) == 8000 and default_centre_count(200000) == 4472
    assert workspace_bytes(1000, 100, 1, itemsize=4, store=True) - workspace_bytes(1000, 100, 1, itemsize=4) == 4e5


@pytest.mark.parametrize("n,m", [(300, 40), (5000, 300)])
def test_the_ledger_counts_the_folded_operands(n, m):
    """The norm-folded distance GEMM's operands a CentreSystem holds (the centres' side, the rows' buffer) are within
    what workspace_bytes(d=...) adds for them."""
    X = torch.randn(n, 7, generator=torch.Generator().manual_seed(0))
    sys_ = CentreSystem(Points.of(X), Points.of(X[:m]), bandwidth=2.0, reg=1e-3)
    held = sys_.folded.nbytes + sys_._rows_buf.nbytes
    extra = workspace_bytes(n, m, 1, itemsize=4, d=7) - workspace_bytes(n, m, 1, itemsize=4)
    assert 0 < held <= extra <= 2 * held + 64 * 9 * 4


@pytest.mark.parametrize("device", DEVICES)
def test_products_match_dense_on_device(device):
    X, Y = _data(n=200)
    Xd = X.to(device, torch.float32)
    idx = torch.arange(0, 200, 4)
    sys_ = CentreSystem(Points.of(Xd), Points.of(Xd[idx]), bandwidth=2.0, reg=1e-3, memory_budget=2**16)
    K = laplace_kernel(X, X[idx], bandwidth=2.0)
    v = torch.randn(len(idx), 2, dtype=torch.float64)
    got = sys_.normal_product(v.to(device)).cpu()
    np.testing.assert_allclose(got.numpy(), (K.T @ (K @ v)).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", ["laplace", "gaussian", "product_laplace"])
def test_norm_folded_tiles_match_the_plain_kernel(kernel, monkeypatch):
    """The m-centre tiles' distances by one GEMM with the norms folded in (radial kernels; the product kernel reads
    L1 distances and does not fold): the same products as with the plain kernel, to round-off."""
    import kernels.solvers.centres as centres_mod
    from kernels.family import Kernel

    X, Y = _data(n=700)
    X = X.float()
    idx = torch.randperm(700, generator=torch.Generator().manual_seed(1))[:90].sort().values
    pts, cen = Points.of(X), Points.of(X[idx])
    v = torch.randn(90, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    kern = Kernel(kernel, 2.0)
    folded = CentreSystem(pts, cen, kernel=kern, reg=1e-3, memory_budget=2**16)
    assert (folded.folded is not None) == kern.radial and folded.row_block < 700  # several tiles, a tail
    monkeypatch.setattr(centres_mod, "FOLD_NORMS", False)
    plain = CentreSystem(pts, cen, kernel=kern, reg=1e-3, memory_budget=2**16)
    assert plain.folded is None
    a, b = folded.normal_product(v), plain.normal_product(v)
    K = kern.matrix(X.double(), X[idx].double())  # float64 reference
    ref = K.T @ (K @ v)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
    assert torch.allclose(a, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
