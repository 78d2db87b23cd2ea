"""Iterative solvers against the direct solve (independent reference: numpy float64 solve)."""
import warnings

import numpy as np
import pytest
import torch

from kernels import (BlockedKernel, NystromPreconditioner, StoredKernel, laplace_kernel,
                     solve_cg, solve_eigenpro)
from kernels.operators import SYMV_COLUMNS, TRANSPOSED_COLUMNS, KernelOperator, _stored_matmul
from kernels.solvers import ConvergenceWarning, eigenpro_schedule
from tests.conftest import DEVICES


def _data(n=2000, d=10, seed=0, dtype=torch.float64, kind="gauss"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "unit":
        x = x / x.norm(dim=1, keepdim=True)
    elif kind == "raw":
        x = x * 30.0 + 100.0  # raw, unscaled features
    elif kind == "dup":
        x[n // 2 :] = x[: n - n // 2]  # every point duplicated
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2])], 1)
    return x, y


def _numpy_solve(x, y, reg, bandwidth):
    K = laplace_kernel(x.double(), x.double(), bandwidth=bandwidth).numpy()
    return np.linalg.solve(K + reg * np.eye(len(K)), y.double().numpy()), K


def test_operator_matches_dense_product():
    x, y = _data(n=700)
    op = BlockedKernel(x, bandwidth=3.0, memory_budget=3 * 8 * 90**2)
    assert op.tile < 700
    dense = laplace_kernel(x, x, bandwidth=3.0)
    dense.diagonal().fill_(1.0)
    np.testing.assert_allclose(op.matmul(y).numpy(), (dense @ y).numpy(), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("c", [None, 1, 3, 5, 10, 20])
def test_stored_operator_matches_blocked_operator(c):
    x, _ = _data(n=700, d=4)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(700, generator=g, dtype=torch.float64) if c is None else torch.randn(
        700, c, generator=g, dtype=torch.float64)
    r = torch.tensor([[1.0, 0.3, 0.0, 0.0], [0.3, 2.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]],
                     dtype=torch.float64)
    blocked = BlockedKernel(x, bandwidth=3.0, sqrt_m=r, memory_budget=3 * 8 * 90**2)
    stored = StoredKernel(x, bandwidth=3.0, sqrt_m=r)
    ref = blocked.matmul(v)
    np.testing.assert_allclose(stored.matmul(v).numpy(), ref.numpy(), rtol=1e-12, atol=1e-10)
    out = torch.empty_like(v)
    assert stored.matmul(v, out=out) is out
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12, atol=1e-10)
    assert stored.n_products == 2


def test_stored_matmul_layouts_equal_plain_product():
    g = torch.Generator().manual_seed(2)
    K = torch.rand(1100, 1100, generator=g)
    K = (K + K.T) / 2  # a stored kernel matrix is symmetric (some layouts read K^T or one triangle)
    for c in (1, 2, 4, 5, 16, 17, 18, 33):
        v = torch.randn(1100, c, generator=g)
        np.testing.assert_allclose(_stored_matmul(K, v).numpy(), (K.double() @ v.double()).numpy(), rtol=1e-4,
                                   atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stored_matmul_on_one_thread_reads_one_triangle(dtype):
    # on one thread a narrow product is BLAS symv over K's upper triangle: equal to the float64 product with the
    # matrix symmetrised from that triangle, for every narrow width, and not used (the general product) when wider
    g = torch.Generator().manual_seed(3)
    K = torch.rand(900, 900, generator=g, dtype=dtype)  # not symmetric: which triangle is read shows
    upper = torch.triu(K.double()) + torch.triu(K.double(), 1).T
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for c in range(1, SYMV_COLUMNS + 2):
            v = torch.randn(900, c, generator=g, dtype=dtype)
            ref = (upper if c <= SYMV_COLUMNS else K.double()) @ v.double()
            tol = 1e-4 if dtype == torch.float32 else 1e-10
            np.testing.assert_allclose(_stored_matmul(K, v).numpy(), ref.numpy(), rtol=tol, atol=tol)
    finally:
        torch.set_num_threads(threads)


def test_stored_matmul_on_several_threads_transposes_narrow_products():
    # on several threads 2 <= c <= TRANSPOSED_COLUMNS columns are (v^T K)^T, which for the symmetric stored matrix is
    # K v; a non-symmetric K shows which product ran: K^T v in that range, K v outside it
    g = torch.Generator().manual_seed(4)
    K = torch.rand(700, 700, generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for c in (1, 2, TRANSPOSED_COLUMNS, TRANSPOSED_COLUMNS + 1):
            v = torch.randn(700, c, generator=g, dtype=torch.float64)
            ref = (K.T if 2 <= c <= TRANSPOSED_COLUMNS else K) @ v
            np.testing.assert_allclose(_stored_matmul(K, v).numpy(), ref.numpy(), rtol=1e-10, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_stored_operator_blocks_are_copies_and_out_is_checked():
    x, _ = _data(n=300, d=3)
    blocked = BlockedKernel(x, bandwidth=2.0)
    stored = StoredKernel(x, bandwidth=2.0)
    rows, cols = torch.tensor([5, 1, 200]), torch.tensor([7, 299, 0, 3])
    np.testing.assert_allclose(stored.block(rows, cols).numpy(), blocked.block(rows, cols).numpy(), rtol=1e-12)
    for r, c in ((slice(3, 40), cols), (rows, slice(10, 20)), (slice(5, 9), slice(0, 300))):
        np.testing.assert_allclose(stored.block(r, c).numpy(), blocked.block(r, c).numpy(), rtol=1e-12, atol=1e-7)
    for sl in (slice(0, 50), slice(100, 130)):
        b = stored.block(sl)
        # the stored diagonal is exactly k(x, x) = 1; a fresh block carries sqrt(round-off) there (~1e-8)
        np.testing.assert_allclose(b.numpy(), blocked.block(sl).numpy(), rtol=1e-12, atol=1e-7)
        b.zero_()  # must not write into the stored matrix
    assert float(stored.K[100:130].min()) > 0
    buf = torch.empty(3, 4, dtype=torch.float64)
    assert stored.block(rows, cols, out=buf) is buf
    with pytest.raises(ValueError, match="out must be a \\(300, 300\\) torch.float64"):
        StoredKernel(x, bandwidth=2.0, out=torch.empty(300, 299, dtype=torch.float64))


def test_cg_on_a_float32_operator_runs_its_vectors_in_float64():
    # 3000 points in 2 dimensions (as after RFM sharpens M to rank 2): an ill-conditioned float32 system. CG keeps
    # its vectors in float64 (at n = 30000 float32 recurrences stalled near 1e-2 on such a system and broke down),
    # converges to 1e-6, returns float32, and its fitted values agree with the float64 solve of the same matrix
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3000, 2, generator=g)
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    op = StoredKernel(x, bandwidth=10.0)
    pre = NystromPreconditioner(op, reg=1e-3, generator=torch.Generator().manual_seed(0))
    res = solve_cg(op, y, reg=1e-3, M=pre, rtol=1e-6, max_iter=2000)
    assert res.converged and res.x.dtype == torch.float32 and res.residual_norms[-1] <= 1e-6
    # the coefficients themselves are ill-determined here; the residual and the fitted values are not
    K, yy, xx = op.K.double().numpy(), y.double().numpy(), res.x.double().numpy()
    # (x is returned in float32: its rounding alone leaves ~1e-4 on this system)
    assert np.linalg.norm(K @ xx + 1e-3 * xx - yy) / np.linalg.norm(yy) < 1e-3
    ref = np.linalg.solve(K + 1e-3 * np.eye(3000), yy)
    np.testing.assert_allclose(K @ xx, K @ ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("operator", [BlockedKernel, StoredKernel])
@pytest.mark.parametrize("reg", [1e-3, 0.0])
def test_pcg_matches_direct(reg, operator):
    x, y = _data(n=2000)
    ref, K = _numpy_solve(x, y, reg, 10.0)
    op = operator(x, bandwidth=10.0)  # blocked products, or the stored matrix
    pre = NystromPreconditioner(op, reg=reg, n_centres=500, generator=torch.Generator().manual_seed(0))
    res = solve_cg(op, y, reg=reg, M=pre, rtol=1e-7)
    assert res.converged and res.method == "cg"
    assert res.residual_norms[-1] <= 1e-7
    # relative residual of the returned x, computed independently
    resid = (K + reg * np.eye(len(K))) @ res.x.numpy() - y.numpy()
    assert np.linalg.norm(resid) / np.linalg.norm(y.numpy()) < 1e-6
    np.testing.assert_allclose(res.x.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # predictions agree too
    np.testing.assert_allclose(K @ res.x.numpy(), K @ ref, rtol=1e-5, atol=1e-6)


def test_preconditioning_reduces_iterations():
    x, y = _data(n=2000, d=5)
    op = BlockedKernel(x, bandwidth=10.0)
    pre = NystromPreconditioner(op, reg=1e-3, n_centres=500, generator=torch.Generator().manual_seed(0))
    with_p = solve_cg(op, y, reg=1e-3, M=pre, rtol=1e-6)
    plain = solve_cg(op, y, reg=1e-3, rtol=1e-6, max_iter=3000)
    assert with_p.converged and plain.converged
    assert with_p.n_iter < plain.n_iter / 2


def test_warm_start_needs_fewer_iterations():
    # two nearby feature matrices, as between consecutive RFM iterations
    x, y = _data(n=2000, d=6)
    r1 = torch.eye(6, dtype=torch.float64)
    r2 = r1.clone()
    r2[0, 0] = 1.05
    g = torch.Generator().manual_seed(0)
    op1 = BlockedKernel(x, bandwidth=5.0, sqrt_m=r1)
    first = solve_cg(op1, y, reg=1e-3, M=NystromPreconditioner(op1, reg=1e-3, generator=g), rtol=1e-6)
    op2 = BlockedKernel(x, bandwidth=5.0, sqrt_m=r2)
    pre2 = NystromPreconditioner(op2, reg=1e-3, generator=g)
    cold = solve_cg(op2, y, reg=1e-3, M=pre2, rtol=1e-6)
    warm = solve_cg(op2, y, reg=1e-3, M=pre2, rtol=1e-6, x0=first.x)
    assert cold.converged and warm.converged
    assert warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.x.numpy(), cold.x.numpy(), rtol=1e-4, atol=1e-4 * cold.x.abs().max().item())


@pytest.mark.parametrize("operator", [BlockedKernel, StoredKernel])
@pytest.mark.parametrize("reg", [1e-3, 0.0])
def test_eigenpro_reaches_its_tolerance_and_matches_direct_predictions(reg, operator):
    x, y = _data(n=2000)
    ref, K = _numpy_solve(x, y, reg, 10.0)
    op = operator(x, bandwidth=10.0)
    res = solve_eigenpro(op, y, reg=reg, rtol=1e-2, max_iter=40, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.residual_norms[-1] <= 1e-2
    # the stated tolerance is on the residual; predictions on the training points agree at that level
    pred, pred_ref = K @ res.x.numpy(), K @ ref
    assert np.linalg.norm(pred - pred_ref) / np.linalg.norm(pred_ref) < 2e-2
    assert np.all(np.diff(res.residual_norms[:5]) < 0)  # monotone progress in the first epochs


@pytest.mark.parametrize("kind", ["unit", "raw", "dup"])
def test_eigenpro_step_size_does_not_diverge(kind):
    x, y = _data(n=1500, d=8, kind=kind)
    op = BlockedKernel(x, bandwidth=2.0 if kind == "unit" else 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = solve_eigenpro(op, y, reg=1e-3, rtol=1e-8, max_iter=6, generator=torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(res.x).all())
    assert res.residual_norms[-1] < res.residual_norms[0] <= 1.5
    assert res.details["q"] >= 1 and res.details["batch_size"] >= 1 and res.details["step"] > 0


def test_eigenpro_schedule_formulas():
    lam = torch.tensor([1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005], dtype=torch.float64)
    q, D, m, eta = eigenpro_schedule(lam, max_batch=10**6)
    a = 0.95
    assert q == 7  # all 8 have lambda^-a < max_batch: 8 - 1 = 7 (>= 5), within k - 1 = 7
    lam_new = 1.0 ** (1 - a) * float(lam[q]) ** a
    assert m == int(1.0 / lam_new + 1)
    np.testing.assert_allclose(D.numpy(), ((1 - (lam[q] / lam[:q]) ** a) / lam[:q]).numpy())
    np.testing.assert_allclose(eta, m / 1.0 if m < 1 / lam_new + 1 else 0.99 * 2 * m / (1 + (m - 1) * lam_new))


def test_cg_warns_when_not_converged():
    x, y = _data(n=500)
    op = BlockedKernel(x, bandwidth=10.0)
    with pytest.warns(ConvergenceWarning, match="did not reach"):
        res = solve_cg(op, y, reg=0.0, rtol=1e-12, max_iter=2)
    assert not res.converged and res.n_iter == 2


@pytest.mark.parametrize("device", DEVICES)
def test_cg_float32_device(device):
    x, y = _data(n=1500, dtype=torch.float32)
    ref, _ = _numpy_solve(x, y, 1e-2, 10.0)
    op = BlockedKernel(x.to(device), bandwidth=10.0)
    res = solve_cg(op, y.to(device), reg=1e-2, M=NystromPreconditioner(op, reg=1e-2), rtol=1e-5)
    assert res.converged
    np.testing.assert_allclose(res.x.cpu().double().numpy(), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_capped_cg_returns_each_columns_smallest_residual_iterate():
    x, y = _data(n=1500, d=3)
    K = laplace_kernel(x, x, bandwidth=10.0).numpy()
    op = BlockedKernel(x, bandwidth=10.0)
    seen = []
    with pytest.warns(ConvergenceWarning, match="smallest-residual iterate"):
        res = solve_cg(op, y, reg=0.0, rtol=1e-12, max_iter=12, callback=lambda k, X, r: seen.append(X.clone()) and False)
    assert not res.converged and res.n_iter == 12 and len(seen) == 12

    def true_rel(X):  # independent: the dense float64 residual of each column
        return np.linalg.norm(K @ X.numpy() - y.numpy(), axis=0) / np.linalg.norm(y.numpy(), axis=0)

    start = np.ones(2)  # x0 = 0 has relative residual 1
    per_iter = np.vstack([start] + [true_rel(X) for X in seen])
    got = true_rel(res.x)
    np.testing.assert_allclose(got, per_iter.min(0), rtol=1e-6)
    assert res.final_residual == pytest.approx(per_iter.min(0).max(), rel=1e-6)
    assert all(0 <= k <= 12 for k in res.returned_iterations)


def _collapsed(n, spread, seed=0):
    """float32 rows in 10 tight clusters far from the origin: a kernel with one huge eigenvalue and a long tail, the
    shape of the last features of a deep ReLU Deep RFM."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(10, 30, generator=g) * spread
    labels = torch.randint(0, 10, (n,), generator=g)
    return (base[labels] + 0.01 * spread * torch.randn(n, 30, generator=g) + 5.0).float()


@pytest.mark.parametrize("spread,reg", [(0.05, 1e-6), (0.02, 1e-7)])
def test_float32_nystrom_preconditioner_spectrum_stays_in_its_bounds(spread, reg):
    # P^{-1} = I + Q S Q^T with Q orthonormal has its eigenvalues in [(mu_q + reg) / (mu_1 + reg), 1]. With a float32
    # basis used as if orthonormal they fell 25-45% below the lower bound here (and below 0 at n = 50 000, where
    # CG then diverged to NaN); the Gram-corrected core keeps them inside to float64 round-off. (The basis is now
    # held in float64 whatever the operator's precision; the core still measures its Gram matrix.)
    op = StoredKernel(_collapsed(2500, spread), bandwidth=2.0)
    pre = NystromPreconditioner(op, reg=reg, n_centres=1000, rank=500, generator=torch.Generator().manual_seed(1))
    assert op.dtype == torch.float32 and pre.U.dtype == torch.float64
    P = pre(torch.eye(op.shape[0], dtype=torch.float64))  # dense P^{-1}, column by column
    np.testing.assert_allclose(P.numpy(), P.T.numpy(), atol=1e-12)
    ev = torch.linalg.eigvalsh(P).numpy()
    lo = float((pre.mu[-1] + reg) / (pre.mu[0] + reg))
    assert lo < 1e-5  # the regime in question: a spread of eigenvalues beyond float32's resolution of U
    assert ev.min() >= lo * (1 - 1e-6) and ev.max() <= 1 + 1e-9


class _DenseOp(KernelOperator):
    """A symmetric matrix as a KernelOperator (for systems no kernel gives)."""

    def __init__(self, A):
        self.A, self.shape, self.dtype, self.device = A, tuple(A.shape), A.dtype, A.device

    def matmul(self, v, out=None):
        return self.A @ v


@pytest.mark.parametrize("case", ["indefinite system", "indefinite preconditioner"])
def test_cg_stops_at_a_breakdown_instead_of_diverging(case):
    g = torch.Generator().manual_seed(0)
    Qm, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    ev = torch.linspace(0.1, 10.0, 300, dtype=torch.float64)
    if case == "indefinite system":
        ev[:20] = -ev[:20]
    A = (Qm * ev) @ Qm.T
    b = torch.randn(300, 2, generator=g, dtype=torch.float64)
    M = (lambda r: -r) if case == "indefinite preconditioner" else None
    with pytest.warns(ConvergenceWarning, match="broke down"):
        res = solve_cg(_DenseOp(A), b, rtol=1e-10, max_iter=10_000, M=M)
    assert not res.converged and res.n_iter < 300
    assert torch.isfinite(res.x).all() and np.isfinite(res.residual_norms).all()
    # the returned iterate is each column's best, never worse than x = 0
    true = ((A @ res.x - b).norm(dim=0) / b.norm(dim=0)).numpy()
    assert (true <= 1 + 1e-12).all()
    np.testing.assert_allclose(true.max(), res.final_residual, rtol=1e-8)
