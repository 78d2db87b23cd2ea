"""One rank of the one-engine parity and fault tests (started by tests/drfm/test_one_engine.py, never collected).

python -m tests.drfm._engine_worker WORLD RANK PORT MODE OUT
"""
import os
import sys
import time
from datetime import timedelta

import numpy as np
import torch


def shard_sizes(n, world):
    """Uneven shards: rank 0 holds one row; with three ranks rank 1 holds none; the last rank the rest."""
    return [1, n - 1] if world == 2 else [1, 0, n - 1] if world == 3 else [n]


def lowrank(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X[:, 0] * X[:, 1] + 0.1 * np.sin(X[:, 2])


def frame(n, seed=1, scale_a=1.0):
    """A table with a categorical column whose first row holds a category no other row has (so the shards see
    different categories)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[0] = "violet"
    X = pd.DataFrame({"a": rng.standard_normal(n), "b": rng.standard_normal(n), "colour": colour})
    y = X["a"].to_numpy() * (colour == "red") + 0.5 * X["b"].to_numpy() + 1.5 * (colour == "violet")
    X["a"] *= scale_a  # (another unit: the spread of the columns differs)
    return X, y + 0.05 * rng.standard_normal(n)


def classes(n, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0.4).astype(int) + (X[:, 1] > -0.3).astype(int)]
    y[0] = "d"  # a class only the one-row shard holds
    return X, y


def cases():
    """(name, estimator factory, data): fitted on every rank's shard and in one process on all rows."""
    from drfm import RFMClassifier, RFMRegressor

    base = dict(dtype="float64", random_state=0, device="cpu")
    tight = dict(solver_tol=1e-9, solver_max_iter=3000)
    small = lowrank(600, seed=3)
    return [
        # the defaults: early stopping on (n >= 2000) with its held-out rows and refit, the direct solver
        ("defaults", lambda: RFMRegressor(**base), lowrank(3001)),
        ("cg_es", lambda: RFMRegressor(solver="cg", iters=3, early_stopping=True, **tight, **base), small),
        ("eigenpro_es", lambda: RFMRegressor(solver="eigenpro", iters=2, early_stopping=True, solver_max_iter=3,
                                             **base), small),
        ("eigenpro", lambda: RFMRegressor(solver="eigenpro", iters=2, early_stopping=False, solver_max_iter=3,
                                          **base), small),
        # the m-centre model: M learned on the exact subset ('auto'), the final model sharded by rows
        ("nystrom_es", lambda: RFMRegressor(solver="nystrom", n_centres=150, iters=2, early_stopping=True,
                                            solver_tol=1e-9, **base), small),
        # a fixed ridge: the final m-centre model by CG, which early stopping's validation rows also stop
        ("nystrom_es_cg", lambda: RFMRegressor(solver="nystrom", n_centres=150, iters=2, early_stopping=True,
                                               reg=1e-4, solver_tol=1e-9, **base), small),
        # ... and every solve sharded (M learned from m-centre models on all rows)
        ("nystrom_sharded", lambda: RFMRegressor(solver="nystrom", n_centres=150, iters=2, early_stopping=False,
                                                 iter_sample_size=None, solver_tol=1e-9, **base), small),
        ("auto_bw_diag", lambda: RFMRegressor(bandwidth="auto", diag=True, iters=2, early_stopping=True,
                                              centering=True, **base), small),
        ("categorical", lambda: RFMRegressor(bandwidth="auto", iters=2, early_stopping=True, **base), frame(500)),
        # standardised numeric columns and centred targets from every rank's rows (the one-hot block left alone)
        ("standardize", lambda: RFMRegressor(standardize=True, iters=2, early_stopping=True, **base), frame(500)),
        # standardize='auto' (the default): the columns' spread over every rank's rows decides (here: standardise)
        ("standardize_auto", lambda: RFMRegressor(iters=2, early_stopping=True, **base), frame(500, scale_a=100.0)),
        ("classifier", lambda: RFMClassifier(bandwidth=5.0, iters=2, early_stopping=True, **base), classes(500)),
    ]


def held_out_rows(X):
    return X.iloc[-40:] if hasattr(X, "iloc") else np.random.default_rng(7).standard_normal((40, X.shape[1]))


def outputs(model, Xte):
    return model.decision_function(Xte) if hasattr(model, "decision_function") else model.predict(Xte)


def parity(world, rank, out):
    res = {}
    for name, make, (X, y) in cases():
        sizes = shard_sizes(len(X), world)
        off = sum(sizes[:rank])
        rows = slice(off, off + sizes[rank])
        Xr = X.iloc[rows] if hasattr(X, "iloc") else X[rows]
        model = make().set_params(distributed=True).fit(Xr, y[rows])
        res[name] = {"out": outputs(model, held_out_rows(X)), "M": model.M_, "best_iter": model.best_iter_,
                     "history": model.history_, "n_fit": model.X_fit_.shape[0],
                     "categorical": getattr(model, "categorical_", None),
                     "standardized": getattr(model, "standardized_", None),
                     "classes": getattr(model, "classes_", None)}
    torch.save(res, out)


def fault(world, rank, mode, out):
    from drfm import RFMClassifier, RFMRegressor

    X, y = lowrank(400, seed=5)
    rows = slice(rank * 200, rank * 200 + 200)
    kw = dict(dtype="float64", random_state=0, iters=1, distributed=True)
    if mode == "labels":  # the same labels as ints on rank 0 and as strings on rank 1
        labels = (y[rows] > 0).astype(int)
        RFMClassifier(**kw).fit(X[rows], labels if rank == 0 else labels.astype(str))
    elif mode == "val_one_rank":
        RFMRegressor(**kw).fit(X[rows], y[rows], *((X[:20], y[:20]) if rank == 1 else (None, None)))
    elif mode == "underflow":  # column 2 below float32's normal range on every rank: the same error everywhere
        Xr = X[rows].copy()
        Xr[:, 2] *= 1e-50
        RFMRegressor(**{**kw, "dtype": "float32"}).fit(Xr, y[rows])
    elif mode == "params":
        RFMRegressor(**{**kw, "iters": 1 + rank}).fit(X[rows], y[rows])
    elif mode == "threads":  # the default n_threads resolved to another count on each rank (1 and 2)
        os.environ["DRFM_THREADS"] = str(1 + rank)
        model = RFMRegressor(**{**kw, "dtype": "float32", "solver": "cg"}).fit(X[rows], y[rows])
        torch.save({"ok": True, "n_threads": model.n_threads_}, out)
        return
    elif mode in ("kill", "pause"):
        X, y = lowrank(6000, seed=6)
        rows = slice(rank * 3000, rank * 3000 + 3000)
        open(out.replace(".pt", ".started"), "w").close()
        RFMRegressor(**{**kw, "iters": 50, "early_stopping": False, "solver": "cg", "solver_tol": 1e-12,
                        "solver_max_iter": 5000, "distributed_timeout": 5.0}).fit(X[rows], y[rows])
        time.sleep(60)  # (never reached when the other rank is gone)
    torch.save({"ok": True}, out)


def main(world, rank, port, mode, out):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    if mode == "parity":
        parity(world, rank, out)
    else:
        fault(world, rank, mode, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    w, r, p = (int(v) for v in sys.argv[1:4])
    main(w, r, p, sys.argv[4], sys.argv[5])
