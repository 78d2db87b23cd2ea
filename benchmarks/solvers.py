"""Suite `solvers`: RFM (5 iterations) with each linear solver, side by side in one run.

Tasks: low-rank ``y = x_0 * x_1`` (d = 100; test R^2) and 10-class ``make_classification`` (d = 100; accuracy).
Reports fit seconds, peak RSS, test score and the per-iteration solver work (CG iterations / EigenPro epochs, and
whether the kernel matrix was stored), so time-to-equal-test-error can be read off one run.

Targets (scale issue, 2-core CPU, float32): at equal test score, warm-started preconditioned CG beats repeated
Cholesky -- low-rank n = 12800 fit <= 25 s, 10-class n = 16000 fit <= 60 s; low-rank n = 100000 fit <= 15 min with
peak RSS <= 8 GB and R^2 >= 0.99; n = 200000 runs within memory. Million-row issue: the m-centre model ('auto' beyond
the stored matrix) at n = 200000 fit <= 120 s with R^2 >= 0.998; at n = 1000000 fit <= 15 min, peak RSS <= 16 GB,
R^2 >= 0.99, 10-class accuracy at least the n = 200000 fit's; the time of one m-centre CG step against its floor
(kind ``centre_step``). ``--n`` replaces the sizes (every solver at every n;
beyond what a stored n x n matrix allows, the direct solver raises and the case records the error).
"""
from __future__ import annotations

import time
import warnings

PARAMS = {"iters": 5, "bandwidth": 10.0, "reg": 1e-3}
#: beyond a stored kernel matrix: M is learned on a 12800-point subset, the final machine on all n (see README)
LARGE = {"iter_sample_size": 12800, "solver_tol": 1e-3, "solver_max_iter": 10}

CASES = [
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "direct", "n": 12800},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 12800},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 12800, "params": {"solver_tol": 1e-3}},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "eigenpro", "n": 12800,
     "params": {"solver_tol": 1e-2, "solver_max_iter": 5}},
    {"suite": "solvers", "kind": "rfm", "dataset": "classif10", "solver": "direct", "n": 16000},
    {"suite": "solvers", "kind": "rfm", "dataset": "classif10", "solver": "cg", "n": 16000},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 50000, "params": LARGE},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 100000, "params": LARGE},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 200000, "params": LARGE},
    # the m-centre model against the exact solve where both run, and EigenPro on the same problem
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 20000},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "nystrom", "n": 20000,
     "params": {"n_centres": 2000}},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "eigenpro", "n": 20000,
     "params": {"solver_tol": 1e-2, "solver_max_iter": 5}},
    # beyond the stored matrix: solver='auto' takes the m-centre model (M learned on 16000 rows, iter_sample_size='auto')
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "auto", "n": 200000},
    {"suite": "solvers", "kind": "rfm", "dataset": "classif10", "solver": "auto", "n": 200000},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "auto", "n": 1000000},
    {"suite": "solvers", "kind": "rfm", "dataset": "classif10", "solver": "auto", "n": 1000000},
    # one m-centre CG step against its floor (n m r multiply-adds at the measured GEMM rate + n m exponentials at the
    # measured exp rate)
    {"suite": "solvers", "kind": "centre_step", "dataset": "gaussian", "solver": "nystrom", "n": 200000,
     "params": {"m": 4472, "r": 2, "c": 1}},
    {"suite": "solvers", "kind": "centre_step", "dataset": "gaussian", "solver": "nystrom", "n": 1000000,
     "params": {"m": 8000, "r": 2, "c": 1}},
    {"suite": "solvers", "kind": "centre_step", "dataset": "gaussian", "solver": "nystrom", "n": 1000000,
     "params": {"m": 8000, "r": 10, "c": 10}},
]
QUICK_CASES = [
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "direct", "n": 1500},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 1500, "params": {"solver_tol": 1e-3}},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "eigenpro", "n": 1500,
     "params": {"solver_tol": 1e-2, "solver_max_iter": 5}},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "nystrom", "n": 1500,
     "params": {"n_centres": 300}},
    {"suite": "solvers", "kind": "centre_step", "dataset": "gaussian", "solver": "nystrom", "n": 20000,
     "params": {"m": 500, "r": 2, "c": 1}},
]


def _label(case: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in sorted(case.get("params", {}).items()))
    return f"RFM[{case['solver']}{',' + params if params else ''}]"


#: reg='auto': the leave-one-out path against one Cholesky solve (where the route switch sits)
CASES += [{"suite": "solvers", "kind": "ridge_path", "dataset": "random", "solver": "direct", "n": n}
          for n in (500, 1000, 2000, 3000, 4000)]


def cases(*, quick=False, sizes=None, device="auto"):
    base = QUICK_CASES if quick else CASES
    if sizes:
        variants = {(c["dataset"], c["solver"], _label(c)): c for c in base}
        base = [{**c, "n": n} for n in sizes for c in variants.values()]
    return [{**c, "model": _label(c), "device": device} for c in base]


def _rate(fn, work, repeat=5):
    """Work per second of ``fn`` (median of ``repeat`` timed calls after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return work / sorted(times)[len(times) // 2]


def run_centre_step(case: dict) -> dict:
    """Seconds per m-centre CG step (one product with K_nm^T K_nm) against its floor on this machine."""
    import torch

    from kernels import Points
    from kernels.solvers.centres import CentreSystem

    n, (m, r, c) = case["n"], (case["params"][k] for k in ("m", "r", "c"))
    g = torch.Generator().manual_seed(0)
    pts = Points.of(torch.randn(n, r, generator=g))
    idx = torch.randperm(n, generator=g)[:m]
    system = CentreSystem(pts, Points(pts.z[idx], pts.z_sq[idx]), bandwidth=10.0, reg=1e-3)
    v = torch.randn(m, c, generator=g, dtype=torch.float64)
    step = 1.0 / _rate(lambda: system.normal_product(v), 1.0, repeat=3)
    a, b = torch.randn(2048, 256, generator=g), torch.randn(256, 2048, generator=g)
    gemm = _rate(lambda: a @ b, 2 * 2048 * 256 * 2048)
    e = torch.randn(4096, 4096, generator=g)
    exps = _rate(lambda: torch.exp(e), e.numel())
    floor = 2 * n * m * r / gemm + n * m / exps
    return {"step_seconds": step, "floor_seconds": floor, "ratio": step / floor, "gemm_flops": gemm,
            "exp_per_second": exps, "row_block": system.row_block, "stored": system.K is not None}


def run_ridge_path(case: dict) -> dict:
    """reg='auto' routes on one n x n Laplace matrix (float32, d = 20, one output): the exact leave-one-out path
    (float64 eigendecomposition, all 17 values) against one Cholesky solve (a walk costs 3-6 of them, plus a kernel
    rebuild each) -- where the switch between the routes sits."""
    import numpy as np
    import torch

    from kernels import laplace_kernel
    from kernels.solvers import loo_path, solve_direct

    n = case["n"]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 20, generator=g)
    Y = (X[:, :1] * X[:, 1:2] + 0.5 * torch.randn(n, 1, generator=g))
    K = laplace_kernel(X, X, bandwidth=10.0)

    def build():
        laplace_kernel(X, X, bandwidth=10.0, out=K)

    times = {"loo_seconds": lambda: loo_path(K, Y), "cholesky_seconds": lambda: solve_direct(K, Y, reg=1e-2),
             "kernel_seconds": build}
    out = {}
    for key, fn in times.items():
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[key] = float(np.median(ts))
    out["loo_over_cholesky"] = out["loo_seconds"] / out["cholesky_seconds"]
    return out


def run_case(case: dict) -> dict:
    if case["kind"] == "centre_step":
        return run_centre_step(case)
    if case["kind"] == "ridge_path":
        return run_ridge_path(case)
    from drfm import RFMClassifier, RFMRegressor
    from drfm.datasets import load

    data = load(case["dataset"], n_train=case["n"], n_test=5000)
    cls = RFMClassifier if data.task == "classification" else RFMRegressor
    model = cls(**{**PARAMS, **case.get("params", {})}, solver=case["solver"], device=case["device"],
                random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        model.fit(data.X_train, data.y_train)
        fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = model.score(data.X_test, data.y_test)
    return {
        "fit_seconds": fit_s, "predict_seconds": time.perf_counter() - t0, "score": float(score),
        "metric": "accuracy" if data.task == "classification" else "r2", "device": model.device_,
        "solvers": [f"{h['solver']}:{h['n_rows']}:{h['solver_iters']}" + (f":m={h['n_centres']}" if h.get("n_centres")
                                                                            else "") for h in model.history_],
        "n_centres": model.X_fit_.shape[0],
        "stored_kernel": ["stored" in h["solver_reason"] for h in model.history_],
        "solver_residuals": [h["solver_residual"] for h in model.history_],
        "iter_seconds": [round(h["seconds"], 3) for h in model.history_],
    }
