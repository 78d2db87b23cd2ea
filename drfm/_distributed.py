"""The RFM loop across processes: each rank fits on its own rows, the model ends complete on every rank.

Used by the RFM estimators with ``distributed=True`` inside an initialised ``torch.distributed`` process group (e.g.
under ``torchrun``). Every rank calls ``fit`` with its own shard of (X, y); the rows are taken in rank order (rank 0's
first), so the global row order, and with it every result, does not depend on how the rows are split. Per solve:

    Z = X R all-gathered once (n x r), the Nystrom-preconditioned CG of :mod:`kernels.distributed` on the sharded
    operator (each product: an all-gather of the search directions, this rank's row band of K), the AGOP summed over
    every rank's sample rows (one all-reduce), the feature-matrix update on every rank (identical input).

What is agreed with collectives before any heavy work: the feature count and dtype of every shard (a clear
``ValueError`` on every rank otherwise), the global n, the classes (a classifier), the random draws (one generator
seeded from ``random_state`` on every rank; indices are global). At the end the coefficients and the kept rows are
all-gathered: the fitted estimator is the same on every rank and saves / loads like a single-process one.

Scope: the iterative solver ('cg'; every rank holds the n x r points and its n_p x n band is recomputed per product),
all rows in every solve (no ``iter_sample_size`` subset), early stopping only with explicit validation data
(``fit(X, y, X_val, y_val)``, each rank passing its shard of it; no held-out split and no refit).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from kernels import (NystromEigensystem, NystromPreconditioner, Points, compact_factor, feature_matrix_update,
                     kernel_matmul, solve_cg)
from kernels.distributed import Comm, ShardedKernel, distributed_agop

from ._backend import finite_tensor
from ._engine import RFMState, _kernel_bandwidth, kernel_of

__all__ = ["agree_classes", "agreed_generator", "one_hot_agreed", "run_rfm_distributed", "standardization_distributed",
           "validated_on_every_rank"]

logger = logging.getLogger("drfm.rfm")

#: Nystrom centres and preconditioner rank of the distributed CG (the single-process defaults at this scale)
DIST_CENTRES, DIST_RANK = 1000, 500


def validated_on_every_rank(comm: Comm, owner: str, validate, dtype: torch.dtype):
    """Run ``validate()`` (this rank's input checks, returning (X, y, ...)) on every rank and agree on the outcome
    before any heavy work: when any rank's checks raise, every rank raises the same ValueError naming that rank;
    every rank's feature count and working dtype must agree."""
    try:
        out, status = validate(), None
    except (ValueError, TypeError) as exc:
        out, status = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    mine = (status, None if out is None else int(out[0].shape[1]), str(dtype))
    everyone = [None] * comm.world_size
    comm.dist.all_gather_object(everyone, mine, group=comm.group)
    failed = [(r, st) for r, (st, _, _) in enumerate(everyone) if st is not None]
    if failed:
        r, st = failed[0]
        raise ValueError(f"{owner} (distributed): rank {r} of {comm.world_size} rejected its data: {st}")
    if len({(d, t) for _, d, t in everyone}) > 1:
        detail = ", ".join(f"rank {r}: {d} features, {t.replace('torch.', '')}" for r, (_, d, t) in enumerate(everyone))
        raise ValueError(f"{owner} (distributed): the ranks' data disagree ({detail}); every rank must pass the same "
                         "features and dtype")
    return out


def agree_classes(comm: Comm, y) -> np.ndarray:
    """The sorted union of every rank's class labels."""
    everyone = [None] * comm.world_size
    comm.dist.all_gather_object(everyone, np.unique(y).tolist(), group=comm.group)
    return np.unique(np.concatenate([np.asarray(v, dtype=object) for v in everyone if len(v)]).tolist())


def one_hot_agreed(comm: Comm, y, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The classes of every rank (:func:`agree_classes`; at least two) and this rank's (n_p, K) one-hot targets."""
    classes = agree_classes(comm, y)
    if len(classes) < 2:
        raise ValueError(f"{owner} needs samples of at least 2 classes over all ranks.")
    return classes, (np.asarray(y)[:, None] == classes[None, :]).astype(np.float64)


def _gather_np(comm: Comm, a: np.ndarray) -> np.ndarray:
    """All ranks' rows of a numpy array (any dtype; labels included), in rank order."""
    everyone = [None] * comm.world_size
    comm.dist.all_gather_object(everyone, a, group=comm.group)
    return np.concatenate(everyone, 0)


def agreed_generator(comm: Comm, random_state) -> torch.Generator:
    """The generator of a distributed fit: rank 0's seed (from ``random_state``, which may be None) on every rank,
    so that every random draw (validation rows, AGOP samples, Nystrom centres, feature-map weights) is the same
    everywhere."""
    from ._backend import make_generator

    gen = make_generator(random_state)  # with a fixed random_state: the single-process stream itself
    gen.set_state(comm.broadcast(gen.get_state()))
    return gen


def standardization_distributed(comm: Comm, X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`drfm._backend.standardization` over every rank's rows: the global per-feature mean and standard
    deviation (constant features keep scale 1), from two all-reduces."""
    d = X.shape[1]
    if not enabled:
        return np.zeros(d), np.ones(d)
    X = np.asarray(X, dtype=np.float64)
    stats = comm.allreduce(torch.as_tensor(np.r_[X.sum(0), len(X)], dtype=torch.float64)).numpy()
    mean = stats[:d] / stats[d]
    var = comm.allreduce(torch.as_tensor(((X - mean) ** 2).sum(0), dtype=torch.float64)).numpy() / stats[d]
    scale = np.sqrt(var)
    return mean, np.where(scale > 0, scale, 1.0)


def run_rfm_distributed(X, y, Y, *, params, score, device, dtype, budget, generator, owner, comm: Comm,
                        X_val=None, y_val=None, final_solve: bool = True) -> RFMState:
    """The RFM loop on this rank's rows (X, y, Y encoded targets) -- see the module text. Returns the state of the
    complete model (every row's coefficients and the kept rows, identical on every rank). ``final_solve=False`` (a
    Deep RFM layer): ``iters`` solves, each followed by its AGOP step; ``last_sqrt_m`` is the new data map."""
    p, gen = params, generator
    if p.solver not in ("auto", "cg"):
        raise ValueError(f"{owner}: distributed=True runs the iterative solver (solver='cg' or 'auto'); got "
                         f"solver={p.solver!r}")
    if p.iter_sample_size not in (None, "auto"):
        raise ValueError(f"{owner}: distributed=True solves on all rows (iter_sample_size=None or 'auto'); got "
                         f"{p.iter_sample_size!r}")
    if p.centering or p.diag:
        raise ValueError(f"{owner}: centering=True and diag=True are not available with distributed=True yet")
    stopping = p.iters > 0 and X_val is not None and p.early_stopping is not False
    Xt = finite_tensor(X, dtype, device)
    Yt = finite_tensor(Y, dtype, device, "y")
    sizes = comm.sizes(Xt.shape[0], device)
    n, off = sum(sizes), sum(sizes[: comm.rank])
    if n == 0:
        raise ValueError(f"{owner}: no rank holds any training rows")
    y_all = _gather_np(comm, np.asarray(y))  # the labels / targets of every row, for the training score
    Xv = None if X_val is None else finite_tensor(X_val, dtype, device)
    yv_all = None if y_val is None else _gather_np(comm, np.asarray(y_val))
    sqrt_m = factor = None
    history, best = [], None
    warned: set = set()
    n_solves = p.iters + 1 if final_solve else max(p.iters, 1)
    for t in range(n_solves):
        t0 = time.perf_counter()
        local = Points.of(Xt, factor)
        op = ShardedKernel(local, comm, kernel=kernel_of(_with(p, 1.0)), memory_budget=budget)
        L = _kernel_bandwidth(p, op.all, owner, warned)  # from the gathered points: the same on every rank
        kern = kernel_of(_with(p, L))
        op.set_kernel(kern)
        eig = NystromEigensystem(op, n_centres=min(n, DIST_CENTRES), generator=gen)
        pre = NystromPreconditioner(op, reg=float(p.reg), eigensystem=eig, rank=DIST_RANK, memory_budget=budget)
        sol = solve_cg(op, Yt, reg=float(p.reg), rtol=p.solver_tol, max_iter=p.solver_max_iter, M=pre)
        alpha_all = op.gather(sol.x)
        train_out = op.gather(op.matmul(sol.x)).cpu().double().numpy()
        rec = {"iter": t, "n_rows": n, "bandwidth": L, "solver": "cg (distributed)", "solver_iters": sol.n_iter,
               "solver_converged": sol.converged, "solver_residual": sol.final_residual,
               "train_score": score(train_out, y_all), "val_score": None, "world_size": comm.world_size,
               "agop_rows": None}
        if Xv is not None:
            val_out = kernel_matmul(Xv, op.all, alpha_all, kernel=kern, sqrt_m=factor, memory_budget=budget)
            rec["val_score"] = score(_gather_np(comm, val_out.cpu().double().numpy()), yv_all)
        if best is None or rec["val_score"] is None or rec["val_score"] > best[0]:
            best = (rec["val_score"], t, sqrt_m, factor, alpha_all, L)
        if t < p.iters:  # (without a final solve every solve is followed by an AGOP step)
            # the AGOP over a global random sample of rows (indices drawn identically on every rank)
            n_agop = min(p.agop_sample_size, n)
            pick = torch.randperm(n, generator=gen)[:n_agop] if n_agop < n else torch.arange(n)
            mine = pick[(pick >= off) & (pick < off + Xt.shape[0])] - off
            rec["agop_rows"] = n_agop
            agop = distributed_agop(Xt[mine.to(Xt.device)], op.all, alpha_all, comm, kernel=kern, sqrt_m=factor,
                                    memory_budget=budget)
            r = feature_matrix_update(agop, power=p.agop_power, normalize=p.normalize_m)
            sqrt_m = r.to(dtype)
            factor = compact_factor(sqrt_m) if kern.radial else sqrt_m
        rec["seconds"] = time.perf_counter() - t0
        history.append(rec)
        logger.info("RFM iteration %d (distributed, rank %d of %d): %s", t, comm.rank, comm.world_size, rec)
        if stopping and t - best[1] >= p.n_iter_no_change:
            rec["early_stop"] = f"no better validation score in {p.n_iter_no_change} solves"
            break
    _, best_t, best_r, best_factor, best_alpha, best_L = best
    # the kept rows, untransformed, from every rank (the model predicts like a single-process one)
    X_fit = comm.all_gather_rows(Xt)
    return RFMState(sqrt_m=None if best_r is None else best_r.double().cpu().numpy(), factor=best_factor,
                    bandwidth=best_L, alpha=best_alpha, X_fit=X_fit, best_iter=best_t, history=history,
                    solver="cg", last_sqrt_m=None if sqrt_m is None else sqrt_m.double().cpu().numpy(),
                    iter_rows=None)


def _with(p, bandwidth):
    from dataclasses import replace

    return replace(p, bandwidth=bandwidth)

