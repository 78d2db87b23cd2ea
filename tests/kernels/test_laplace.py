import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from kernels import laplace_kernel, sq_distances
from kernels._reference import laplace_kernel_numpy
from tests.conftest import DEVICES, DTYPES, random_spd, sym_sqrt

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_kernel_matches_cdist_mahalanobis(dtype, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 6, generator=g, dtype=torch.float64)
    z = torch.randn(23, 6, generator=g, dtype=torch.float64)
    m = random_spd(6, seed=3)
    ref = np.exp(-cdist(x.numpy(), z.numpy(), metric="mahalanobis", VI=m.numpy()) / 3.0)
    r = sym_sqrt(m)
    k = laplace_kernel(x.to(device, dtype), z.to(device, dtype), bandwidth=3.0, sqrt_m=r.to(device, dtype))
    assert k.dtype == dtype and k.shape == (37, 23)
    np.testing.assert_allclose(k.cpu().double().numpy(), ref, rtol=0, atol=TOL[dtype])


def test_kernel_is_l2_not_l1():
    x = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert float(laplace_kernel(x, z, bandwidth=1.0)) == pytest.approx(np.exp(-5.0))  # L1 would give exp(-7)


def test_diagonal_factor_equals_matrix_factor():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    r = torch.rand(4, generator=g, dtype=torch.float64)
    k1 = laplace_kernel(x, x, bandwidth=2.0, sqrt_m=r)
    k2 = laplace_kernel(x, x, bandwidth=2.0, sqrt_m=torch.diag(r))
    np.testing.assert_allclose(k1.numpy(), k2.numpy(), atol=1e-12)
    ref = laplace_kernel_numpy(x.numpy(), x.numpy(), bandwidth=2.0, m=np.diag(r.numpy() ** 2))
    np.testing.assert_allclose(k1.numpy(), ref, atol=1e-7)


def test_sq_distances_clamped_nonnegative():
    # large common offset: the GEMM formula suffers cancellation; the result must still be >= 0
    x = torch.full((50, 3), 1e3, dtype=torch.float32) + torch.randn(50, 3) * 1e-3
    d2 = sq_distances(x, x)
    assert bool((d2 >= 0).all())
    k = laplace_kernel(x, x, bandwidth=1.0)
    assert bool(torch.isfinite(k).all())


def test_out_argument_is_used():
    x = torch.randn(8, 3)
    out = torch.empty(8, 8)
    k = laplace_kernel(x, x, bandwidth=1.0, out=out)
    assert k.data_ptr() == out.data_ptr()
