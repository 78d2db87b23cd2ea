"""Suite `solvers`: RFM (5 iterations) with each linear solver, side by side in one run.

Tasks: low-rank ``y = x_0 * x_1`` (d = 100; test R^2) and 10-class ``make_classification`` (d = 100; accuracy).
Reports fit seconds, peak RSS, test score and the per-iteration solver work (CG iterations / EigenPro epochs, and
whether the kernel matrix was stored), so time-to-equal-test-error can be read off one run.

Targets (scale issue, 2-core CPU, float32): at equal test score, warm-started preconditioned CG beats repeated
Cholesky -- low-rank n = 12800 fit <= 25 s, 10-class n = 16000 fit <= 60 s; low-rank n = 100000 fit <= 15 min with
peak RSS <= 8 GB and R^2 >= 0.99; n = 200000 runs within memory. ``--n`` replaces the sizes (every solver at every n;
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
]
QUICK_CASES = [
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "direct", "n": 1500},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "cg", "n": 1500, "params": {"solver_tol": 1e-3}},
    {"suite": "solvers", "kind": "rfm", "dataset": "lowrank", "solver": "eigenpro", "n": 1500,
     "params": {"solver_tol": 1e-2, "solver_max_iter": 5}},
]


def _label(case: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in sorted(case.get("params", {}).items()))
    return f"RFM[{case['solver']}{',' + params if params else ''}]"


def cases(*, quick=False, sizes=None, device="auto"):
    base = QUICK_CASES if quick else CASES
    if sizes:
        variants = {(c["dataset"], c["solver"], _label(c)): c for c in base}
        base = [{**c, "n": n} for n in sizes for c in variants.values()]
    return [{**c, "model": _label(c), "device": device} for c in base]


def run_case(case: dict) -> dict:
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
        "solvers": [f"{h['solver']}:{h['n_rows']}:{h['solver_iters']}" for h in model.history_],
        "stored_kernel": ["stored" in h["solver_reason"] for h in model.history_],
        "solver_residuals": [h["solver_residual"] for h in model.history_],
        "iter_seconds": [round(h["seconds"], 3) for h in model.history_],
    }
