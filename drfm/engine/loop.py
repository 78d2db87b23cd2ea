"""The RFM loop, written once: used by :class:`~drfm.rfm.RFMRegressor` / :class:`~drfm.rfm.RFMClassifier` and by
every Deep RFM layer.

::

    M <- I
    repeat iters times:
        alpha <- (K_M + reg I)^{-1} Y                  (on a random subset of rows with iter_sample_size)
        R <- feature_matrix_update(AGOP of K_M(., X) alpha)   ;  M <- R R
    alpha <- (K_M + reg I)^{-1} Y   with the final M   (on all rows; skipped for a Deep RFM layer)

Each phase (the subset solves, the solve on all rows) gets a :class:`~kernels.solvers.SolvePlan`: the solver, the
reason, and what it holds in memory, including the fit's own allocations (data, the d x d feature matrices and their
eigendecomposition, the AGOP's centres and accumulators), all checked against the budget before any heavy work (a
clear ``ValueError`` names the largest items when nothing fits). Kernel tiles and AGOP blocks stream through what is
left.

One process or many
-------------------
The loop runs against a :class:`~drfm.engine.runtime.Runtime` whose ``comm`` is the rank group. With one process
(:class:`~kernels.distributed.LocalComm`) every collective is an identity. With N ranks each holds a contiguous range
of the rows (rank order = row order) and every decision is the one a single process would make on all rows:

* random draws (validation rows, subset, Nystrom and m-centre centres, AGOP samples, score rows) are global indices
  from the same generator stream; the rows they pick are fetched from the ranks that hold them;
* the plan (solver, store, centres) is made for the global row counts and the agreed budget;
* a phase whose rows every rank holds (the ``iter_sample_size`` subset: at most tens of thousands of rows, gathered
  once) runs the single-process solvers on every rank; on the sharded rows, CG runs on the row-sharded operator
  (:class:`~kernels.distributed.ShardedKernel`) and the m-centre model on each rank's K_nm rows (one m x c all-reduce
  per CG step); direct and EigenPro gather the rows and solve them on every rank (their plan already holds the
  n x n matrix per process);
* the AGOP sums each rank's share of the global sample (:func:`~kernels.distributed.distributed_agop`); validation
  outputs are gathered and scored on every rank; the feature matrix and the coefficients are rank 0's on every rank.

The fitted kernel machine (its points or centres, coefficients, kernel and metric factor) is complete on every rank.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from kernels import (BlockedKernel, NystromEigensystem, NystromPreconditioner, Points, StoredKernel, compact_factor,
                     feature_matrix_update, kernel_matmul, plan_solve, solve_centres, solve_cg, solve_direct,
                     solve_eigenpro)
from kernels.solvers import (RIDGE_GRID, RidgePath, SolveResult, default_centre_count, loo_path, solve_centres_path,
                             walk_path)
from kernels.solvers.centres import path_workspace_bytes
from kernels.solvers.ridge import loo_workspace_bytes
from kernels.distributed import ShardedKernel, distributed_agop
from kernels.agop import feature_matrix_workspace_bytes
from kernels.agop import workspace_bytes as agop_workspace_bytes
from kernels.family import Kernel
from kernels.phases import phase as clock_phase
from kernels.solvers.plan import Solver

from .._backend import finite_tensor
from .._categorical import tie_groups
from .machine import KernelMachine
from .runtime import Runtime, labels_of_all_ranks

__all__ = ["KernelScaleWarning", "RFMParams", "RFMState", "plan_layer", "run_rfm"]

logger = logging.getLogger("drfm.rfm")

#: iterative solves estimate the training score on this many random rows (an exact score costs a pass over K)
SCORE_ROWS = 2000

#: early_stopping='auto' turns early stopping on from this many training rows (fewer leave too small a validation split)
EARLY_STOPPING_MIN_N = 2000
#: the validation split early stopping holds out when validation_fraction is None: 10%, at most 10000 rows
DEFAULT_VALIDATION_FRACTION, DEFAULT_VALIDATION_MAX_ROWS = 0.1, 10000
#: more RFM iterations than this get a warning at the start of the fit (M usually settles within SETTLES_WITHIN)
MANY_ITERS, SETTLES_WITHIN = 1000, 10

#: the chosen iterate is refit on all rows only when the held-out rows are at least this share of them: beyond
#: (n > 200 000 with the default split) one more solve on all n rows would cost as much as the fit for <= 5% more rows
REFIT_MIN_SHARE = 0.05

#: iter_sample_size='auto': the subset on which M is learned when the solve on all rows is the m-centre model
AUTO_ITER_SAMPLE_SIZE = 16000

#: reg='auto' (module text of :mod:`kernels.solvers.ridge`): the ridge of every solve is chosen on RIDGE_GRID by
#: - the m-centre model: its path (one pass forming K_nm^T K_nm, the generalised eigenproblem) with at most
#:   CENTRE_PATH_MAX_M centres, scored on the validation rows when the fit has them, else by GCV; with more centres
#:   the previous solve's choice (a walk would run a whole m-centre CG per value);
#: - with validation rows: one solve per value (Cholesky, or CG / EigenPro warm-started from the lowest error's
#:   solution) walked from the last choice (the first walk: from WALK_START_ROWS' choice) towards lower validation
#:   error beyond round-off, the smallest ridge equal to the lowest error chosen (`walk_path`; the leave-one-out path
#:   costs 10 / 22 / 28 / 27 / 33 Choleskys at n = 500 / 1000 / 2000 /
#:   3000 / 4000, `bench solvers --only ridge_path`);
#: - without: the exact leave-one-out path (one eigendecomposition) for a direct solve of at most LOO_MAX_ROWS rows,
#:   else that path on LOO_SUBSET_ROWS random rows of the solve, then one solve at its choice.
#: REG_START is the ridge the memory plan assumes (the fixed default before 'auto').
#: Each path holds at most RIDGE_BUDGET_SHARE of the memory budget (fewer rows or centres under a small one).
LOO_MAX_ROWS, CENTRE_PATH_MAX_M, REG_START, RIDGE_BUDGET_SHARE = 3000, 4000, 1e-3, 0.25
#: the subset's rows when the leave-one-out path stands in for a larger solve: its float64 eigendecomposition at 3000
#: rows took 1.8 s per RFM iteration, 45% of a 10 240-row CG fit (24.3 s, 2-core CPU); at 2000 rows 0.55 s, the fit
#: 16.3 s with the same choices and test R^2 (issue #29's low-rank fit)
LOO_SUBSET_ROWS = 2000
#: the first walk of a fit starts from the leave-one-out choice on this many random rows of its solve (one small
#: eigendecomposition, ~0.1 s) instead of REG_START: on MNIST the walk went 1e-3 -> 1e-6, eight solves
WALK_START_ROWS = 1000

#: rows (evenly spaced, no random draw) whose pairwise distances measure the kernel's scale at each solve
SCALE_ROWS = 1000
#: the median distance over the bandwidth beyond which the kernel matrix is nearly the identity (k < 5e-5 at the
#: median pair), and below which it is nearly constant (k > 0.999)
IDENTITY_RATIO, CONSTANT_RATIO = 10.0, 1e-3


class KernelScaleWarning(UserWarning):
    """The kernel matrix is nearly the identity or nearly constant: the bandwidth does not suit the data's scale."""


def scale_rows(n: int, device=None) -> torch.Tensor:
    """The rows (up to SCALE_ROWS, evenly spaced, no random draw) whose distances measure the kernel's scale."""
    return torch.linspace(0, n - 1, min(n, SCALE_ROWS), device=device).round().long().unique()


def median_of(z: torch.Tensor, kernel: Kernel | None = None) -> float:
    """Median pairwise distance among the rows ``z`` (in the current metric; L1 of the transformed rows for the
    product Laplace kernel); 0 for fewer than two."""
    if z.shape[0] < 2:
        return 0.0
    z = z.double()
    d = (kernel or Kernel()).distances(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], 1, device=z.device)
    return float(d[iu[0], iu[1]].median())


#: bandwidth='auto' is this multiple of the median pairwise distance in the current metric (measured, 2-core CPU, RFM
#: 5 iterations, early stopping on: MNIST 8000 digits test accuracy 0.9591 / 0.9644 / 0.9653 / 0.9648 and low-rank
#: n = 4000 test R^2 0.957 / 0.968 / 0.972 / 0.973 for multiples 0.5 / 1 / 2 / 4)
AUTO_BANDWIDTH_FACTOR = 2.0
#: ... except for kernels measured to want another multiple: product_laplace (low-rank n = 4000, d = 100, 5
#: iterations, diag=True: test R^2 0.961 at 1 x the median L1 distance against 0.206 at 2 x; full M: 0.650 / -0.006)
AUTO_BANDWIDTH_FACTORS = {"product_laplace": 1.0}


def kernel_of(p) -> Kernel:
    """The kernel of a solve whose parameters ``p`` carry a numeric bandwidth."""
    return Kernel(p.kernel, p.bandwidth, p.exponent)


def _kernel_bandwidth(p, sample_z, owner, warned: set) -> float:
    """The bandwidth of this solve from the rows ``sample_z`` (:func:`scale_rows` of the solve's transformed rows;
    ``'median'``: the kernel's distance unit at their median pairwise distance now,
    :meth:`~kernels.family.Kernel.with_length`; ``'auto'``: at AUTO_BANDWIDTH_FACTOR times it), and a
    KernelScaleWarning (once per fit and kind) when the kernel matrix is nearly the identity or nearly constant."""
    shape = Kernel(p.kernel, 1.0, p.exponent)
    med = median_of(sample_z, shape)
    if p.bandwidth in ("median", "auto"):
        if med > 0:
            factor = AUTO_BANDWIDTH_FACTORS.get(p.kernel, AUTO_BANDWIDTH_FACTOR) if p.bandwidth == "auto" else 1.0
            return shape.with_length(med * factor).bandwidth
        if "coincide" not in warned:
            warned.add("coincide")
            warnings.warn(f"{owner}: bandwidth={p.bandwidth!r} found the sampled training points all coinciding "
                          "(median distance 0); bandwidth 1.0 is used instead.", KernelScaleWarning, stacklevel=4)
        return 1.0
    L = float(p.bandwidth)
    # the kernel's value at the median pair, against the Laplace kernel's at those ratios of distance to bandwidth
    k_med = Kernel(p.kernel, L, p.exponent).value(med)
    kind = ("identity" if k_med < np.exp(-IDENTITY_RATIO) else
            "constant" if med > 0 and k_med > np.exp(-CONSTANT_RATIO) else None)
    if kind and kind not in warned:
        warned.add(kind)
        what = ("nearly the identity: every point is far from every other, so the fit interpolates and predicts "
                "about 0 away from the training points" if kind == "identity" else
                "nearly constant: every point looks alike, so predictions barely depend on the input")
        warnings.warn(
            f"{owner}: with bandwidth={L:g} and a median distance of {med:.3g} between training points (in the "
            f"current metric) the kernel matrix is {what}. Scale the features (standardize=True, or a StandardScaler) "
            "or set the bandwidth relative to the data: bandwidth='median'.", KernelScaleWarning, stacklevel=4)
    return L


@dataclass(frozen=True)
class RFMParams:
    """The hyperparameters of the RFM loop (an RFM estimator's parameters, validated)."""

    bandwidth: float | str
    kernel: str
    exponent: float
    reg: float | str
    iters: int
    diag: bool
    centering: bool
    agop_power: float
    normalize_m: bool
    agop_sample_size: int
    iter_sample_size: int | str | None
    n_centres: int | None
    validation_fraction: float | None
    early_stopping: bool | str
    n_iter_no_change: int
    solver: str
    solver_tol: float
    solver_max_iter: int | None
    verbose: bool | int

    @classmethod
    def of(cls, estimator) -> "RFMParams":
        params = estimator.get_params(deep=False)
        return cls(**{name: params[name] for name in cls.__dataclass_fields__})


@dataclass
class RFMState:
    """What a run of the loop leaves: the kept iterate and the record of every solve.

    ``sqrt_m`` (float64 numpy; None for M = I) is the data map R of the kept iterate, ``factor`` its compact factor
    in the working dtype (None for M = I), ``bandwidth`` the kernel bandwidth its solve used, ``alpha`` / ``rows``
    the kept solve's coefficients and the training rows
    it used (None: all), ``last_sqrt_m`` the newest R (what a Deep RFM layer passes on), ``iter_rows`` the subset of
    the feature-learning solves (indices into X; None without a subset).
    """

    sqrt_m: np.ndarray | None
    factor: torch.Tensor | None
    bandwidth: float
    alpha: torch.Tensor
    X_fit: torch.Tensor
    best_iter: int
    history: list[dict]
    solver: str
    last_sqrt_m: np.ndarray | None
    iter_rows: np.ndarray | None
    val_outputs: np.ndarray | None = None
    val_labels: object = None
    reg: float | None = None


def _validation_split(n, fraction, gen):
    if fraction is None:
        return np.arange(n), None
    n_val = int(round(fraction * n))
    if n_val < 1 or n - n_val < 1:
        raise ValueError(
            f"validation_fraction={fraction} leaves {n_val} validation and {n - n_val} training samples out of "
            f"n_samples={n}; both must be at least 1."
        )
    perm = torch.randperm(n, generator=gen).numpy()
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _n_solves(iters: int, has_subset: bool, final_solve: bool, all_cold: bool) -> int:
    """How many solves :func:`_schedule` yields (``all_cold``: the solve on all rows takes no warm start)."""
    if not final_solve:
        return max(iters, 1)
    return iters + 1 + (1 if has_subset and not all_cold else 0)


def _schedule(iters: int, has_subset: bool, final_solve: bool, all_cold: bool):
    """The solves, lazily: (phase 'sub' or 'all', whether an AGOP step follows). ``iters`` costs nothing up front."""
    for _ in range(iters):
        yield ("sub" if has_subset else "all"), True
    if final_solve:
        if has_subset and not all_cold:
            # one more subset solve with the final M: its coefficients start the iterative solve on all rows
            yield "sub", False
        yield "all", False
    elif iters == 0:
        yield "all", False


def same_ridge_per_row(reg: float, rows_chosen_on: int, n: int) -> float:
    """A ridge chosen on ``rows_chosen_on`` rows, for a solve on ``n``: the same ridge per row (the exact and the
    m-centre systems both weigh ``reg ||f||^2`` against a sum of squares over their rows: lambda = reg / rows)."""
    return reg * n / rows_chosen_on


def _plan_reg(p) -> float:
    """The ridge a solve is planned with: ``reg``, or REG_START for reg='auto'."""
    return REG_START if p.reg == "auto" else float(p.reg)


def ridge_limits(budget: int, itemsize: int) -> tuple[int, int]:
    """(the rows of a leave-one-out path, the centres of an m-centre path) reg='auto' uses at most: LOO_MAX_ROWS and
    CENTRE_PATH_MAX_M, fewer where the path would hold more than RIDGE_BUDGET_SHARE of the budget."""
    share = RIDGE_BUDGET_SHARE * budget
    k = int(math.sqrt(share / (loo_workspace_bytes(1) + itemsize)))
    m = int(math.sqrt(share / path_workspace_bytes(1)))
    return max(1, min(LOO_MAX_ROWS, k)), min(CENTRE_PATH_MAX_M, m)


def ridge_path_bytes(n_rows: int, n_centres: int | None, itemsize: int, budget: int, has_val: bool) -> int:
    """What reg='auto' holds beside a solve of ``n_rows`` rows at most: without validation rows the leave-one-out
    path (on the solve's rows or a subset of them, with their kernel matrix); the m-centre path's m x m matrices
    when it applies (the larger of the two). A validation walk holds nothing beyond its solves and the
    leave-one-out path on WALK_START_ROWS rows that chooses where its first walk starts."""
    loo_rows, centre_max = ridge_limits(budget, itemsize)
    k = min(n_rows, loo_rows)
    m = min(n_rows, n_centres or default_centre_count(n_rows))
    if has_val:  # the walk's start: the leave-one-out path on a few rows
        k = min(k, WALK_START_ROWS)
    return max(loo_workspace_bytes(k) + k * k * itemsize, path_workspace_bytes(m) if m <= centre_max else 0)


def _fit_items(*, n_train, n_val, n_sub, n_agop, n_rows, d, c, itemsize, diag, ridge_path=0) -> dict[str, int]:
    """The fit's own allocations beside a solve of ``n_rows`` rows: its data (and the subset's copy), the AGOP's
    sample rows, transformed centres and accumulators, the d x d feature matrices with their update, and
    ``ridge_path`` bytes for reg='auto'."""
    items = {"training data": (n_train + n_val) * d * itemsize + n_train * c * itemsize}
    if n_sub:
        items["subset rows"] = n_sub * (d + c) * itemsize
    if n_agop < n_train:
        items["AGOP sample rows"] = n_agop * d * itemsize
    # the centres are passed to the AGOP already transformed, except with a diagonal factor (two copies)
    items["AGOP centres and accumulators"] = agop_workspace_bytes(n_rows, d, itemsize=itemsize,
                                                                 copies=2 if diag else 0)
    items["feature-matrix update (eigendecomposition)"] = feature_matrix_workspace_bytes(d, diag)
    items["feature matrices (R, its factor, M_)"] = (d if diag else d * d) * (2 * itemsize + 2 * 8)
    if ridge_path:
        items["ridge path (reg='auto')"] = ridge_path
    return items


def _solve_direct(pts, Y_rows, y_rows, K, p, score_fn):
    """Cholesky in the n x n buffer ``K``; the training score is exact (``K alpha = Y - reg alpha``)."""
    Z, z_sq = pts.z, pts.z_sq

    def build(out):
        kernel_of(p).matrix(Z, Z, x_sq=z_sq, z_sq=z_sq, out=out)

    build(K)
    sol = solve_direct(K, Y_rows, reg=float(p.reg), overwrite_k=True, rebuild=build)
    # K alpha = Y - reg_used * alpha: training outputs come for free
    train_out = (Y_rows - sol.reg_used * sol.x).cpu().double().numpy()
    return sol, score_fn(train_out, y_rows)


def _solve_iterative(plan, op, Y_rows, p, gen, work_budget, x0, cap):
    """CG or EigenPro on a kernel operator (stored, blocked, or row-sharded: then ``Y_rows`` and ``x0`` are this
    rank's rows), warm-started from ``x0``."""
    inner, progress = _inner_progress(p.verbose, plan.solver, cap)
    eig = NystromEigensystem(op, n_centres=plan.n_centres, generator=gen)
    if plan.solver is Solver.CG:
        pre = NystromPreconditioner(op, reg=float(p.reg), eigensystem=eig, rank=plan.rank, memory_budget=work_budget)
        sol = solve_cg(op, Y_rows, reg=float(p.reg), x0=x0, rtol=p.solver_tol, max_iter=cap, M=pre,
                       callback=progress)
        del pre
    else:
        sol = solve_eigenpro(op, Y_rows, reg=float(p.reg), x0=x0, rtol=p.solver_tol, max_iter=cap or 10, M=eig,
                             callback=progress, generator=gen, memory_budget=work_budget)
    if inner is not None:
        inner.close()
    del eig  # release the Nystrom system before the AGOP and the next iteration allocate
    return sol


def _score_rows(n_rows, gen, device):
    """The fixed random rows on which an iterative solve's training score is estimated (an exact score costs a
    pass over K)."""
    return torch.randperm(n_rows, generator=gen)[: min(n_rows, SCORE_ROWS)].sort().values.to(device)


def _inner_progress(verbose, solver, cap):
    """A progress bar over the iterations of one iterative solve (``verbose > 1``), fed by the solver's callback."""
    if not (verbose and verbose > 1):
        return None, None
    bar = tqdm(total=cap, desc=solver, unit="it", leave=False)

    def callback(k, x, rel_residual):
        bar.update(1)
        bar.set_postfix(rel_res=f"{rel_residual:.2e}")
        return False

    return bar, callback


def _stop_at(steps: int, callback):
    """A CG callback that ends the solve after ``steps`` steps (and calls ``callback`` before)."""
    def stop(k, x, rel_residual):
        return bool(callback is not None and callback(k, x, rel_residual)) or k >= steps

    return stop


def _plan_phases(sizes, *, n_train, n_val, n_agop, d, c, itemsize, p, dtype, device, budget, owner, n_local=None,
                 has_val=False):
    """A SolvePlan per phase ('all' rows, and 'sub' with a subset), each with the fit's own items reserved.

    ``sizes`` are the phases' global row counts (the solver is the one a single process would choose); ``n_train``
    and ``n_val`` the rows this rank holds at most (its data); ``n_local`` (several ranks) the most training rows a
    rank holds: the m-centre model on all rows is planned for them.

    ``has_val``: the fit has validation rows (reg='auto' then walks instead of holding a leave-one-out path).

    With solver='nystrom' and a subset, the subset's solves (which learn M) are planned as 'auto': the subset exists to
    be solved exactly, and M learned from an m-centre model was measurably worse (README)."""
    plans = {}
    for phase, rows in sizes.items():
        reserved = _fit_items(n_train=n_train, n_val=n_val, n_sub=rows if phase == "sub" else 0, n_agop=n_agop,
                              n_rows=rows, d=d, c=c, itemsize=itemsize, diag=p.diag,
                              ridge_path=(ridge_path_bytes(rows, p.n_centres, itemsize, budget, has_val)
                                          if p.reg == "auto" else 0))
        requested = "auto" if phase == "sub" and p.solver == "nystrom" else p.solver
        plans[phase] = plan_solve(rows, d, c, dtype=dtype, device=device, budget=budget, requested=requested,
                                  reg=_plan_reg(p), owner=owner, reserved=reserved, n_centres=p.n_centres,
                                  n_local=n_local if phase == "all" else None)
        logger.info("%s: solver %s for %s rows (%s)", owner, plans[phase].solver, phase, plans[phase].reason)
    return plans


def _check_underflow(X: np.ndarray, comm, dtype: torch.dtype, owner: str) -> None:
    """A training feature whose every value (over all ranks' rows) lies below the working precision's smallest
    normal number would round to 0: the kernel would see a constant and the model predict one value. The same
    ValueError on every rank, before any work (column peaks from each rank's max and min: no copy of X)."""
    tiny = torch.finfo(dtype).tiny
    d = X.shape[1]
    peak = (np.maximum(np.abs(X.max(0)), np.abs(X.min(0))).astype(np.float64) if X.shape[0] else np.zeros(d))
    if comm.world_size > 1:
        peak = np.max(np.stack(comm.gather_objects(peak)), axis=0)
    bad = (peak > 0) & (peak < tiny)
    if bad.any():
        j = int(np.argmax(bad))
        name = str(dtype).replace("torch.", "")
        raise ValueError(f"{owner}: X has features whose values all lie below {name}'s smallest normal number "
                         f"{tiny:.3g} (column {j}: largest |value| {peak[j]:.3g}); they would round to 0: "
                         "standardise the data, or use dtype='float64'.")


def plan_layer(n_local: int, d: int, c: int, *, params: RFMParams, runtime: Runtime) -> dict:
    """The memory plan of a fit with no held-out rows (a Deep RFM layer's) on this rank's ``n_local`` rows of
    width ``d``, made as :func:`run_rfm` makes it, without any work: the planner's error when it cannot fit."""
    p, rt = params, runtime
    sizes = rt.comm.sizes(n_local, rt.device)
    n, most = sum(sizes), max(sizes)
    return _plan_phases({"all": n}, n_train=most, n_val=0, n_agop=min(p.agop_sample_size, n), d=d, c=c,
                        itemsize=torch.empty((), dtype=rt.dtype).element_size(), p=p, dtype=rt.dtype,
                        device=rt.device, budget=rt.budget, owner=rt.owner,
                        n_local=most if rt.comm.world_size > 1 else None)


@dataclass
class _Rows:
    """The rows of a phase as this rank holds them: ``X``, ``Y`` (tensors) and ``y`` (labels) start at the phase's
    global row ``offset``; ``n`` rows in all; ``complete``: every rank holds all of them (one process, the gathered
    subset, or rows gathered for a direct / EigenPro solve)."""

    X: torch.Tensor
    Y: torch.Tensor
    y: np.ndarray
    offset: int
    n: int
    complete: bool


class _Loop:
    """The state the RFM loop carries from solve to solve, and one step of it (:meth:`step`).

    The kept kernel machine lives on every rank in full: its transformed points (or centres) ``pts``, coefficients
    ``alpha`` and the training rows it uses, ``rows`` (global indices into the training rows; None: all of them).
    """

    def __init__(self, p, plans, Xt, Yt, y_tr, Xv, y_va, sub, *, rt: Runtime, score, work_budget, n_agop, Yv=None,
                 stopping=False):
        self.p, self.plans, self.score, self.rt = p, plans, score, rt
        self.stopping = stopping  # early stopping is on: the validation rows may also end a final m-centre CG
        self.cg_steps = None  # a refit's m-centre CG: the steps the validation rows chose for the kept solve
        self.comm, self.gen, self.owner = rt.comm, rt.generator, rt.owner
        self.work_budget = work_budget
        self.Xt, self.Yt, self.y_tr, self.Xv, self.y_va, self.sub, self.n_agop = Xt, Yt, y_tr, Xv, y_va, sub, n_agop
        sizes = self.comm.sizes(Xt.shape[0], Xt.device)
        self.off, self.n_tr = sum(sizes[: self.comm.rank]), sum(sizes)
        self.rows = {"all": _Rows(Xt, Yt, y_tr, self.off, self.n_tr, self.comm.world_size == 1)}
        if sub is not None:  # the subset: fetched from the ranks that hold its rows, held in full by every rank
            self.rows["sub"] = _Rows(self.comm.take_rows(Xt, self.off, sub), self.comm.take_rows(Yt, self.off, sub),
                                     self.comm.take_objects(y_tr, self.off, sub.cpu().numpy()), 0, len(sub), True)
        self.K = None  # one n x n buffer, reused by every solve on the same rows (direct: factorised in place)
        self.sqrt_m = self.factor = None  # R (d, d) or (d,) in the working dtype, and its compact factor
        self.alpha = None
        self.alpha_of = None  # the rows the coefficients live on: 'sub', 'all', or ('centres', phase)
        self.centre_idx = {}  # phase -> the m-centre model's centres (indices into the phase's rows)
        self.best = None  # (validation score, iteration, R, factor, alpha, rows, bandwidth) of the kept iterate
        self.best_val_out = None  # the kept iterate's outputs on the validation rows
        self.history = []
        self.warned = set()
        self.tied_groups = None  # one-hot blocks whose AGOP entries are tied (categorical columns)
        self._all_x = None  # every rank's training rows, once gathered (training_rows)
        # the validation rows' encoded targets (all ranks' rows, float64) that score a ridge walk (reg='auto') and the
        # steps of a final m-centre CG, and the last chosen ridge (where the next walk starts)
        self.Yv_all = (None if Xv is None or Yv is None else self.comm.all_gather_rows(Yv.to(torch.float64)))
        self.reg_chosen = None  # the ridge the last reg='auto' solve chose, and the rows of that solve
        self.reg_rows = 0
        self.loo_rows, self.centre_max = ridge_limits(rt.budget, Xt.element_size())

    def training_rows(self, rows) -> torch.Tensor:
        """The untransformed training rows ``rows`` (global indices; None: all of them), on every rank."""
        if rows is None:
            if self._all_x is None:  # gathered once (the diagonal AGOP asks at every step of a sharded fit)
                self._all_x = self.comm.all_gather_rows(self.Xt)
            return self._all_x
        return self.comm.take_rows(self.Xt, self.off, rows)

    def _complete(self, phase) -> _Rows:
        """The phase's rows held in full by every rank (gathered once, for a direct or EigenPro solve)."""
        r = self.rows[phase]
        if not r.complete:
            r = _Rows(self.comm.all_gather_rows(r.X), self.comm.all_gather_rows(r.Y), labels_of_all_ranks(self.comm, r.y),
                      0, r.n, True)
            self.rows[phase] = r
        return r

    def _matrix_buffer(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The n x n buffer every solve on the same rows reuses (the old one released before a new one is made)."""
        if self.K is None or self.K.shape[0] != n:
            self.K = None
            self.K = torch.empty((n, n), dtype=like.dtype, device=like.device)
        return self.K

    def _take(self, t, r: _Rows, idx):
        """Rows ``idx`` (indices into the phase's rows) of a tensor over the phase's rows ``r``, on every rank."""
        return t[idx] if r.complete else self.comm.take_rows(t, r.offset, idx)

    def _start(self, phase, plan, n_rows):
        """The warm start of this solve: the previous coefficients when they live on the same rows (or centres); the
        subset's coefficients, zero elsewhere, on all rows (they predict exactly as the subset's kernel machine)."""
        if self.alpha is None:
            return None
        if plan.solver.centres:
            return self.alpha if self.alpha_of == ("centres", phase) else None
        if self.alpha_of == phase:
            return self.alpha
        if self.alpha_of == "sub" and phase == "all":
            full = torch.zeros((n_rows, self.alpha.shape[1]), dtype=self.alpha.dtype, device=self.alpha.device)
            full[self.sub] = self.alpha
            return full
        return None

    def _centres(self, phase, n_rows, m):
        """The m-centre model's centres for a phase (indices into its rows): drawn uniformly once, kept across
        iterations (so each solve can start from the last one's coefficients)."""
        if phase not in self.centre_idx:
            idx = torch.randperm(n_rows, generator=self.gen)[:m].sort().values
            self.centre_idx[phase] = idx.to(self.Xt.device)
        return self.centre_idx[phase]

    def _solve(self, plan, phase, r: _Rows, pts, p, x0, regs=None, same_matrix=False, final=False):
        """One solve on the phase's rows; returns (result with complete coefficients, the training score, the
        machine's transformed points, its rows as indices into the phase's rows or None for all of them, the rows'
        untransformed values when at hand, bytes communicated per step). ``regs``: the m-centre model's ridge path
        over these values (:func:`~kernels.solvers.solve_centres_path`) instead of one solve at ``p.reg``.
        ``same_matrix``: the previous solve ran on the same rows, metric and bandwidth (a ridge walk): a stored
        kernel matrix still holds K and is not rebuilt. ``final``: no AGOP step follows (these coefficients are a
        model, not the source of the next M): with early stopping on, an m-centre CG then also stops on the validation
        rows
        (:func:`~kernels.solvers.solve_centres`' ``held_out``; the solves that drive M run to ``solver_tol``)."""
        comm, gen, kern = self.comm, self.gen, kernel_of(p)
        sent = (comm.bytes_communicated, comm.seconds_communicating, time.perf_counter())
        if plan.solver.centres:
            self.K = None
            local = self._centres(phase, r.n, plan.n_centres)
            centres = Points(self._take(pts.z, r, local), self._take(pts.z_sq, r, local))
            inner, progress = _inner_progress(p.verbose, plan.solver, p.solver_max_iter)
            # the validation error of coefficients over the centres (scores a ridge path, or a final CG's steps)
            held = None if self.Yv_all is None else (
                lambda betas: self._val_errors(centres, betas, kern, centres=True))
            if regs is not None:
                sol = solve_centres_path(pts, centres, r.Y, regs=regs, kernel=kern, held_out=held, store=plan.store,
                                         memory_budget=self.work_budget, comm=None if r.complete else comm)
            else:
                if not (final and self.stopping):
                    held = None
                if self.cg_steps is not None:  # (a refit: no validation rows; the kept solve's steps)
                    progress = _stop_at(self.cg_steps, progress)
                sol = solve_centres(pts, centres, r.Y, kernel=kern, reg=float(p.reg), x0=x0, rtol=p.solver_tol,
                                    max_iter=p.solver_max_iter, callback=progress, store=plan.store,
                                    memory_budget=self.work_budget, comm=None if r.complete else comm,
                                    held_out=held)
            per_step = _per_step(comm, sent, sol)
            if inner is not None:
                inner.close()
            score = self._estimated_score(r, lambda idx: self._take(pts.z, r, idx), centres, sol.x, kern,
                                          accumulate=torch.float64)
            return sol, score, centres, local, r.X[local] if r.complete else None, per_step
        if not r.complete and plan.solver is not Solver.CG:
            r = self._complete(phase)  # direct and EigenPro solve the gathered rows on every rank
            pts = Points.of(r.X, self.factor)
        if r.complete:
            if plan.holds_matrix:
                self._matrix_buffer(r.n, pts.z)
            if plan.solver is Solver.DIRECT:
                sol, score = _solve_direct(pts, r.Y, r.y, self.K, p, self.score)
                return sol, score, pts, None, r.X, _per_step(comm, sent, sol)
            if not plan.store:
                self.K = None  # a stored matrix of another phase is not needed any more
            if plan.store:
                # (the buffer above is the previous solve's when the rows are the same)
                op = StoredKernel(pts, kernel=kern, out=self.K, built=same_matrix)
            else:
                op = BlockedKernel(pts, kernel=kern, memory_budget=self.work_budget)
        else:  # CG on the row-sharded operator: this rank's rows of every vector
            self.K = None
            op = ShardedKernel(pts, comm, kernel=kern, memory_budget=self.work_budget)
            x0 = None if x0 is None else x0[r.offset : r.offset + r.X.shape[0]]
        # with a subset, the cap is the time budget of the solve on all rows; the subset solves, which drive M, run
        # to solver_tol (a capped subset solve measurably degraded M at n = 50000)
        cap = None if phase == "sub" else p.solver_max_iter
        sol = _solve_iterative(plan, op, r.Y, p, gen, self.work_budget, x0, cap)
        per_step = _per_step(comm, sent, sol)
        machine = pts
        if not r.complete:
            sol = replace(sol, x=op.gather(sol.x))
            machine = op.all
        del op
        score = self._estimated_score(r, lambda idx: machine.z[idx], machine, sol.x, kern)  # (every row's points)
        return sol, score, machine, None, r.X if r.complete else None, per_step

    def _solve_auto(self, plan, phase, r: _Rows, pts, p, x0, final=False):
        """:meth:`_solve` with the ridge chosen from the data (reg='auto'; the routes: LOO_MAX_ROWS' comment). Returns
        what :meth:`_solve` returns and the history entries of the ridge choice (``final``: :meth:`_solve`'s)."""
        t0 = time.perf_counter()
        comm, kern = self.comm, kernel_of(p)
        if plan.solver.centres and plan.n_centres <= self.centre_max:  # the m-centre path
            out = self._solve(plan, phase, r, pts, p, x0, regs=RIDGE_GRID)
            path = out[0].details["ridge_path"]
        elif plan.solver.centres and self.reg_chosen is not None:
            # more centres than the path affords, and a walk would run a whole m-centre CG per value: the ridge the
            # exactly solved subset chose, carried at the same ridge per row (both systems penalise reg ||f||^2
            # against a sum of squares over their rows: lambda = reg / n, Falkon's lambda n)
            lam = self._carried_reg(r.n)
            t0 = None  # nothing is spent on choosing it (the solve is the solve)
            out = self._solve(plan, phase, r, pts, replace(p, reg=lam), x0, final=final)
            path = RidgePath([lam], [float("nan")], f"carried from the previous solve (x {r.n} / {self.reg_rows} rows)")
        elif self.Yv_all is not None and not plan.solver.centres:  # one solve per value, scored on the validation rows
            solved = {}  # ridge -> (the solve, its validation error)
            if self.reg_chosen is None:  # the fit's first walk: from the leave-one-out choice on a few rows
                # (unscaled to the solve's rows: the optimal ridge per row falls with the rows, and the start
                # measured on MNIST was within a value of the walk's end)
                start = self._loo_on_rows(r, pts, kern, min(r.n, WALK_START_ROWS)).reg
            else:
                start = self._carried_reg(r.n)

            def evaluate(lam):
                # warm start from the lowest error so far
                start = min(solved.values(), key=lambda s: s[1])[0][0].x if solved else x0
                # K does not depend on the ridge: a stored matrix is built once for the whole walk
                res = self._solve(plan, phase, r, pts, replace(p, reg=lam), start, same_matrix=bool(solved))
                err = self._val_errors(res[2], [res[0].x], kern)[0]
                solved[lam] = (res, err)  # (the choice may be a smaller ridge whose error equals the lowest)
                return err

            path = walk_path(evaluate, RIDGE_GRID, start=start)
            out = solved[path.reg][0]
            del solved
        elif plan.solver is Solver.DIRECT and r.n <= self.loo_rows:  # the exact leave-one-out path
            sent = (comm.bytes_communicated, comm.seconds_communicating, time.perf_counter())
            r = self._complete(phase)
            pts = Points.of(r.X, self.factor)
            K = kern.matrix(pts.z, pts.z, x_sq=pts.z_sq, z_sq=pts.z_sq, out=self._matrix_buffer(r.n, pts.z))
            path, alpha, train_out = loo_path(K, r.Y, RIDGE_GRID)
            sol = SolveResult(alpha, 1, True, [], path.reg, "direct")
            out = (sol, self.score(train_out.cpu().numpy(), r.y), pts, None, r.X, _per_step(comm, sent, sol))
        else:  # the exact leave-one-out path on a random subset of the rows, then one solve at its choice
            path = self._loo_on_rows(r, pts, kern, min(r.n, self.loo_rows, LOO_SUBSET_ROWS))
            out = self._solve(plan, phase, r, pts, replace(p, reg=path.reg), x0, final=final)
        self.reg_chosen, self.reg_rows = path.reg, r.n
        return out, {"reg": path.reg, **path.record(), "reg_seconds": 0.0 if t0 is None else time.perf_counter() - t0}

    def _carried_reg(self, n: int) -> float:
        """The last chosen ridge for a solve on ``n`` rows (:func:`same_ridge_per_row`)."""
        return same_ridge_per_row(self.reg_chosen, self.reg_rows, n)

    def _loo_on_rows(self, r: _Rows, pts, kern, k: int) -> RidgePath:
        """The exact leave-one-out path on ``k`` random rows of the phase (every rank the same rows and path)."""
        idx = torch.randperm(r.n, generator=self.gen)[:k].sort().values.to(pts.z.device)
        z, z_sq, Ys = self._take(pts.z, r, idx), self._take(pts.z_sq, r, idx), self._take(r.Y, r, idx)
        path = loo_path(kern.matrix(z, z, x_sq=z_sq, z_sq=z_sq), Ys, RIDGE_GRID)[0]
        path.criterion = f"loo on {k} of {r.n} rows"
        return path

    def _val_errors(self, machine: Points, alphas, kern, *, centres=False) -> list[float]:
        """The mean squared error of each coefficient matrix's outputs on the validation rows (all ranks' rows)
        against their encoded targets: one pass over the rows for all of them."""
        c = self.Yv_all.shape[1]
        km = KernelMachine(machine, torch.cat([a.reshape(a.shape[0], -1) for a in alphas], 1).to(machine.z.dtype),
                           kern, self.factor)
        with clock_phase("validate"):
            out = km.outputs(self.Xv, memory_budget=self.work_budget, accumulate=torch.float64 if centres else None)
        out = self.comm.all_gather_rows(out).double()
        return [float((out[:, j * c:(j + 1) * c] - self.Yv_all).square().mean()) for j in range(len(alphas))]

    def _estimated_score(self, r: _Rows, rows_of, machine: Points, alpha, kern, *, accumulate=None):
        """The training score of a solve estimated on SCORE_ROWS fixed random rows of the phase (an exact one costs
        a pass over K): ``rows_of(idx)`` gives their transformed rows on every rank; labels from the phase's rows."""
        idx = _score_rows(r.n, self.gen, machine.z.device)
        with clock_phase("train_score"):
            out = kernel_matmul(rows_of(idx), machine, alpha, kernel=kern, memory_budget=self.work_budget,
                                accumulate=accumulate)
        picked = idx.cpu().numpy()
        y_idx = r.y[picked] if r.complete else self.comm.take_objects(r.y, r.offset, picked)
        return self.score(out.cpu().double().numpy(), y_idx)

    def _feature_step(self, x_rows, pts, rows, p):
        """The AGOP of the predictor (centres: the solve's rows, or the m-centre model's centres) over a sample of
        all training rows (each rank its share of the sample), and the new M (rank 0's on every rank)."""
        n_tr, n_local = self.n_tr, self.Xt.shape[0]
        if self.n_agop < n_tr:
            idx = torch.randperm(n_tr, generator=self.gen)[: self.n_agop].to(self.Xt.device)
            if self.comm.world_size > 1:
                idx = idx[(idx >= self.off) & (idx < self.off + n_local)] - self.off
            samples = self.Xt[idx]
        else:
            samples = self.Xt
        if p.diag and x_rows is None:
            x_rows = self.training_rows(rows)
        agop = distributed_agop(samples, x_rows if p.diag else pts, self.alpha, self.comm, kernel=kernel_of(p),
                                sqrt_m=self.factor, diag=p.diag, centering=p.centering,
                                memory_budget=self.work_budget)
        if not bool(torch.isfinite(agop).all()):
            raise ValueError(
                f"{self.owner}: the AGOP is not finite (it overflowed): the targets or features are badly scaled "
                f"(largest |y| {float(self.Yt.abs().max()) if self.Yt.numel() else 0.0:.3g}); standardise them, or "
                "use dtype='float64'."
            )
        if self.tied_groups:
            agop = tie_groups(agop, self.tied_groups)
        r = self.comm.broadcast(feature_matrix_update(agop, power=p.agop_power, normalize=p.normalize_m))
        self.sqrt_m = r.to(self.Xt.dtype)
        if not bool(torch.isfinite(self.sqrt_m).all()):
            raise ValueError(
                f"The 'agop_power' parameter of {self.owner} is too large for this AGOP: AGOP^{p.agop_power:g} "
                f"overflows {str(self.Xt.dtype).replace('torch.', '')} (largest entry {float(r.abs().max()):.3g})."
            )
        # the product Laplace kernel reads the coordinates of x R themselves (not only ||x R||): no compact factor
        self.factor = compact_factor(self.sqrt_m) if kernel_of(p).radial else self.sqrt_m

    def step(self, t, phase, agop_step) -> dict:
        """One solve (and, when ``agop_step``, the feature-matrix update after it); returns its history record."""
        t0 = time.perf_counter()
        plan = self.plans[phase]
        r = self.rows[phase]
        pts = Points.of(r.X, self.factor)
        sample = scale_rows(r.n, pts.z.device)
        bandwidth = _kernel_bandwidth(self.p, self._take(pts.z, r, sample), self.owner, self.warned)
        p = replace(self.p, bandwidth=bandwidth)  # the loop's parameters with this solve's bandwidth
        x0 = self._start(phase, plan, r.n)
        ridge = {}
        with clock_phase("solve"):
            if p.reg == "auto":
                (sol, train_score, pts, local, x_rows, per_step), ridge = self._solve_auto(plan, phase, r, pts, p,
                                                                                           x0, final=not agop_step)
                p = replace(p, reg=ridge["reg"])
            else:
                sol, train_score, pts, local, x_rows, per_step = self._solve(plan, phase, r, pts, p, x0,
                                                                             final=not agop_step)
        self.alpha = sol.x
        self.alpha_of = phase if local is None else ("centres", phase)
        if not bool(torch.isfinite(self.alpha).all()):
            raise ValueError(
                "The kernel ridge solve produced non-finite coefficients; the data may be badly scaled "
                "(try a larger bandwidth, a larger reg or dtype='float64')."
            )
        # the machine's training rows (global indices into the training rows; None: all of them)
        rows = self.sub if phase == "sub" else None
        if local is not None:  # the model lives on its centres: predictions, the AGOP and the kept rows use them
            rows = local if rows is None else rows[local]
        rec = {"iter": t, "n_rows": r.n, "n_centres": None if local is None else len(local),
               "bandwidth": bandwidth, "solver": sol.method,
               "solver_reason": plan.reason,
               "solver_iters": sol.n_iter, "solver_converged": sol.converged, "solver_residual": sol.final_residual,
               "solver_warm_start": x0 is not None,
               "reg": float(p.reg), "reg_used": sol.reg_used, "train_score": train_score, "val_score": None,
               "agop_rows": self.n_agop if agop_step else None,
               # the width of the rows in the metric (d; fewer with a compact factor): the distance GEMMs' depth
               "metric_columns": int(pts.z.shape[1])}
        if "stopped_by" in sol.details:  # an m-centre CG that scored its steps on the validation rows
            rec.update(solver_stopped_by=sol.details["stopped_by"], solver_returned_step=sol.details["returned_step"],
                       solver_val_errors=sol.details["held_out_errors"])
        elif self.cg_steps is not None and local is not None:
            rec["solver_stopped_by"] = f"the kept solve's {self.cg_steps} steps (chosen on the validation rows)"
        rec.update(per_step)
        rec.update(ridge)
        if self.comm.world_size > 1:
            rec["world_size"] = self.comm.world_size
            rec["sharded"] = not r.complete and plan.solver in (Solver.CG, Solver.NYSTROM)
        if self.Xv is not None:
            machine = KernelMachine(pts, self.alpha, kernel_of(p), self.factor)
            with clock_phase("validate"):
                val_out = machine.outputs(self.Xv, memory_budget=self.work_budget)
            val_out = self.comm.all_gather_rows(val_out).cpu().double().numpy()
            rec["val_score"] = self.score(val_out, self.y_va)
        key = rec["val_score"]
        if self.best is None or key is None or key > self.best[0]:
            self.best = (key, t, self.sqrt_m, self.factor, self.alpha, rows, bandwidth)
            self.best_val_out = None if key is None else val_out
        if agop_step:
            with clock_phase("agop"):
                self._feature_step(x_rows, pts, rows, p)
        rec["seconds"] = time.perf_counter() - t0
        self.history.append(rec)
        return rec


def _per_step(comm, before, sol) -> dict:
    """Per iteration of a solve: seconds (its setup included), and on several ranks the bytes this rank received and
    the seconds it spent in collectives (waiting for slower ranks included)."""
    bytes0, comm0, t0 = before
    steps = max(sol.n_iter, 1)
    out = {"solve_seconds": time.perf_counter() - t0, "seconds_per_step": (time.perf_counter() - t0) / steps}
    if comm.world_size > 1:
        out["bytes_per_step"] = int((comm.bytes_communicated - bytes0) / steps)
        out["comm_seconds_per_step"] = (comm.seconds_communicating - comm0) / steps
    return out


def _refit_plans(n, p, bandwidth, reg, plan_args):
    """The parameters and the plan of a refit on all n rows (with the kept solve's bandwidth and ridge)."""
    rp = replace(p, bandwidth=bandwidth, reg=reg, iters=0, validation_fraction=None)
    held = plan_args["n_train"] + plan_args["n_val"]
    return rp, _plan_phases({"all": n}, **{**plan_args, "n_train": held, "n_val": 0, "p": rp,
                                           "n_local": None if plan_args["n_local"] is None else held})


def _refit(X, y, Y, rp, plans, sqrt_m, factor, t, score, rt: Runtime, cg_steps=None, x0=None) -> _Loop:
    """One solve on all n rows with a chosen M (its factor) and bandwidth (in ``rp``); the loop holds the result.
    ``cg_steps``: an m-centre CG runs this many steps (the kept solve's, which the validation rows stopped); ``x0``:
    coefficients over all n rows (global order) to start from."""
    n = X.shape[0]
    loop = _Loop(rp, plans, finite_tensor(X, rt.dtype, rt.device), finite_tensor(Y, rt.dtype, rt.device, "y"), y,
                 None, None, None, rt=rt, score=score, work_budget=plans["all"].work_budget(),
                 n_agop=min(rp.agop_sample_size, n))
    loop.sqrt_m, loop.factor = sqrt_m, factor
    loop.cg_steps = cg_steps
    if x0 is not None:
        loop.alpha, loop.alpha_of = x0, "all"
    rec = loop.step(t, "all", False)
    rec["refit"] = f"the chosen iterate's M refit on all {loop.n_tr} training rows (validation rows included)"
    loop.K = None
    return loop


def _local(idx: np.ndarray, offset: int, n_local: int) -> np.ndarray:
    """The entries of sorted global indices ``idx`` that fall in this rank's rows, as local indices."""
    lo, hi = np.searchsorted(idx, [offset, offset + n_local])
    return idx[lo:hi] - offset


def run_rfm(X: np.ndarray, y, Y: np.ndarray, *, params: RFMParams, score: Callable[[np.ndarray, object], float],
            runtime: Runtime, final_solve: bool = True, X_val: np.ndarray | None = None, y_val=None,
            Y_val: np.ndarray | None = None, tied_groups: list | None = None) -> RFMState:
    """Run the RFM loop on validated arrays (this rank's rows of them; all rows on one process).

    Parameters
    ----------
    X : (n, d) features; y : (n,) labels or targets (what ``score`` compares against); Y : (n, c) encoded targets.
    params : the loop's hyperparameters.
    score : ``score(outputs (m, c), y_true (m,)) -> float`` (R^2, accuracy, ...).
    runtime : device, dtype, budget, generator, owner and rank group (:class:`~drfm.engine.runtime.Runtime`).
    final_solve : solve once more on all rows with the final M (False for a Deep RFM layer: the loop then ends with
        its last AGOP step, and ``last_sqrt_m`` holds the new data map).
    X_val, y_val : explicit validation data (instead of a held-out ``validation_fraction``); with several ranks,
        each rank's share (every rank passes them, or none does). ``Y_val``: their encoded targets (what reg='auto'
        scores outputs against; without them explicit validation data do not choose the ridge).
    tied_groups : column groups (one-hot blocks of categorical columns) whose AGOP entries are averaged over the
        permutations of each group before every feature-matrix update (:func:`drfm._categorical.tie_groups`).

    Early stopping (``params.early_stopping``; 'auto': on from EARLY_STOPPING_MIN_N rows or with explicit validation
    data; never for a Deep RFM layer): every solve's model is scored on the validation data, iteration 0 (M = I)
    included; the loop stops after ``n_iter_no_change`` solves without a better score; the best one is kept, and when
    its validation rows were held out of the training rows (at least REFIT_MIN_SHARE of them), its M (and bandwidth)
    are refit on all of them.

    With several ranks every count above is global and the result is the single-process one (module text).
    """
    p, rt = params, runtime
    comm, gen, dtype, device, owner = rt.comm, rt.generator, rt.dtype, rt.device, rt.owner
    n_local, d = X.shape
    c = Y.shape[1]
    sizes = comm.sizes(n_local, device)
    n, off = sum(sizes), sum(sizes[: comm.rank])
    if n == 0:
        raise ValueError(f"{owner}: no rank holds any training rows")
    _check_underflow(X, comm, dtype, owner)
    if p.iters > MANY_ITERS:
        warnings.warn(f"{owner}: iters={p.iters} RFM iterations, each a kernel solve and an AGOP step: the feature "
                      f"matrix usually settles within {SETTLES_WITHIN} (early stopping keeps the best iterate); this "
                      "fit may run for a very long time", UserWarning, stacklevel=2)
    stopping = final_solve and p.iters > 0 and (p.early_stopping is True or (
        p.early_stopping == "auto" and (n >= EARLY_STOPPING_MIN_N or X_val is not None)))
    if X_val is not None:
        tr, va = np.arange(n), None
    else:
        fraction = p.validation_fraction
        if stopping and fraction is None:
            fraction = min(DEFAULT_VALIDATION_FRACTION, DEFAULT_VALIDATION_MAX_ROWS / n)
        tr, va = _validation_split(n, fraction, gen)
    n_tr = len(tr)
    # this rank's training and validation rows (local indices), and the most any rank holds (its memory plan)
    tr_mine = _local(tr, off, n_local)
    va_mine = None if va is None else _local(va, off, n_local)
    bounds = np.cumsum([0] + sizes)
    most_tr = max(len(_local(tr, int(bounds[k]), s)) for k, s in enumerate(sizes))
    # feature-learning solves (those followed by an AGOP step) may run on a random subset of the training rows;
    # the final solve always uses all of them
    sub = None
    n_agop = min(p.agop_sample_size, n_tr)
    # the validation rows a rank holds at most: its held-out rows, or its share of X_val
    most_val = max(sizes) - most_tr + (0 if X_val is None else max(comm.sizes(len(X_val), device)))
    plan_args = dict(n_train=most_tr, n_val=most_val, n_agop=n_agop,
                     d=d, c=c, itemsize=torch.empty((), dtype=dtype).element_size(), p=p, dtype=dtype,
                     device=device, budget=rt.budget, owner=owner, n_local=most_tr if comm.world_size > 1 else None,
                     has_val=va is not None or (X_val is not None and Y_val is not None))
    # the plan on all rows does not depend on the subset (planned once; 'auto' subsets are decided from it)
    plans = _plan_phases({"all": n_tr}, **plan_args)
    size = p.iter_sample_size
    if size == "auto":
        # M is learned on exactly solved rows (at most AUTO_ITER_SAMPLE_SIZE of them, all when fewer) when the model
        # on all rows is the m-centre one (an M learned from m-centre models was measurably worse, README);
        # otherwise every solve uses all rows
        size = None
        if p.iters > 0 and plans["all"].solver.centres:
            size = min(AUTO_ITER_SAMPLE_SIZE, n_tr)
            if size == n_tr:
                sub = torch.arange(n_tr, device=device)
    if size is not None and size < n_tr and p.iters > 0:
        sub = torch.randperm(n_tr, generator=gen)[:size].sort().values.to(device)
    if sub is not None:
        plans.update(_plan_phases({"sub": len(sub)}, **plan_args))
    Yv = None
    if X_val is not None:
        Xv, y_va = finite_tensor(X_val, dtype, device), labels_of_all_ranks(comm, y_val)
        if Y_val is not None:
            Yv = finite_tensor(Y_val, dtype, device, "y_val")
    elif va is None:
        Xv, y_va = None, None
    else:
        Xv, Yv = finite_tensor(X[va_mine], dtype, device), finite_tensor(Y[va_mine], dtype, device, "y")
        y_va = y[va] if comm.world_size == 1 else comm.take_objects(y, off, va)
    loop = _Loop(p, plans, finite_tensor(X[tr_mine], dtype, device), finite_tensor(Y[tr_mine], dtype, device, "y"),
                 y[tr_mine], Xv, y_va, sub, rt=rt, score=score,
                 work_budget=min(plan.work_budget() for plan in plans.values()), n_agop=n_agop, Yv=Yv,
                 stopping=stopping)
    loop.tied_groups = tied_groups
    # no subset solve with the final M when the solve on all rows does not start from its coefficients
    shape = (p.iters, sub is not None, final_solve, not plans["all"].solver.iterative_exact)
    bar = tqdm(enumerate(_schedule(*shape)), total=_n_solves(*shape), desc=owner,
               disable=not p.verbose or comm.rank != 0, unit="solve")
    phases_run = set()
    for t, (phase, agop_step) in bar:
        rec = loop.step(t, phase, agop_step)
        phases_run.add(phase)
        bar.set_postfix(train=f"{rec['train_score']:.4f}", val="-" if rec["val_score"] is None
                        else f"{rec['val_score']:.4f}")
        logger.info("RFM iteration %d: %s", t, rec)
        if stopping and t - loop.best[1] >= p.n_iter_no_change:
            rec["early_stop"] = f"no better validation score in {p.n_iter_no_change} solves"
            logger.info("%s: early stop after solve %d (best: %d)", owner, t, loop.best[1])
            break
    bar.close()
    refit_follows = stopping and va is not None and len(va) >= REFIT_MIN_SHARE * n
    if final_solve and "all" not in phases_run and not refit_follows:
        # early stopping ended the feature learning on the subset before the solve on all rows, and no refit on all
        # rows follows (explicit validation data, or a held-out share under REFIT_MIN_SHARE): the solve on all
        # training rows still comes, with the kept iterate's M (and is kept when it scores better on validation)
        _, _, loop.sqrt_m, loop.factor, _, _, _ = loop.best
        loop.alpha = loop.alpha_of = None
        rec = loop.step(len(loop.history), "all", False)
        rec["final_after_early_stop"] = (f"the kept iterate's M solved on all {n_tr} training rows (early stopping "
                                         "ended the subset solves first)")
    loop.K = None
    _, best_t, best_r, best_factor, best_alpha, best_rows, best_bandwidth = loop.best
    history, last_r = loop.history, loop.sqrt_m
    val_outputs, val_labels = loop.best_val_out, loop.y_va
    solver = (plans["all"] if final_solve or sub is None else plans["sub"]).solver.value
    refit_plans = None
    if refit_follows:
        kept_reg = history[best_t]["reg"]
        if p.reg == "auto":  # a chosen ridge is carried at the same ridge per row
            kept_reg = same_ridge_per_row(kept_reg, history[best_t]["n_rows"], n)
        rp, refit_plans = _refit_plans(n, p, best_bandwidth, kept_reg, plan_args)
        kept_solver = history[best_t]["solver"]
        if (refit_plans["all"].solver.centres and kept_solver != Solver.NYSTROM
                and history[best_t]["n_rows"] == len(tr)):
            # all n rows would only fit the m-centre model (an approximation): the exactly solved kept iterate on
            # the training rows is the better model (MNIST 60000: the m-centre refit scored 0.9701)
            history[best_t]["refit_skipped"] = (f"all {n} rows fit only the m-centre model; the exact "
                                                f"{kept_solver} solve on {len(tr)} rows is kept")
            logger.info("%s: refit skipped: %s", owner, history[best_t]["refit_skipped"])
            refit_plans = None
    if refit_plans is not None:
        # the kept iterate's M (and bandwidth, and ridge) refit on every training row: the validation rows chose it.
        # CG starts from the kept coefficients on their rows, zero on the validation rows: the kept predictor itself
        # (measured on the low-rank task, 12 800 rows: 66 steps cold)
        x0 = None
        if refit_plans["all"].solver is Solver.CG:
            kept_rows = tr if best_rows is None else tr[best_rows.cpu().numpy()]
            x0 = best_alpha.new_zeros((n, best_alpha.shape[1]))  # (coefficients are (rows, c), as Y is)
            x0[torch.as_tensor(kept_rows, device=x0.device)] = best_alpha
        del loop, best_alpha
        # the steps of an m-centre CG that the validation rows stopped are chosen on them like the ridge: the refit
        # (the same problem with the validation rows added, started cold) runs as many when the kept solve started
        # cold too
        kept = history[best_t]
        steps = (kept["solver_returned_step"] if kept.get("solver_stopped_by") == "held-out"
                 and not kept["solver_warm_start"] else None)
        refit = _refit(X, y, Y, rp, refit_plans, best_r, best_factor, len(history), score, rt, cg_steps=steps,
                       x0=x0)
        history.append(refit.history[0])
        if p.reg == "auto":
            history[-1]["reg_criterion"] = f"the kept solve's ({best_t}) x {n} / {history[best_t]['n_rows']} rows"
        _, _, _, _, best_alpha, rows, _ = refit.best
        X_fit = refit.training_rows(rows)
        solver = refit.plans["all"].solver.value
    else:
        X_fit = loop.training_rows(best_rows)
    return RFMState(
        sqrt_m=None if best_r is None else best_r.double().cpu().numpy(),
        factor=best_factor,
        bandwidth=best_bandwidth,
        alpha=best_alpha,
        X_fit=X_fit,
        best_iter=best_t,
        history=history,
        solver=solver,
        last_sqrt_m=None if last_r is None else last_r.double().cpu().numpy(),
        iter_rows=None if sub is None else tr[sub.cpu().numpy()],
        val_outputs=val_outputs,
        val_labels=None if val_outputs is None else val_labels,
        reg=history[-1]["reg"] if refit_plans is not None else history[best_t]["reg"],
    )
