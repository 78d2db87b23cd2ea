"""Peak memory of a fit stays under its memory_budget (measured in a fresh subprocess)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, warnings
import numpy as np
import torch
from drfm import RFMRegressor
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
n, d = N, 10
X = rng.standard_normal((n, d)).astype(np.float32)
y = X[:, 0] * X[:, 1]
torch.zeros(1) @ torch.zeros(1)  # warm up the allocator / BLAS
model = RFMRegressor(iters=1, memory_budget=BUDGET, solver="cg", solver_tol=1e-2, solver_max_iter=15, random_state=0)
model.fit(X[:500], y[:500])  # warm up every code path once
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model.fit(X, y)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - base, "solver": model.solver_, "dense_bytes": n * n * 4,
                  "stored": ["stored" in h["solver_reason"] for h in model.history_]}))
"""


@pytest.mark.parametrize("n, budget, stored", [
    (15000, 150 * 2**20, False),  # the 900 MB kernel matrix does not fit 150 MB: blocked products
    (6000, 300 * 2**20, True),  # the 144 MB matrix fits beside the solver's ~60 MB: CG on the stored matrix
])
def test_fit_peak_memory_under_budget(n, budget, stored):
    # glibc would otherwise keep freed blocks of up to 32 MB in its heap, so RSS would count allocator caching
    # rather than what the fit holds; with a fixed mmap threshold, freed buffers go back to the OS
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    child = CHILD.replace("BUDGET", str(budget)).replace("N,", f"{n},")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["solver"] == "cg" and all(s == stored for s in res["stored"]), res
    # the fit's own peak growth stays within the budget (the data and fitted copies are counted inside it)
    assert res["growth"] <= budget, res
