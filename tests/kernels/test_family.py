"""The kernel family (kernels.family): values against explicit-difference numpy, closed-form AGOPs against autograd,
blocked and stored operators, m-centre solves, for every kernel."""
import numpy as np
import pytest
import torch

from kernels import BlockedKernel, Points, StoredKernel, kernel_matmul, laplace_agop, laplace_gradients, solve_centres
from kernels._reference import family_agop_autograd, family_kernel_numpy
from kernels.family import KERNELS, Kernel, as_kernel, l1_distances
from tests.conftest import DEVICES, random_spd, sym_sqrt

CASES = [("laplace", 1.0), ("gaussian", 1.0), ("laplace_exp", 0.7), ("laplace_exp", 1.5), ("product_laplace", 1.0)]


def _data(seed=0, n=50, d=5, c=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    alpha = torch.randn(n, c, generator=g, dtype=torch.float64)
    return x, alpha


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name,p", CASES)
@pytest.mark.parametrize("factor", ["none", "diag", "full"])
def test_kernel_matrix_matches_explicit_differences(name, p, factor):
    x, _ = _data()
    z = x[:20] + 0.3
    r = {"none": None, "diag": torch.rand(5, dtype=torch.float64) + 0.5, "full": sym_sqrt(random_spd(5, seed=2))}[factor]
    kern = Kernel(name, 2.5, p)
    got = kernel_matmul(x, z, torch.eye(20, dtype=torch.float64), kernel=kern, sqrt_m=r, memory_budget=2**15)
    ref = family_kernel_numpy(x.numpy(), z.numpy(), name=name, bandwidth=2.5, exponent=p,
                              r=None if r is None else r.numpy())
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,p", CASES)
@pytest.mark.parametrize("factor", ["none", "diag", "full", "low_rank"])
@pytest.mark.parametrize("centering", [False, True])
def test_closed_form_agop_matches_autograd(name, p, factor, centering):
    x, alpha = _data(seed=1)
    g = torch.Generator().manual_seed(3)
    r = {"none": None, "diag": torch.rand(5, generator=g, dtype=torch.float64) + 0.5,
         "full": sym_sqrt(random_spd(5, seed=4)), "low_rank": torch.randn(5, 2, generator=g, dtype=torch.float64)}[factor]
    kern = Kernel(name, 2.0, p)
    # sample points are training points (their own term is dropped in both) and off-sample points
    samples = torch.cat([x[:12], torch.randn(8, 5, generator=g, dtype=torch.float64)])
    for diag in (False, True):
        got = laplace_agop(samples, x, alpha, kernel=kern, sqrt_m=r, diag=diag, centering=centering,
                           sample_block=6, centre_block=17)
        ref = family_agop_autograd(samples, x, alpha, name=name, bandwidth=2.0, exponent=p, r=r,
                                   centering=centering, diag=diag)
        assert _rel(got, ref) < 1e-6, (diag, _rel(got, ref))


@pytest.mark.parametrize("name,p", CASES)
def test_gradients_and_points_centres(name, p):
    # centres passed already transformed (Points) give the same gradients as raw centres with the factor
    x, alpha = _data(seed=5)
    f = sym_sqrt(random_spd(5, seed=6))
    kern = Kernel(name, 1.5, p)
    a = laplace_gradients(x[:10], x, alpha, kernel=kern, sqrt_m=f)
    b = laplace_gradients(x[:10], Points.of(x, f), alpha, kernel=kern, sqrt_m=f)
    assert a.shape == (10, 2, 5)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,p", CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_blocked_and_stored_operators_equal_the_dense_matrix(name, p, device):
    x, alpha = _data(seed=7, n=70)
    x, alpha = x.to(device), alpha.to(device)
    kern = Kernel(name, 3.0, p)
    dense = torch.as_tensor(family_kernel_numpy(x.cpu().numpy(), x.cpu().numpy(), name=name, bandwidth=3.0,
                                                exponent=p), device=device)
    blocked = BlockedKernel(x, kernel=kern, memory_budget=2**13)
    assert blocked.tile < 70  # several tiles
    stored = StoredKernel(x, kernel=kern)
    for op in (blocked, stored):
        torch.testing.assert_close(op.matmul(alpha), dense @ alpha, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(op.block(slice(3, 9), torch.tensor([0, 5, 60], device=device)),
                                   dense[3:9][:, [0, 5, 60]], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,p", CASES)
def test_m_centre_solve_with_all_rows_as_centres_is_kernel_ridge(name, p):
    x, alpha = _data(seed=8, n=40)
    y = alpha[:, :1]
    kern = Kernel(name, 2.0, p)
    pts = Points.of(x)
    sol = solve_centres(pts, pts, y, kernel=kern, reg=1e-2, rtol=1e-12, max_iter=400)
    K = torch.as_tensor(family_kernel_numpy(x.numpy(), x.numpy(), name=name, bandwidth=2.0, exponent=p))
    ref = torch.linalg.solve(K + 1e-2 * torch.eye(40, dtype=torch.float64), y)
    assert _rel(sol.x, ref) < 1e-6


def test_float32_values_near_duplicates():
    # every kernel in float32 on near-duplicated offset rows stays within float32 round-off of float64
    g = torch.Generator().manual_seed(9)
    x = torch.randn(30, 8, generator=g, dtype=torch.float64) + 40.0
    x = torch.cat([x, x[:10] + 1e-6])
    for name, p in CASES:
        kern = Kernel(name, 5.0, p)
        k64 = kern.matrix(x, x)
        k32 = kern.matrix(x.float(), x.float())
        assert float((k32.double() - k64).abs().max()) < 5e-4, name
        assert torch.all(torch.diagonal(k32) == 1.0), name


def test_l1_distances_in_bounded_chunks(monkeypatch):
    import kernels.family as fam
    monkeypatch.setattr(fam, "_L1_CHUNK_ELEMENTS", 16)  # one row of 10 columns per chunk
    x, _ = _data(seed=10, n=23, d=4)
    got = l1_distances(x, x[:10])
    ref = (x[:, None, :] - x[None, :10, :]).abs().sum(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)
    assert torch.all(got[:10].diagonal() == 0)


def test_kernel_validation_and_as_kernel():
    for bad in ({"name": "rbf"}, {"bandwidth": 0.0}, {"bandwidth": float("nan")}, {"exponent": 2.5},
                {"exponent": 0.0}):
        with pytest.raises(ValueError, match="kernel|bandwidth|exponent"):
            Kernel(**bad)
    assert as_kernel(None, 2.0) == Kernel("laplace", 2.0)
    assert as_kernel("gaussian", 2.0).scale == 8.0
    k = Kernel("laplace_exp", 3.0, 0.5)
    assert as_kernel(k) is k and as_kernel(k, 3.0) is k
    with pytest.raises(ValueError, match="disagrees"):
        as_kernel(k, 2.0)
    with pytest.raises(TypeError, match="bandwidth"):
        as_kernel(None, None)
    assert set(KERNELS) == {"laplace", "gaussian", "laplace_exp", "product_laplace"}


@pytest.mark.parametrize("name,p", CASES)
def test_with_length_puts_the_kernel_unit_at_the_length(name, p):
    k = Kernel(name, 1.0, p).with_length(4.0)
    expected = {"gaussian": np.exp(-1 / 2)}.get(name, np.exp(-1.0))
    assert k.value(4.0) == pytest.approx(expected, rel=1e-12)
