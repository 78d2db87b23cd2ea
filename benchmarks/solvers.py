"""Suite `solvers`: RFM (5 iterations, low-rank y = x_0 * x_1, d = 100) with each linear solver, side by side.

Reports fit seconds, peak RSS, test R^2 and the per-iteration solver work (CG iterations / EigenPro epochs), so
time-to-equal-test-error can be read off one run. Sizes default to 12800 (all solvers) and 50000/100000/200000
(iterative solvers only: the direct solve needs n^2 memory); pass --n to choose.
"""
from __future__ import annotations

import time
import warnings

PARAMS = {"iters": 5, "bandwidth": 10.0, "reg": 1e-3}

CASES = [
    {"suite": "solvers", "kind": "rfm", "solver": "direct", "n": 12800},
    {"suite": "solvers", "kind": "rfm", "solver": "cg", "n": 12800, "solver_tol": 1e-3},
    {"suite": "solvers", "kind": "rfm", "solver": "cg", "n": 12800, "solver_tol": 1e-2},
    {"suite": "solvers", "kind": "rfm", "solver": "eigenpro", "n": 12800, "solver_tol": 1e-2, "solver_max_iter": 5},
    {"suite": "solvers", "kind": "rfm", "solver": "cg", "n": 50000, "solver_tol": 1e-2},
    {"suite": "solvers", "kind": "rfm", "solver": "cg", "n": 100000, "solver_tol": 1e-2},
    {"suite": "solvers", "kind": "rfm", "solver": "cg", "n": 200000, "solver_tol": 1e-2},
]
QUICK_CASES = [
    {"suite": "solvers", "kind": "rfm", "solver": s, "n": 1500, "solver_tol": 1e-3} for s in ("direct", "cg", "eigenpro")
]


def cases(*, quick=False, sizes=None, device="auto"):
    base = QUICK_CASES if quick else CASES
    if sizes:
        kinds = {(c["solver"], c.get("solver_tol")): c for c in base}
        base = [{**c, "n": n} for n in sizes for c in kinds.values()]
    return [{**c, "device": device} for c in base]


def run_case(case: dict) -> dict:
    from drfm import RFMRegressor
    from drfm.datasets import load

    data = load("lowrank", n_train=case["n"], n_test=5000)
    kw = {k: case[k] for k in ("solver_tol", "solver_max_iter") if k in case}
    model = RFMRegressor(**PARAMS, solver=case["solver"], device=case["device"], random_state=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        model.fit(data.X_train, data.y_train)
        fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = model.score(data.X_test, data.y_test)
    return {
        "fit_seconds": fit_s, "predict_seconds": time.perf_counter() - t0, "score": float(score), "metric": "r2",
        "device": model.device_, "dataset": "lowrank", "model": f"RFMRegressor[{case['solver']}]",
        "solver_iters": [h["solver_iters"] for h in model.history_],
        "solver_residuals": [h["solver_residual"] for h in model.history_],
        "iter_seconds": [round(h["seconds"], 3) for h in model.history_],
    }
