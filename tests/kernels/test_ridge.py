"""Ridge paths against independent references: brute-force leave-one-out refits, a dense solve per ridge value,
GCV from the explicit hat matrix, and the walk on functions with a known minimum."""
import numpy as np
import pytest
import torch

from kernels import Points, laplace_kernel
from kernels.solvers import RIDGE_GRID, loo_path, solve_centres_path, walk_path
from kernels.solvers.ridge import RIDGE_RTOL, ridge_grid
from tests.conftest import DEVICES

REGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 3.0)


def _noisy(n, d=3, c=2, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.stack([torch.sin(X[:, 0]) + X[:, 1] * X[:, 2], torch.cos(X[:, 1])][:c], 1)
    return X, Y + noise * torch.randn(n, c, generator=g, dtype=torch.float64)


def test_loo_path_matches_brute_force_refits():
    n = 200
    X, Y = _noisy(n)
    K = laplace_kernel(X, X, bandwidth=2.0)
    path, alpha, train_out = loo_path(K, Y, REGS)
    brute = []
    for lam in REGS:
        res = torch.empty_like(Y)
        for i in range(n):
            keep = torch.arange(n) != i
            a = torch.linalg.solve(K[keep][:, keep] + lam * torch.eye(n - 1, dtype=K.dtype), Y[keep])
            res[i] = Y[i] - K[i, keep] @ a
        brute.append(float(res.square().mean()))
    np.testing.assert_allclose(path.errors, brute, rtol=1e-8)
    assert path.regs == list(REGS) and path.criterion == "loo"
    assert path.reg == REGS[int(np.argmin(brute))]
    # the returned solution is the chosen value's exact solve, and its training outputs K alpha
    exact = torch.linalg.solve(K + path.reg * torch.eye(n, dtype=K.dtype), Y)
    torch.testing.assert_close(alpha, exact, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(train_out, K @ exact, rtol=1e-8, atol=1e-10)


def test_loo_path_prefers_a_larger_ridge_for_noisier_targets():
    X, Y = _noisy(300, noise=0.0)
    K = laplace_kernel(X, X, bandwidth=2.0)
    clean = loo_path(K, Y)[0].reg
    noisy = loo_path(K, Y + 1.0 * torch.randn(Y.shape, generator=torch.Generator().manual_seed(5),
                                               dtype=Y.dtype))[0].reg
    assert noisy >= 10 * clean


def _centre_problem(n=400, m=60, seed=1):
    X, Y = _noisy(n, seed=seed)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values
    pts, centres = Points.of(X, None), Points.of(X[idx], None)
    return X, Y, idx, pts, centres


@pytest.mark.parametrize("device", DEVICES)
def test_centres_path_matches_dense_solves(device):
    X, Y, idx, pts, centres = _centre_problem()
    X, Y, idx = X.to(device), Y.to(device), idx.to(device)
    pts, centres = Points.of(X, None), Points.of(X[idx], None)
    res = solve_centres_path(pts, centres, Y, regs=REGS, bandwidth=1.0)
    path = res.details["ridge_path"]
    Knm = laplace_kernel(X, X[idx], bandwidth=1.0).to(device)
    Kmm = laplace_kernel(X[idx], X[idx], bandwidth=1.0).to(device)
    jitter = res.details["jitter"]
    B = Kmm + jitter * torch.eye(len(idx), dtype=Kmm.dtype, device=device)
    A = Knm.T @ Knm
    n, c = Y.shape
    gcv = []
    for lam in REGS:
        beta = torch.linalg.solve(A + lam * B, Knm.T @ Y)
        H = Knm @ torch.linalg.solve(A + lam * B, Knm.T)
        rss = float((Y - Knm @ beta).square().sum())
        gcv.append(rss / (n * c) / (1 - float(torch.trace(H)) / n) ** 2)
        if lam == path.reg:
            torch.testing.assert_close(res.x, beta, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(path.errors, gcv, rtol=1e-8)
    assert path.criterion == "gcv" and res.reg_used == REGS[int(np.argmin(gcv))]


def test_centres_path_held_out_scores_every_solution():
    X, Y, idx, pts, centres = _centre_problem()
    Xv, Yv = _noisy(100, seed=9)
    Kvm = laplace_kernel(Xv, X[idx], bandwidth=1.0)
    seen = []

    def held_out(betas):
        seen.extend(betas)
        return [float((Kvm @ b - Yv).square().mean()) for b in betas]

    res = solve_centres_path(pts, centres, Y, regs=REGS, bandwidth=1.0, held_out=held_out)
    path = res.details["ridge_path"]
    Knm = laplace_kernel(X, X[idx], bandwidth=1.0)
    B = laplace_kernel(X[idx], X[idx], bandwidth=1.0) + res.details["jitter"] * torch.eye(len(idx), dtype=X.dtype)
    expect = [float((Kvm @ torch.linalg.solve(Knm.T @ Knm + lam * B, Knm.T @ Y) - Yv).square().mean())
              for lam in REGS]
    np.testing.assert_allclose(path.errors, expect, rtol=1e-7)
    # equal up to RIDGE_RTOL of the lowest error: the smallest such ridge is chosen
    low = int(np.argmin(expect))
    within = [k for k in range(len(REGS)) if expect[k] <= expect[low] * (1 + RIDGE_RTOL)]
    assert path.criterion == "holdout" and len(seen) == len(REGS) and res.reg_used == REGS[within[0]]
    assert path.lowest == low and path.record()["reg_lowest"] == REGS[low]


def test_centres_path_with_m_equal_n_is_the_exact_path():
    """With every row a centre, (K^2 + lam K) beta = K Y has the exact solution beta = (K + lam I)^{-1} Y."""
    X, Y = _noisy(120, seed=3)
    K = laplace_kernel(X, X, bandwidth=1.0)
    pts = Points.of(X, None)
    res = solve_centres_path(pts, pts, Y, regs=(1e-2,), bandwidth=1.0)
    exact = torch.linalg.solve(K + 1e-2 * torch.eye(120, dtype=K.dtype), Y)
    torch.testing.assert_close(K @ res.x, K @ exact, rtol=1e-6, atol=1e-6)


def test_walk_finds_the_minimum_and_stops_at_it():
    grid = ridge_grid(RIDGE_GRID)
    target = 1e-1
    calls = []

    def err(lam):
        calls.append(lam)
        return (np.log10(lam) - np.log10(target)) ** 2

    path = walk_path(err, start=1e-3)
    assert path.reg == pytest.approx(target)
    # from 1e-3 to 1e-1 in half decades: 4 steps, each scoring one new neighbour, plus the start's two
    assert len(calls) == len(set(calls)) == 7
    assert sorted(calls) == path.regs and path.criterion == "holdout"
    # a minimum at the grid's end stops there
    assert walk_path(lambda lam: -lam, start=1.0).reg == grid[-1]


def test_walk_on_a_flat_criterion_does_not_pick_its_ridge_from_round_off():
    """Held-out errors equal to parts in 1e9 over the whole grid (a noise-free target): the walk goes down to the
    smallest ridge whatever the round-off, instead of wherever the last digits happen to be lowest."""
    grid = ridge_grid(RIDGE_GRID)
    chosen = set()
    for seed in range(5):
        g = np.random.default_rng(seed)
        wobble = {lam: 1e-3 * (1 + 1e-9 * g.standard_normal()) for lam in grid}
        path = walk_path(lambda lam: wobble[lam], start=1e-3)
        chosen.add(path.reg)
        assert path.regs[0] == grid[0]  # it walked down to the grid's end
    assert chosen == {grid[0]}


def test_walk_moves_only_on_improvements_beyond_round_off():
    """A known answer: the lowest error at 1e-2, the value below it 0.05% worse (equal up to RIDGE_RTOL), the one
    below that 1% worse, above it 0.5% worse per step. The walk from 1e-2 steps down once and stops; the choice is
    the smaller ridge whose error equals the lowest (reg_lowest records the lowest). From far above it comes down."""
    grid = ridge_grid(RIDGE_GRID)
    k = int(np.argmin(np.abs(grid - 1e-2)))
    rel = {j: (0.5 if j == k - 1 else 10 if j < k - 1 else 5 * (j - k)) * RIDGE_RTOL for j in range(len(grid))}
    err = {float(grid[j]): 1.0 + rel[j] for j in range(len(grid))}
    calls = []

    def evaluate(lam):
        calls.append(lam)
        return err[lam]

    path = walk_path(evaluate, start=1e-2)
    assert path.reg == pytest.approx(grid[k - 1]) and path.record()["reg_lowest"] == pytest.approx(grid[k])
    assert sorted(calls) == [pytest.approx(grid[j]) for j in (k - 2, k - 1, k, k + 1)]
    assert walk_path(evaluate, start=1.0).reg == pytest.approx(grid[k - 1])
    # an improvement below RIDGE_RTOL does not move the walk up: errors falling 0.025% per half decade, from 1e-3 the
    # walk never steps up (it scores 3.2e-3 as a neighbour), and goes down while within 0.1% of the lowest error
    slope = lambda lam: 1.0 - 0.5 * RIDGE_RTOL * np.log10(lam)  # noqa: E731
    flat_up = walk_path(slope, start=1e-3)
    assert max(flat_up.regs) == pytest.approx(10 ** -2.5)
    low = slope(10 ** -2.5)
    assert flat_up.reg == pytest.approx(min(lam for lam in grid if slope(lam) <= low * (1 + RIDGE_RTOL)))


def test_walk_treats_a_failed_value_as_worst():
    path = walk_path(lambda lam: float("nan") if lam < 1e-3 else lam, start=1e-3)
    assert path.reg == pytest.approx(1e-3)


def test_bad_grids_are_refused():
    for regs in ((), (0.0, 1.0), (-1.0,), (float("nan"),)):
        with pytest.raises(ValueError, match="positive finite ridge"):
            ridge_grid(regs)


def test_loo_path_refuses_a_non_square_k_or_mismatched_targets():
    K = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="K must be a square matrix"):
        loo_path(K[:3], torch.ones(3))
    with pytest.raises(ValueError, match="Y must have K's 4 rows"):
        loo_path(K, torch.ones(3, 1))
