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


def _near_duplicates(n=600, d=8, offset=5.0, seed=0):
    """Rows far from the origin (a large common offset), a third of them exact or near (1e-5) duplicates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + offset
    k = n // 3
    x[:k] = x[k : 2 * k]
    x[k // 2 : k] += 1e-5 * torch.randn(k - k // 2, d, generator=g, dtype=torch.float64)
    return x


@pytest.mark.parametrize("device", DEVICES)
def test_float32_near_zero_distances_are_accurate(device):
    import kernels.laplace as lap

    x = _near_duplicates()
    bw = 2.0
    ref = np.exp(-cdist(x.numpy(), x.numpy()) / bw)
    x32 = x.to(device, torch.float32)
    # the rows as the float32 tensor holds them: the reference must not charge the input's own rounding to the kernel
    ref32 = np.exp(-cdist(x32.cpu().double().numpy(), x32.cpu().double().numpy()) / bw)
    k = laplace_kernel(x32, x32[:250], bandwidth=bw).cpu().double().numpy()
    err = np.abs(k - ref32[:, :250]).max()
    # without the direct recomputation of small distances the same kernel is off by ~4e-3 (sqrt of eps * ||x||^2)
    saved = lap._REFINED
    try:
        lap._REFINED = ()
        plain = np.abs(laplace_kernel(x32, x32[:250], bandwidth=bw).cpu().double().numpy() - ref32[:, :250]).max()
    finally:
        lap._REFINED = saved
    assert plain > 1e-3, plain  # the defect the refinement removes is present in this data
    assert err < 2e-5 and err < plain / 100, (err, plain)
    assert np.abs(ref32 - ref).max() < 1e-2  # sanity: the two references describe the same data


def test_shared_diagonal_offsets_of_row_ranges():
    from kernels.laplace import _shared_diagonal

    z = torch.randn(10, 3)
    assert _shared_diagonal(z, z) == 0
    assert _shared_diagonal(z[2:5], z) == 2
    assert _shared_diagonal(z[4:8], z[6:10]) == -2
    assert _shared_diagonal(z.clone(), z) is None
    assert _shared_diagonal(z[:, :2], z[:, 1:]) is None  # column slices: not the same rows
    # self-distances of a row block against all rows are exactly zero (diagonal at the block's offset)
    d2 = sq_distances(z[3:7] * 1, z)  # a copy: no shared diagonal, round-off allowed (>= 0)
    assert (d2 >= 0).all()
    d2 = sq_distances(z[3:7], z)
    assert torch.equal(d2.diagonal(3), torch.zeros(4))


def test_refinement_handles_many_close_pairs_in_pieces(monkeypatch):
    import kernels.laplace as lap

    monkeypatch.setattr(lap, "_REFINE_CHUNK", 64)  # force several row chunks and entry chunks
    x = _near_duplicates(n=300, d=3, offset=20.0, seed=4).float()
    d2 = sq_distances(x, x.flip(0)).double().numpy()
    ref = cdist(x.double().numpy(), x.flip(0).double().numpy(), "sqeuclidean")
    small = ref < 1e-3
    assert small.sum() > 100  # many close pairs, spread over chunks
    np.testing.assert_allclose(d2[small], ref[small], rtol=1e-5, atol=1e-12)


def test_rounding_shift_centres_narrow_dtypes_only():
    from kernels.laplace import rounding_shift

    x = torch.randn(50, 4, dtype=torch.float64) + 100.0
    assert rounding_shift(x) is None
    s = rounding_shift(x.float())
    np.testing.assert_allclose(s.double().numpy(), x.mean(0).numpy(), rtol=1e-6)
    assert rounding_shift(torch.empty(0, 4)) is None
    # a common shift leaves the kernel unchanged and, in float32, makes it more accurate for rows far from 0
    ref = np.exp(-cdist(x.float().double().numpy(), x[:20].float().double().numpy()) / 3.0)
    plain = laplace_kernel(x.float(), x[:20].float(), bandwidth=3.0).double().numpy()
    xs = x.float() - s
    shifted = laplace_kernel(xs, xs[:20], bandwidth=3.0).double().numpy()
    assert np.abs(shifted - ref).max() < np.abs(plain - ref).max() / 10
