import numpy as np
import pytest
import torch

from kernels import kernel_matmul, laplace_kernel, plan_blocks
from tests.conftest import DEVICES, DTYPES, random_spd, sym_sqrt

TOL = {torch.float32: 1e-4, torch.float64: 1e-11}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
# budgets for: split columns (64-row tiles of a few columns), 64-row blocks of full width, one tile
@pytest.mark.parametrize("budget", [64 * 11 * 8 + 64 * 48 + 100, 64 * 89 * 8 + 64 * 48 + 100, 10**8])
def test_blocked_equals_dense(dtype, device, budget):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(101, 5, generator=g, dtype=dtype).to(device)
    z = torch.randn(89, 5, generator=g, dtype=dtype).to(device)
    v = torch.randn(89, 3, generator=g, dtype=dtype).to(device)
    r = sym_sqrt(random_spd(5, seed=1)).to(device, dtype)
    dense = laplace_kernel(x.double(), z.double(), bandwidth=2.0, sqrt_m=r.double()) @ v.double()
    got = kernel_matmul(x, z, v, bandwidth=2.0, sqrt_m=r, memory_budget=budget)
    np.testing.assert_allclose(got.cpu().double().numpy(), dense.cpu().numpy(), rtol=TOL[dtype], atol=TOL[dtype])


def test_blocked_vector_rhs_and_tiny_budget():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64)
    v = torch.randn(300, generator=g, dtype=torch.float64)
    dense = laplace_kernel(x, x, bandwidth=1.5) @ v
    budget = 64 * 23 * 8 + 64 * 2 * 8 + 100  # forces column splitting: 64-row tiles of 23 columns
    plan = plan_blocks(300, 300, itemsize=8, budget=budget, per_row_bytes=16)
    assert plan.col_block < 300 and 300 % plan.col_block != 0
    assert plan.bytes <= budget
    got = kernel_matmul(x, x, v, bandwidth=1.5, memory_budget=budget)
    assert got.shape == (300,)
    # x against itself: the blocked tiles see self-distances through the GEMM formula (round-off ~1e-8 after sqrt)
    np.testing.assert_allclose(got.numpy(), dense.numpy(), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("n,m,budget", [(1000, 500, 10**5), (10, 10, 10**9), (5000, 5000, 2 * 10**6)])
def test_plan_respects_budget(n, m, budget):
    plan = plan_blocks(n, m, itemsize=4, budget=budget, per_row_bytes=8, fixed_bytes=1000)
    assert plan.row_block * plan.col_block * 4 + plan.row_block * 8 + 1000 <= budget
    assert 1 <= plan.row_block <= n and 1 <= plan.col_block <= m


def test_plan_refuses_impossible_budget():
    with pytest.raises(ValueError, match="memory_budget"):
        plan_blocks(100, 100, itemsize=4, budget=100, fixed_bytes=1000)


@pytest.mark.parametrize("device", DEVICES)
def test_wide_accumulation_matches_float64(device):
    """float32 tiles summed in float64: the large-coefficient case (alternating +-1e3) where float32 sums lose digits."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    z = torch.randn(3000, 5, generator=g, dtype=torch.float64)
    v = 1e3 * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    x32, z32, v32 = (t.to(device, torch.float32) for t in (x, z, v))
    # reference: the float32 kernel values themselves, multiplied in float64 (isolates the summation)
    ref = (laplace_kernel(x32, z32, bandwidth=2.0).double() @ v32.double()).cpu().numpy()
    wide = kernel_matmul(x32, z32, v32, bandwidth=2.0, memory_budget=2**20, accumulate=torch.float64)
    narrow = kernel_matmul(x32, z32, v32, bandwidth=2.0, memory_budget=2**20)
    assert wide.dtype == torch.float64 and narrow.dtype == torch.float32
    e_wide = np.abs(wide.cpu().numpy() - ref).max()
    e_narrow = np.abs(narrow.cpu().double().numpy() - ref).max()
    assert e_wide < 1e-9 * np.abs(v.numpy()).sum() and e_wide < e_narrow / 10, (e_wide, e_narrow)
    # same dtype requested: the plain path
    assert kernel_matmul(x32, z32, v32, bandwidth=2.0, accumulate=torch.float32).dtype == torch.float32
