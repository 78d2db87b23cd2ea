"""Lanes (kernels.workers): tiled CPU work shared by single-threaded workers. Each laned product is checked against a
dense float64 reference, and for the same bits under 1, 2 and 3 workers (the lanes fix the summation order)."""
import threading

import pytest
import torch

from kernels import Points
from kernels.agop import agop_moments
from kernels.family import as_kernel
from kernels.operators import StoredKernel
from kernels.phases import PhaseClock, phase
from kernels.solvers.centres import CentreSystem
from kernels.workers import LANES, in_lane, lane_bounds, lane_workers, run_lanes, workers_for


def test_lane_bounds_cover_the_items_in_order():
    for n in (0, 1, 5, 16, 17, 1000):
        b = lane_bounds(n)
        assert len(b) == min(n, LANES)
        assert [i for a, c in b for i in range(a, c)] == list(range(n))
        if b:
            sizes = [c - a for a, c in b]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="n_items"):
        lane_bounds(-1)


def test_run_lanes_keeps_lane_order_one_thread_each_and_restores_threads():
    before = torch.get_num_threads()
    seen = []

    def compute(a, b, w):
        seen.append((threading.get_ident(), w, torch.get_num_threads(), in_lane(), workers_for("cpu")))
        return list(range(a, b))

    out = run_lanes(lane_bounds(40), compute, workers=3)
    assert [i for part in out for i in part] == list(range(40))
    assert all(t == 1 and inside and nested == 1 for _, _, t, inside, nested in seen)  # one thread, no nesting
    assert {w for _, w, *_ in seen} <= {0, 1, 2}
    assert torch.get_num_threads() == before and not in_lane()


def test_an_error_in_a_lane_is_raised_on_the_caller():
    def compute(a, b, w):
        if a >= 20:
            raise ValueError(f"lane at {a}")
        return a

    for workers in (1, 2):
        with pytest.raises(ValueError, match="lane at"):
            run_lanes(lane_bounds(40), compute, workers=workers)
    assert not in_lane()


def test_lane_workers_setting():
    with lane_workers(3):
        assert workers_for("cpu") == 3
        with lane_workers(None):
            assert workers_for("cpu") == torch.get_num_threads()
    assert workers_for("meta") == 1
    with pytest.raises(ValueError, match="lane workers"):
        with lane_workers(0):
            pass


def _per_workers(fn):
    out = []
    for w in (1, 2, 3):
        with lane_workers(w):
            out.append(fn())
    return out


def _same_bits(results):
    for r in results[1:]:
        assert torch.equal(r, results[0])


@pytest.mark.parametrize("dtype,store", [(torch.float32, False), (torch.float64, False), (torch.float32, True)])
def test_centre_products_are_exact_and_the_same_for_any_worker_count(dtype, store):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 5, generator=g, dtype=dtype)
    C = X[::10]
    S = CentreSystem(Points.of(X), Points.of(C), bandwidth=2.0, reg=1e-3, memory_budget=2**20, store=store)
    assert S.row_block < 3000 // 4  # several tiles, so the lanes split work
    v = torch.randn(C.shape[0], 3, generator=g, dtype=torch.float64)
    Y = torch.randn(3000, 2, generator=g, dtype=dtype)
    prods = _per_workers(lambda: S.normal_product(v))
    rhs = _per_workers(lambda: S.rhs(Y))
    _same_bits(prods)
    _same_bits(rhs)
    K = as_kernel(None, 2.0).matrix(X.double(), C.double())
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(prods[0], K.T @ (K @ v), **tol)
    torch.testing.assert_close(rhs[0], K.T @ Y.double(), **tol)


@pytest.mark.parametrize("c", [1, 7])
def test_stored_matrix_build_and_products_are_exact_and_the_same_for_any_worker_count(c):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1500, 6, generator=g, dtype=torch.float64)
    mats = _per_workers(lambda: StoredKernel(X, bandwidth=3.0).K.clone())
    _same_bits(mats)
    ref = as_kernel(None, 3.0).matrix(X, X)
    ref.diagonal().fill_(1.0)
    torch.testing.assert_close(mats[0], ref, rtol=1e-12, atol=1e-12)
    op = StoredKernel(X, bandwidth=3.0)
    v = torch.randn(1500, c, generator=g, dtype=torch.float64)
    prods = _per_workers(lambda: op.matmul(v))
    _same_bits(prods)
    torch.testing.assert_close(prods[0], ref @ v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,centering,diag", [("laplace", False, False), ("laplace", True, False),
                                                 ("laplace", False, True), ("product_laplace", False, False)])
def test_agop_sums_are_the_same_for_any_worker_count(kind, centering, diag):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(900, 4, generator=g, dtype=torch.float64)
    alpha = torch.randn(300, 2, generator=g, dtype=torch.float64)
    kern = as_kernel(kind, 2.0) if kind != "laplace" else as_kernel(None, 2.0)
    sqrt_m = torch.rand(4, dtype=torch.float64, generator=g) + 0.5 if diag else None
    res = _per_workers(lambda: agop_moments(X, X[:300], alpha, kernel=kern, sqrt_m=sqrt_m, diag=diag,
                                            centering=centering))
    _same_bits([r[0] for r in res])
    if centering:
        _same_bits([r[1] for r in res])
    # against the sums over the samples one at a time (no lanes, no blocks)
    with lane_workers(1):
        acc = sum(agop_moments(X[i : i + 1], X[:300], alpha, kernel=kern, sqrt_m=sqrt_m, diag=diag)[0]
                  for i in range(0, 900, 97))
    acc_ref = sum(agop_moments(X[i : i + 1], X[:300], alpha, kernel=kern, sqrt_m=sqrt_m, diag=diag,
                               sample_block=1)[0] for i in range(0, 900, 97))
    torch.testing.assert_close(acc, acc_ref, rtol=1e-12, atol=1e-12)
    every = agop_moments(X, X[:300], alpha, kernel=kern, sqrt_m=sqrt_m, diag=diag, sample_block=1)[0]
    torch.testing.assert_close(res[0][0], every, rtol=1e-10, atol=1e-10)


def test_phases_inside_lanes_count_in_the_phase_that_started_them():
    def compute(a, b, w):
        with phase("kernel"):
            return a

    with PhaseClock() as clock:
        with phase("solve"):
            run_lanes(lane_bounds(8), compute, workers=2)
        with phase("kernel"):  # (outside lanes it is recorded)
            pass
    assert clock.calls == {"solve": 1, "kernel": 1}
