import numpy as np
import pytest
import torch

from kernels import laplace_agop, laplace_gradients
from kernels._reference import agop_autograd
from tests.conftest import DEVICES, random_spd, sym_sqrt


def _problem(seed=0, n=60, d=6, c=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    alpha = torch.randn(n, c, generator=g, dtype=torch.float64)
    m = random_spd(d, seed=seed + 1)
    return x, alpha, m


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("diag", [False, True])
@pytest.mark.parametrize("centering", [False, True])
def test_agop_matches_autograd_training_points(diag, centering):
    x, alpha, m = _problem()
    r = sym_sqrt(m)
    # sample points are training points: their own (non-differentiable) term is dropped in both
    got = laplace_agop(x[:25], x, alpha, bandwidth=2.5, sqrt_m=r, diag=diag, centering=centering,
                       sample_block=7, centre_block=11)
    ref = agop_autograd(x[:25], x, alpha, bandwidth=2.5, m=m, centering=centering, diag=diag)
    assert got.shape == ((6,) if diag else (6, 6))
    assert _rel(got, ref) < 1e-6


@pytest.mark.parametrize("diag", [False, True])
@pytest.mark.parametrize("centering", [False, True])
def test_agop_with_a_low_rank_rectangular_factor_matches_autograd(diag, centering):
    # a (d, r) factor F, M = F F^T of rank r < d: the AGOP runs in r factor coordinates and is mapped back
    x, alpha, _ = _problem(seed=13)
    g = torch.Generator().manual_seed(14)
    f = torch.randn(6, 2, generator=g, dtype=torch.float64)
    got = laplace_agop(x[:30], x, alpha, bandwidth=2.0, sqrt_m=f, diag=diag, centering=centering, sample_block=8,
                       centre_block=13)
    ref = agop_autograd(x[:30], x, alpha, bandwidth=2.0, m=f @ f.T, centering=centering, diag=diag)
    assert got.shape == ((6,) if diag else (6, 6))
    assert _rel(got, ref) < 1e-6
    if not diag:
        assert int(torch.linalg.matrix_rank(got, rtol=1e-8)) == 2  # the gradients live in the span of F
    grads = laplace_gradients(x[:30], x, alpha, bandwidth=2.0, sqrt_m=f)
    assert grads.shape == (30, 3, 6)
    if not (diag or centering):
        assert _rel(torch.einsum("bcd,bce->de", grads, grads) / 30, ref) < 1e-6


def test_agop_off_sample_points_and_diag_factor():
    x, alpha, _ = _problem(seed=3, c=1)
    g = torch.Generator().manual_seed(9)
    samples = torch.randn(15, 6, generator=g, dtype=torch.float64)
    rvec = torch.rand(6, generator=g, dtype=torch.float64) + 0.2
    got = laplace_agop(samples, x, alpha[:, 0], bandwidth=1.0, sqrt_m=rvec)
    ref = agop_autograd(samples, x, alpha[:, 0], bandwidth=1.0, m=torch.diag(rvec**2))
    assert _rel(got, ref) < 1e-6


def test_agop_blocking_invariance_and_float32():
    x, alpha, m = _problem(seed=5, n=200, d=8, c=2)
    r = sym_sqrt(m)
    whole = laplace_agop(x, x, alpha, bandwidth=3.0, sqrt_m=r)
    tiled = laplace_agop(x, x, alpha, bandwidth=3.0, sqrt_m=r, sample_block=17, centre_block=31)
    assert _rel(tiled, whole) < 1e-10  # float64 round-off, amplified by the floored self terms
    f32 = laplace_agop(x.float(), x.float(), alpha.float(), bandwidth=3.0, sqrt_m=r.float(), memory_budget=200_000)
    assert _rel(f32, whole) < 1e-4


def test_gradients_match_autograd_and_duplicates_are_finite():
    x, alpha, m = _problem(seed=7, n=40, d=4, c=2)
    x = torch.cat([x, x[:5]])  # exact duplicate points: zero distances must be dropped, not produce inf/nan
    alpha = torch.cat([alpha, alpha[:5]])
    r = sym_sqrt(m)
    gr = laplace_gradients(x[:10], x, alpha, bandwidth=2.0, sqrt_m=r)
    assert gr.shape == (10, 2, 4) and bool(torch.isfinite(gr).all())
    ref = agop_autograd(x[:10], x, alpha, bandwidth=2.0, m=m)
    got = torch.einsum("bcd,bce->de", gr, gr) / 10
    assert _rel(got, ref) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_agop_device(device):
    x, alpha, m = _problem(seed=11)
    r = sym_sqrt(m)
    ref = laplace_agop(x, x, alpha, bandwidth=2.0, sqrt_m=r)
    got = laplace_agop(x.to(device), x.to(device), alpha.to(device), bandwidth=2.0, sqrt_m=r.to(device))
    np.testing.assert_allclose(got.cpu().numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)
