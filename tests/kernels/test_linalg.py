"""PSD matrix functions, the feature-matrix update and the memory planner against independent references."""
import numpy as np
import pytest
import torch
from scipy.linalg import fractional_matrix_power

from kernels import MemoryPlan, compact_factor, feature_matrix_update, psd_power
from kernels.agop import plan_agop
from kernels.memory import square_tile
from kernels.solvers import plan_solve


def sym_sqrt_psd(A):
    w, V = np.linalg.eigh(A)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def test_compact_factor_preserves_distances_and_drops_null_directions():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((10, 3))
    R = torch.tensor(sym_sqrt_psd(G @ G.T))  # rank 3
    F = compact_factor(R)
    assert F.shape == (10, 3)
    x = torch.tensor(rng.standard_normal((50, 10)))
    np.testing.assert_allclose((x @ F).norm(dim=1), (x @ R).norm(dim=1), rtol=1e-10)
    np.testing.assert_allclose(F @ F.T, R @ R, atol=1e-10)  # the same M = R^2
    full = torch.tensor(sym_sqrt_psd(G @ G.T + np.eye(10)))
    assert compact_factor(full) is full
    assert compact_factor(None) is None
    diag = torch.ones(4)
    assert compact_factor(diag) is diag


@pytest.mark.parametrize("power", [0.5, 0.25, 1.0, 2.0])
def test_psd_power_matches_scipy_fractional_power(power):
    rng = np.random.default_rng(1)
    G = rng.standard_normal((8, 8))
    A = G @ G.T + 0.1 * np.eye(8)  # positive definite: scipy's power is well defined
    ref = fractional_matrix_power(A, power).real
    got = psd_power(torch.tensor(A, dtype=torch.float32), power)  # any input dtype, float64 result
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(psd_power(torch.tensor(A), power).numpy(), ref, rtol=1e-9, atol=1e-9)
    # a diagonal is raised elementwise; negative round-off is clipped to 0
    np.testing.assert_allclose(psd_power(torch.tensor([4.0, 0.0, -1e-12]), 0.5).numpy(), [2.0, 0.0, 0.0])


def test_feature_matrix_update_is_the_normalised_power():
    rng = np.random.default_rng(2)
    G = rng.standard_normal((6, 3))
    A = G @ G.T * 37.0
    R = feature_matrix_update(torch.tensor(A), power=0.5, normalize=True).numpy()
    np.testing.assert_allclose(R @ R, A / np.abs(A).max(), atol=1e-12)
    R1 = feature_matrix_update(torch.tensor(A), power=1.0, normalize=False).numpy()
    np.testing.assert_allclose(R1, A, rtol=1e-12, atol=1e-10)
    zero = feature_matrix_update(torch.zeros(4, 4), power=0.5)
    assert torch.equal(zero, torch.zeros(4, 4, dtype=torch.float64))  # nothing to normalise by: no NaN


def test_memory_plan_adds_items_and_names_the_largest_when_over_budget():
    plan = MemoryPlan(10 * 2**20).add("a", 2**20).add("b", 3 * 2**20).add("a", 2**20)
    assert plan.total == 5 * 2**20 and plan.items["a"] == 2 * 2**20
    assert plan.left() == 5 * 2**20 and plan.fits()
    plan.check("X")  # fits
    plan.add("big", 20 * 2**20)
    with pytest.raises(ValueError, match=r"X needs at least .* memory_budget is 10.0 MiB \(largest items: big 20.0 MiB"):
        plan.check("X")


@pytest.mark.parametrize("budget", [10**6, 10**7, 10**9])
def test_agop_and_square_tiles_stay_within_the_budget(budget):
    for n_s, n_c, c, d in ((5000, 8000, 10, 50), (300, 300, 1, 5)):
        p = plan_agop(n_s, n_c, c, d, itemsize=4, budget=budget)
        per_row = (2 * c * d + c + 2 * d) * 4
        assert p.row_block * p.col_block * 4 * 2 + p.row_block * per_row + p.col_block * c * d * 4 <= budget
        assert 1 <= p.row_block <= n_s and 1 <= p.col_block <= n_c
    b = square_tile(10**5, itemsize=8, budget=budget)
    assert 3 * b * b * 8 <= max(budget, 24)


def test_plan_solve_shrinks_the_nystrom_system_to_a_tight_budget():
    big = plan_solve(30000, 100, 1, dtype=torch.float32, device="cpu", budget=8 * 2**30)
    assert big.solver == "cg" and big.store and (big.n_centres, big.rank) == (2000, 500)
    tight = plan_solve(30000, 100, 1, dtype=torch.float32, device="cpu", budget=64 * 2**20)
    assert tight.solver == "cg" and not tight.store
    assert tight.n_centres < 2000 and tight.rank < 500 and "reduced" in tight.reason
    assert tight.memory.total <= 64 * 2**20
    with pytest.raises(ValueError, match=r"about \d+ samples would fit"):
        plan_solve(30000, 100, 1, dtype=torch.float32, device="cpu", budget=2 * 2**20)
