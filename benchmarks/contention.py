"""Suite `contention`: one fit on a quiet machine and beside busy processes, under each thread policy.

The fit (issue #29): low-rank ``y = x0 x1``, n = 10 240 training rows, d = 100, float32, bandwidth 10, 5 iterations,
``early_stopping=False``, scored on 5000 test rows. Each case runs it in a fresh process beside ``busy`` processes
that spin on one core each (started before the fit, killed after), under one ``n_threads`` policy: ``default``
(the estimator's default), ``None`` (torch's count), ``'auto'`` (the cores other processes leave idle) or ``1``.

Targets (on a quiet 2-core machine, this suite run alone): with the default policy, the fit beside one busy process
<= 1.5x its time alone, beside two <= 2.5x; alone no slower than torch's count. ``drfm bench --compare`` does not
apply (the cases differ only in ``busy`` and ``policy``): the ratios are in each record (``alone_seconds`` is the
same policy's alone case of the same run, when it ran first).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

N, N_TEST, D = 10240, 5000, 100
POLICIES = ("default", None, "auto", 1)

CASES = [{"suite": "contention", "kind": "fit", "model": "drfm.RFMRegressor", "dataset": "lowrank", "n": N, "d": D,
          "busy": busy, "policy": "none" if p is None else str(p)}
         for busy in (0, 1, 2) for p in POLICIES]
QUICK = [{**c, "n": 1000} for c in CASES if c["policy"] in ("default", "1") and c["busy"] < 2]


def cases(*, quick=False, sizes=None, device="auto"):
    base = QUICK if quick else CASES
    if sizes:
        base = [{**c, "n": n} for n in sizes for c in base]
    return [{**c, "device": "cpu"} for c in base]


def _spinners(k: int):
    """k processes that each keep one core busy (a Python busy loop) until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def _policy(name: str):
    return {"none": None, "auto": "auto", "1": 1}.get(name, "default")


def run_case(case: dict) -> dict:
    import numpy as np

    from drfm import RFMRegressor
    from drfm.data.datasets import load

    n = int(case["n"])
    data = load("lowrank", n_train=n, n_test=N_TEST, random_state=0, d=D)
    policy = _policy(case["policy"])
    params = dict(iters=5, bandwidth=10.0, early_stopping=False, dtype="float32", device="cpu", random_state=0)
    if policy != "default":
        params["n_threads"] = policy
    spin = _spinners(int(case["busy"]))
    try:
        time.sleep(1.0)  # the spinners running (and the thread policy's counters seeing them)
        model = RFMRegressor(**params)
        t0 = time.perf_counter()
        model.fit(data.X_train, data.y_train)
        fit_s = time.perf_counter() - t0
    finally:
        for p in spin:
            p.kill()
        for p in spin:
            p.wait()
    score = float(model.score(data.X_test, data.y_test))
    return {"fit_seconds": fit_s, "score": score, "metric": "r2", "n_threads_used": int(model.n_threads_),
            "load_before": os.getloadavg()[0], "cpu_count": os.cpu_count(),
            "y_checksum": float(np.asarray(model.predict(data.X_test[:100]), dtype=np.float64).sum())}
