import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from kernels import laplace_kernel, sq_distances
from kernels.laplace import laplace_kernel_transformed
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


@pytest.mark.parametrize("m", [96, 101, 7])  # whole runs of columns, runs and a tail, a tail only
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_refinement_finds_near_pairs_in_runs_and_tail(m, layout, monkeypatch):
    """The near-pair search reads run minima (and the columns past the last whole run; every column of a row when
    the tile's columns are not adjacent in memory): every pair below the threshold is recomputed wherever it lies."""
    import kernels.laplace as lap

    monkeypatch.setattr(lap, "_REFINE_CHUNK", 64)  # several looks at the runs and rows
    g = torch.Generator().manual_seed(11)
    z = torch.randn(m, 3, generator=g, dtype=torch.float64) * 0.3 + 30.0
    x = torch.randn(40, 3, generator=g, dtype=torch.float64) * 0.3 + 30.0
    cols = torch.arange(0, 40) * 13 % m  # near copies of centres spread over the runs and the tail
    x[::2] = z[cols[::2]] + 1e-6 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    xf, zf = x.float(), z.float()
    ref = cdist(xf.double().numpy(), zf.double().numpy(), "sqeuclidean")
    out = torch.empty(40, m) if layout == "rows" else torch.empty(m, 40).T  # columns: not adjacent in memory
    d2 = sq_distances(xf, zf, out=out).double().numpy()
    small = ref < 1e-4
    assert small.sum() >= 20
    assert set(np.nonzero(small)[1]) >= set(cols[::2].tolist())
    np.testing.assert_allclose(d2[small], ref[small], rtol=1e-4, atol=1e-12)
    # without the refinement the same pairs are off by the formula's round-off (the test can fail)
    monkeypatch.setattr(lap, "_refine_small", lambda *a, **k: None)
    rough = sq_distances(xf, zf).double().numpy()
    assert np.abs(rough[small] - ref[small]).max() > 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["laplace", "gaussian", "laplace_exp", "product_laplace"])
def test_far_pairs_keep_exp_on_its_fast_range(name, dtype):
    """Every exponent is floored at exp_floor (torch's CPU exp is 200x slower where its result is subnormal): far
    pairs get e^floor instead of a subnormal or 0 -- within e^floor of the exact value -- and near pairs are exact."""
    import math

    from kernels.family import Kernel
    from kernels.laplace import exp_floor

    g = torch.Generator().manual_seed(2)
    spread = 400.0 if dtype == torch.float32 else 1e5
    x = torch.randn(30, 4, generator=g, dtype=torch.float64) * spread
    z = torch.cat([x[:5] + 1e-3, torch.randn(20, 4, generator=g, dtype=torch.float64) * spread])
    kern = Kernel(name, 0.5, 0.7)
    K = kern.matrix(x.to(dtype), z.to(dtype)).double()
    dist = cdist(x.to(dtype).double().numpy(), z.to(dtype).double().numpy(),
                 "cityblock" if name == "product_laplace" else "euclidean")
    exact = np.exp(-dist**kern.power / kern.scale)
    floor = math.exp(exp_floor(dtype))
    assert float(K.min()) >= floor * (1 - 1e-5)  # never subnormal, never 0
    assert (exact < floor).mean() > 0.5  # the case is about far pairs
    np.testing.assert_allclose(K.numpy(), exact, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=floor * 1.001)
    # the AGOP's gradient weights on the same pairs stay finite and tiny for the far ones
    d2 = torch.as_tensor(dist**2, dtype=dtype).clamp_min(1e-6) if kern.radial else None
    if d2 is not None:
        w = kern.gradient_weights(d2.clone(), torch.empty_like(d2))
        assert torch.isfinite(w).all() and float(w.min()) > 0


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


def test_distance_cap_and_a_bad_cap():
    """The clamp's cap: the squared distance whose exponent is exp_floor, None beyond the dtype's range; a negative
    cap is a clear error."""
    from kernels.laplace import distance_cap, exp_floor

    assert distance_cap(torch.float32, 2.0) == pytest.approx((87.0 * 2.0) ** 2)
    assert distance_cap(torch.float64, 3.0, 2.0) == pytest.approx(707.0 * 3.0)
    assert distance_cap(torch.float32, 1e18) is None and distance_cap(torch.float64, 1e200) is None
    assert exp_floor(torch.float32) == -87.0
    with pytest.raises(ValueError, match="cap must be"):
        sq_distances(torch.ones(2, 2), torch.zeros(3, 2), cap=-1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_folded_gemm_gives_the_same_distances(dtype):
    """sq_distances(folded=...) -- one GEMM over [x, |x|^2, 1] [-2 z, 1, |z|^2]^T -- against cdist, and refined near
    pairs (copies of the columns among the rows) exact as without folding."""
    from kernels.laplace import folded_cols, folded_rows, sq_norms

    x = _near_duplicates().to(dtype)
    z = x[:250].clone()  # rows 0..249 of x are copies of the columns: near pairs to refine
    ref = cdist(x.double().numpy(), z.double().numpy()) ** 2
    x_sq, z_sq = sq_norms(x), sq_norms(z)
    folded = (folded_rows(x, x_sq), folded_cols(z, z_sq))
    assert folded[0].shape == (len(x), x.shape[1] + 2) and folded[1].shape == (len(z), z.shape[1] + 2)
    got = sq_distances(x, z, x_sq=x_sq, z_sq=z_sq, folded=folded).double().numpy()
    plain = sq_distances(x, z, x_sq=x_sq, z_sq=z_sq).double().numpy()
    scale = float(x_sq.max() + z_sq.max())
    eps = torch.finfo(dtype).eps
    assert np.abs(got - ref).max() < 64 * eps * scale and np.abs(got - plain).max() < 64 * eps * scale
    assert (got >= 0).all() and np.all(got[np.arange(250), np.arange(250)] == 0)  # the copies: exactly 0
    # the kernels read the folded GEMM the same way (into a given buffer, rows from a given work buffer)
    buf = torch.empty(len(x), len(z), dtype=dtype)
    rows = folded_rows(x, x_sq, out=torch.empty(len(x) + 5, x.shape[1] + 2, dtype=dtype))
    k = laplace_kernel_transformed(x, z, bandwidth=2.0, x_sq=x_sq, z_sq=z_sq, out=buf, folded=(rows, folded[1]))
    assert k.data_ptr() == buf.data_ptr()
    want = np.exp(-np.sqrt(ref) / 2.0)
    err = np.abs(k.double().numpy() - want).max()
    plain_err = np.abs(laplace_kernel_transformed(x, z, bandwidth=2.0).double().numpy() - want).max()
    # as accurate as the plain GEMM (a distance just above the refinement threshold keeps sqrt(round-off) either way)
    assert err <= 2 * plain_err + 4 * eps and err < 2e-5
