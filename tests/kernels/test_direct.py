import numpy as np
import pytest
import torch

from kernels import laplace_kernel, solve_direct


def _kernel(n=80, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    return laplace_kernel(x, x, bandwidth=2.0), torch.randn(n, 2, generator=g, dtype=dtype)


@pytest.mark.parametrize("reg", [0.0, 1e-3, 1.0])
def test_direct_matches_numpy_solve(reg):
    K, Y = _kernel()
    ref = np.linalg.solve(K.numpy() + reg * np.eye(80), Y.numpy())
    res = solve_direct(K, Y, reg=reg)
    assert res.converged and res.reg_used == reg and res.method == "direct"
    np.testing.assert_allclose(res.x.numpy(), ref, rtol=1e-7, atol=1e-9)
    # K was not overwritten
    np.testing.assert_allclose(K.numpy(), _kernel()[0].numpy())


def test_direct_overwrite_and_vector_rhs():
    K, Y = _kernel()
    ref = np.linalg.solve(K.numpy() + 1e-2 * np.eye(80), Y[:, 0].numpy())
    res = solve_direct(K.clone(), Y[:, 0], reg=1e-2, overwrite_k=True)
    assert res.x.shape == (80,)
    np.testing.assert_allclose(res.x.numpy(), ref, rtol=1e-8)


def test_singular_matrix_gets_jitter_and_warning():
    K, Y = _kernel(n=30)
    K = torch.cat([K[:, :29], K[:, :1]], 1)
    K = torch.cat([K[:29], K[:1]], 0)  # duplicate point -> exactly singular
    with pytest.warns(RuntimeWarning, match="jitter"):
        res = solve_direct(K, Y, reg=0.0)
    assert res.reg_used > 0
    assert bool(torch.isfinite(res.x).all())
    resid = (K + res.reg_used * torch.eye(30, dtype=K.dtype)) @ res.x - Y
    assert float(resid.norm() / Y.norm()) < 1e-6


def test_singular_overwrite_uses_rebuild():
    K, Y = _kernel(n=20)
    K[-1], K[:, -1] = K[0], K[:, 0]
    K[-1, -1] = K[0, 0]
    calls = []

    def rebuild(out):
        calls.append(1)
        out.copy_(K)

    with pytest.warns(RuntimeWarning):
        res = solve_direct(K.clone(), Y, reg=0.0, overwrite_k=True, rebuild=rebuild)
    assert calls and bool(torch.isfinite(res.x).all())


def test_bad_arguments():
    K, Y = _kernel(n=10)
    with pytest.raises(ValueError, match="reg"):
        solve_direct(K, Y, reg=-1.0)
    with pytest.raises(ValueError, match="square"):
        solve_direct(K[:5], Y, reg=0.0)
    with pytest.raises(ValueError, match="rows"):
        solve_direct(K, Y[:5], reg=0.0)
