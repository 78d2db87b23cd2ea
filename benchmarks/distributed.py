"""Suite `distributed`: whole fits of the one RFM loop on 1 and 2 gloo processes, and the row-sharded operator's CG step.

Kind ``fit`` (the issue-26 benchmark): an RFM fit with default settings except ``solver='nystrom'`` (the m-centre
model: M learned on the 16 000-row exact subset, the final model on all rows sharded by rows) and float32, on the
low-rank task y = x0 x1 (RFMRegressor, test R^2) or a 10-class task (RFMClassifier, test accuracy), d = 100, one
thread per process. Every rank generates its own rows (65 536-row chunks, each from its own seed: the data do not
depend on the world size, and no rank holds the others' rows). Reported per case: fit seconds, peak RSS per rank,
test score (20 000 rows), and for the final m-centre solve: CG iterations, seconds per step, bytes received per
step and seconds in collectives per step (their share of a step).

Kind ``cg_step``: the row-sharded kernel operator at world size 1 and 2 (gloo, one thread per process).

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
CASES += [{"suite": "distributed", "kind": "fit", "dataset": task, "n": 2_000_000, "world_size": w}
          for task in ("lowrank", "classes10") for w in (1, 2)]
#: 10 million rows on two processes of this 24 GB machine: each rank its 5 million rows (2 GB of float32 data) and an
#: 8 GB budget (the default, 60% of the memory available shared by the host's ranks, is measured after each rank
#: generated its rows and leaves too little for the planner's per-rank ledger)
CASES += [{"suite": "distributed", "kind": "fit", "dataset": "lowrank", "n": 10_000_000, "world_size": 2,
           "memory_budget": 8 * 10**9}]
QUICK = [{"suite": "distributed", "kind": "cg_step", "dataset": "lowrank", "n": 2000, "world_size": w, "steps": 3}
         for w in (1, 2)]

#: rows per generated chunk (chunk k comes from seed (SEED, k): the data do not depend on how the rows are split)
CHUNK, SEED, D, N_TEST = 65536, 2026, 100, 20000


def cases(*, quick=False, sizes=None, device="auto"):
    base = QUICK if quick else CASES
    if sizes:
        base = [{**c, "n": n} for n in sizes for c in base]
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
        # each rank's stderr (its progress bars with the case's "verbose") goes to a file: DRFM_BENCH_RANK_LOG + rank
        # when that is set (to watch a long case), else a temporary one
        logs = [os.environ.get("DRFM_BENCH_RANK_LOG", os.path.join(tmp, "log")) + f".r{r}" for r in range(world)]
        procs = []
        for r in range(world):
            with open(logs[r], "w") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.distributed", str(world), str(r),
                                               str(port), json.dumps(case), outs[r]], cwd=root, stderr=log))
        for p in procs:
            p.wait(timeout=4 * 3600)
        errs = [open(log).read() for log in logs]
        if any(p.returncode for p in procs):
            raise RuntimeError("a rank failed: " + " | ".join(e.strip().splitlines()[-1] for e in errs if e.strip()))
        ranks = [json.load(open(o)) for o in outs]
    res = dict(ranks[0])
    res["step_seconds_per_rank"] = [r["step_seconds"] for r in ranks]
    if case.get("kind") == "fit":
        res["peak_rss_bytes_per_rank"] = [r["peak_rss_bytes"] for r in ranks]
        res["peak_rss_bytes"] = max(res["peak_rss_bytes_per_rank"])
    return res


def rows(task: str, lo: int, hi: int, *, test: bool = False):
    """Rows [lo, hi) of the task (float32 X, targets), generated chunk by chunk."""
    import numpy as np

    parts = []
    for k in range(lo // CHUNK, -(-hi // CHUNK)):
        rng = np.random.default_rng([SEED, 1 if test else 0, k])
        parts.append(rng.standard_normal((CHUNK, D), dtype=np.float32))
    X = np.concatenate(parts)[lo - (lo // CHUNK) * CHUNK:][: hi - lo] if parts else np.zeros((0, D), np.float32)
    if task == "lowrank":
        return X, (X[:, 0].astype(np.float64) * X[:, 1])
    W = np.random.default_rng([SEED, 2]).standard_normal((10, 10))  # 10 classes from the first 10 features
    return X, (X[:, :10].astype(np.float64) @ W).argmax(1)


def _write_json(path, record: dict) -> None:
    """One rank's record, written through drfm's atomic writer (a temporary file renamed: the harness never reads a
    half-written file)."""
    from drfm.data.files import atomic_write

    with atomic_write(path, "w", what="rank record") as fh:
        json.dump(record, fh)


def _fit_main(world, rank, case, out):
    import resource

    import torch

    from drfm import RFMClassifier, RFMRegressor

    n, task = int(case["n"]), case["dataset"]
    lo, hi = rank * n // world, (rank + 1) * n // world
    X, y = rows(task, lo, hi)
    cls = RFMRegressor if task == "lowrank" else RFMClassifier
    model = cls(solver="nystrom", dtype="float32", device="cpu", random_state=0, distributed=world > 1,
                verbose=int(case.get("verbose") or 0), memory_budget=case.get("memory_budget"))
    t0 = time.perf_counter()
    model.fit(X, y)
    fit_s = time.perf_counter() - t0
    del X, y
    Xte, yte = rows(task, 0, N_TEST, test=True)
    score = float(model.score(Xte, yte))
    last = model.history_[-1]
    step_s = last["seconds_per_step"]
    comm_s = last.get("comm_seconds_per_step", 0.0)
    solve_keys = ("solver", "n_rows", "solver_iters", "seconds", "val_score", "reg", "reg_seconds", "seconds_per_step",
                  "solver_residual", "solver_stopped_by", "solver_returned_step", "solver_val_errors")
    _write_json(out, {"world_size": world, "n": n, "d": D, "fit_seconds": fit_s, "score": score,
                      "metric": "r2" if task == "lowrank" else "accuracy", "rows_per_rank": hi - lo,
                      "threads_per_rank": 1,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "final_solver": last["solver"], "n_centres": last["n_centres"],
                      "cg_iterations": last["solver_iters"], "step_seconds": step_s,
                      "bytes_per_step": last.get("bytes_per_step", 0), "comm_seconds_per_step": comm_s,
                      "comm_share": comm_s / step_s if step_s else None,
                      "solves": [{k: h.get(k) for k in solve_keys} for h in model.history_],
                      "torch_threads": torch.get_num_threads()})


def _rank_main(world, rank, port, case, out):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    if case.get("kind") == "fit":
        if world > 1:
            from datetime import timedelta

            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                    timeout=timedelta(minutes=30))
        _fit_main(world, rank, case, out)
        if world > 1:
            dist.destroy_process_group()
        return

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
    _write_json(out, {"world_size": world, "n": n, "d": X.shape[1], "steps": steps, "step_seconds": step_s,
                      "bytes_per_step": step_bytes, "setup_seconds": setup_s, "setup_bytes": setup_bytes,
                      "score": r2, "metric": "r2", "rows_per_rank": hi - lo, "threads_per_rank": 1})
    dist.destroy_process_group()


if __name__ == "__main__":
    w, r, p = (int(v) for v in sys.argv[1:4])
    _rank_main(w, r, p, json.loads(sys.argv[4]), sys.argv[5])
