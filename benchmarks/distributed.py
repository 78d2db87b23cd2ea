"""Suite `distributed`: the row-sharded kernel operator at world size 1 and 2 (gloo, one thread per process).

On the low-rank task (d = 100): kernel ridge (M = I, bandwidth 10, reg 1e-3) by Nystrom-preconditioned CG on the
sharded operator, a fixed number of CG steps (``steps``), reporting per rank the seconds per CG step, the bytes each
rank moved through the collectives per CG step (counted at the collectives, :class:`kernels.distributed.Comm`), the
one-off bytes (gathering the points, the preconditioner) and the test R^2 of the result -- identical (to round-off)
across world sizes, since the same steps are taken. On a 2-core CPU this shows correctness and communication volume,
not a speed-up: two processes share the two cores with the harness.

Each case starts its own ranks (``python -m benchmarks.distributed WORLD RANK PORT CASE_JSON OUT``); rank 0's numbers
and every rank's step time are returned.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [{"suite": "distributed", "kind": "cg_step", "dataset": "lowrank", "n": 50000, "world_size": w, "steps": 5}
         for w in (1, 2)]
QUICK = [{"suite": "distributed", "kind": "cg_step", "dataset": "lowrank", "n": 2000, "world_size": w, "steps": 3}
         for w in (1, 2)]


def cases(*, quick=False, sizes=None, device="auto"):
    base = QUICK if quick else CASES
    if sizes:
        base = [{**c, "n": n} for n in sizes for c in base[:2]]
    return [{**c, "device": "cpu"} for c in base]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: dict) -> dict:
    world, port = int(case["world_size"]), _port()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"r{r}.json") for r in range(world)]
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.distributed", str(world), str(r), str(port),
                                   json.dumps(case), outs[r]], cwd=root, stderr=subprocess.PIPE, text=True)
                 for r in range(world)]
        errs = [p.communicate(timeout=3000)[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError("a rank failed: " + " | ".join(e.strip().splitlines()[-1] for e in errs if e.strip()))
        ranks = [json.load(open(o)) for o in outs]
    res = dict(ranks[0])
    res["step_seconds_per_rank"] = [r["step_seconds"] for r in ranks]
    return res


def _rank_main(world, rank, port, case, out):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    from kernels.distributed import Comm, ShardedKernel
    from kernels.family import Kernel
    from kernels.solvers import NystromEigensystem, NystromPreconditioner, solve_cg
    from drfm.datasets import load

    if world > 1:
        from datetime import timedelta

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
    else:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    data = load(case["dataset"], n_train=case["n"], n_test=2000)
    n = len(data.y_train)
    lo, hi = rank * n // world, (rank + 1) * n // world
    X = torch.as_tensor(data.X_train[lo:hi], dtype=torch.float32)
    Y = torch.as_tensor(data.y_train[lo:hi], dtype=torch.float32).unsqueeze(1)
    comm = Comm()
    t0 = time.perf_counter()
    op = ShardedKernel(X, comm, kernel=Kernel("laplace", 10.0))
    pre = NystromPreconditioner(op, reg=1e-3, eigensystem=NystromEigensystem(op, n_centres=1000,
                                                                             generator=torch.Generator().manual_seed(0)),
                                rank=500)
    setup_s, setup_bytes = time.perf_counter() - t0, comm.bytes_communicated
    t0 = time.perf_counter()
    sol = solve_cg(op, Y, reg=1e-3, rtol=1e-12, max_iter=int(case["steps"]), M=pre, callback=lambda *a: False)
    steps = max(sol.n_iter, 1)
    step_s = (time.perf_counter() - t0) / steps
    step_bytes = (comm.bytes_communicated - setup_bytes) / steps
    alpha = op.gather(sol.x)
    from kernels import kernel_matmul

    pred = kernel_matmul(torch.as_tensor(data.X_test, dtype=torch.float32), op.all, alpha, bandwidth=10.0)
    yte = torch.as_tensor(data.y_test, dtype=torch.float64)
    r2 = 1.0 - float(((pred.double().squeeze(1) - yte) ** 2).sum() / ((yte - yte.mean()) ** 2).sum())
    json.dump({"world_size": world, "n": n, "d": X.shape[1], "steps": steps, "step_seconds": step_s,
               "bytes_per_step": step_bytes, "setup_seconds": setup_s, "setup_bytes": setup_bytes, "score": r2,
               "metric": "r2", "rows_per_rank": hi - lo, "threads_per_rank": 1}, open(out, "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    w, r, p = (int(v) for v in sys.argv[1:4])
    _rank_main(w, r, p, json.loads(sys.argv[4]), sys.argv[5])
