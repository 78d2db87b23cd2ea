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
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from kernels import (BlockedKernel, NystromEigensystem, NystromPreconditioner, Points, StoredKernel, compact_factor,
                     feature_matrix_update, kernel_matmul, laplace_agop, plan_solve, solve_centres, solve_cg,
                     solve_direct, solve_eigenpro)
from kernels.agop import feature_matrix_workspace_bytes
from kernels.agop import workspace_bytes as agop_workspace_bytes
from kernels.family import Kernel

from ._categorical import tie_groups

from ._backend import finite_tensor

__all__ = ["KernelScaleWarning", "RFMParams", "RFMState", "run_rfm"]

logger = logging.getLogger("drfm.rfm")

#: iterative solves estimate the training score on this many random rows (an exact score costs a pass over K)
SCORE_ROWS = 2000

#: early_stopping='auto' turns early stopping on from this many training rows (fewer leave too small a validation split)
EARLY_STOPPING_MIN_N = 2000
#: the validation split early stopping holds out when validation_fraction is None: 10%, at most 10000 rows
DEFAULT_VALIDATION_FRACTION, DEFAULT_VALIDATION_MAX_ROWS = 0.1, 10000
#: the chosen iterate is refit on all rows only when the held-out rows are at least this share of them: beyond
#: (n > 200 000 with the default split) one more solve on all n rows would cost as much as the fit for <= 5% more rows
REFIT_MIN_SHARE = 0.05

#: iter_sample_size='auto': the subset on which M is learned when the solve on all rows is the m-centre model
AUTO_ITER_SAMPLE_SIZE = 16000

#: rows (evenly spaced, no random draw) whose pairwise distances measure the kernel's scale at each solve
SCALE_ROWS = 1000
#: the median distance over the bandwidth beyond which the kernel matrix is nearly the identity (k < 5e-5 at the
#: median pair), and below which it is nearly constant (k > 0.999)
IDENTITY_RATIO, CONSTANT_RATIO = 10.0, 1e-3


class KernelScaleWarning(UserWarning):
    """The kernel matrix is nearly the identity or nearly constant: the bandwidth does not suit the data's scale."""


def median_distance(pts: Points, kernel: Kernel | None = None) -> float:
    """Median pairwise distance (in the current metric; L1 of the transformed rows for the product Laplace kernel)
    among up to SCALE_ROWS evenly spaced rows; 0 for one row."""
    n = len(pts)
    if n < 2:
        return 0.0
    idx = torch.linspace(0, n - 1, min(n, SCALE_ROWS), device=pts.z.device).round().long().unique()
    z = pts.z[idx].double()
    d = (kernel or Kernel()).distances(z, z)
    iu = torch.triu_indices(len(idx), len(idx), 1, device=z.device)
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


def _kernel_bandwidth(p, pts, owner, warned: set) -> float:
    """The bandwidth of this solve (``'median'``: the kernel's distance unit at the median pairwise distance now,
    :meth:`~kernels.family.Kernel.with_length`; ``'auto'``: at AUTO_BANDWIDTH_FACTOR times it), and a
    KernelScaleWarning (once per fit and kind) when the kernel matrix is nearly the identity or nearly constant."""
    shape = Kernel(p.kernel, 1.0, p.exponent)
    med = median_distance(pts, shape)
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
            f"current metric) the kernel matrix is {what}. Scale the features (e.g. StandardScaler) or set the "
            "bandwidth relative to the data: bandwidth='median'.", KernelScaleWarning, stacklevel=4)
    return L


@dataclass(frozen=True)
class RFMParams:
    """The hyperparameters of the RFM loop (an RFM estimator's parameters, validated)."""

    bandwidth: float | str
    kernel: str
    exponent: float
    reg: float
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


def _fit_items(*, n_train, n_val, n_sub, n_agop, n_rows, d, c, itemsize, diag) -> dict[str, int]:
    """The fit's own allocations beside a solve of ``n_rows`` rows: its data (and the subset's copy), the AGOP's
    sample rows, transformed centres and accumulators, and the d x d feature matrices with their update."""
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


def _solve_iterative(plan, pts, Y_rows, y_rows, K, p, gen, work_budget, score_fn, alpha, cap):
    """CG or EigenPro on the stored matrix (in ``K``) or on blocked products, warm-started from ``alpha``."""
    inner, progress = _inner_progress(p.verbose, plan.solver, cap)
    if plan.store:
        op = StoredKernel(pts, kernel=kernel_of(p), out=K)
    else:
        op = BlockedKernel(pts, kernel=kernel_of(p), memory_budget=work_budget)
    eig = NystromEigensystem(op, n_centres=plan.n_centres, generator=gen)
    if plan.solver == "cg":
        pre = NystromPreconditioner(op, reg=float(p.reg), eigensystem=eig, rank=plan.rank, memory_budget=work_budget)
        sol = solve_cg(op, Y_rows, reg=float(p.reg), x0=alpha, rtol=p.solver_tol, max_iter=cap, M=pre,
                       callback=progress)
        del pre
    else:
        sol = solve_eigenpro(op, Y_rows, reg=float(p.reg), x0=alpha, rtol=p.solver_tol, max_iter=cap or 10, M=eig,
                             callback=progress, generator=gen, memory_budget=work_budget)
    if inner is not None:
        inner.close()
    # the training score is estimated on a fixed random subset (an exact one costs a pass)
    n_rows = len(pts)
    score_idx = torch.randperm(n_rows, generator=gen)[: min(n_rows, SCORE_ROWS)].sort().values.to(pts.z.device)
    train_out = kernel_matmul(pts.z[score_idx], pts, sol.x, kernel=kernel_of(p), memory_budget=work_budget)
    del op, eig  # release the Nystrom system before the AGOP and the next iteration allocate
    return sol, score_fn(train_out.cpu().double().numpy(), y_rows[score_idx.cpu().numpy()])


def _solve_centres(plan, pts, centres, Y_rows, y_rows, p, gen, work_budget, score_fn, x0):
    """The m-centre model on all the phase's rows (:func:`kernels.solve_centres`), warm-started from ``x0``."""
    inner, progress = _inner_progress(p.verbose, plan.solver, p.solver_max_iter)
    sol = solve_centres(pts, centres, Y_rows, kernel=kernel_of(p), reg=float(p.reg), x0=x0, rtol=p.solver_tol,
                        max_iter=p.solver_max_iter, callback=progress, store=plan.store, memory_budget=work_budget)
    if inner is not None:
        inner.close()
    n_rows = len(pts)
    score_idx = torch.randperm(n_rows, generator=gen)[: min(n_rows, SCORE_ROWS)].sort().values.to(pts.z.device)
    train_out = kernel_matmul(pts.z[score_idx], centres, sol.x, kernel=kernel_of(p), memory_budget=work_budget,
                              accumulate=torch.float64)
    return sol, score_fn(train_out.cpu().double().numpy(), y_rows[score_idx.cpu().numpy()])


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


def _plan_phases(sizes, *, n_train, n_val, n_agop, d, c, itemsize, p, dtype, device, budget, owner):
    """A SolvePlan per phase ('all' rows, and 'sub' with a subset), each with the fit's own items reserved.

    With solver='nystrom' and a subset, the subset's solves (which learn M) are planned as 'auto': the subset exists to
    be solved exactly, and M learned from an m-centre model was measurably worse (README)."""
    plans = {}
    for phase, rows in sizes.items():
        reserved = _fit_items(n_train=n_train, n_val=n_val, n_sub=rows if phase == "sub" else 0, n_agop=n_agop,
                              n_rows=rows, d=d, c=c, itemsize=itemsize, diag=p.diag)
        requested = "auto" if phase == "sub" and p.solver == "nystrom" else p.solver
        plans[phase] = plan_solve(rows, d, c, dtype=dtype, device=device, budget=budget, requested=requested,
                                  reg=float(p.reg), owner=owner, reserved=reserved, n_centres=p.n_centres)
        logger.info("%s: solver %s for %s rows (%s)", owner, plans[phase].solver, phase, plans[phase].reason)
    return plans


class _Loop:
    """The state the RFM loop carries from solve to solve, and one step of it (:meth:`step`)."""

    def __init__(self, p, plans, Xt, Yt, y_tr, Xv, y_va, sub, *, score, gen, work_budget, n_agop, owner):
        self.p, self.plans, self.score, self.gen, self.owner = p, plans, score, gen, owner
        self.work_budget = work_budget
        self.Xt, self.Yt, self.y_tr, self.Xv, self.y_va, self.sub, self.n_agop = Xt, Yt, y_tr, Xv, y_va, sub, n_agop
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

    def _start(self, phase, plan, n_rows):
        """The warm start of this solve: the previous coefficients when they live on the same rows (or centres); the
        subset's coefficients, zero elsewhere, on all rows (they predict exactly as the subset's kernel machine)."""
        if self.alpha is None:
            return None
        if plan.solver == "nystrom":
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

    def _solve(self, plan, phase, pts, Y_rows, y_rows, p, x0, centres):
        n_rows = len(pts)
        if plan.solver == "nystrom":
            self.K = None
            return _solve_centres(plan, pts, centres, Y_rows, y_rows, p, self.gen, self.work_budget, self.score, x0)
        if plan.holds_matrix and (self.K is None or self.K.shape[0] != n_rows):
            self.K = None
            self.K = torch.empty((n_rows, n_rows), dtype=pts.z.dtype, device=pts.z.device)
        if plan.solver == "direct":
            return _solve_direct(pts, Y_rows, y_rows, self.K, p, self.score)
        if not plan.store:
            self.K = None  # a stored matrix of another phase is not needed any more
        # with a subset, the cap is the time budget of the solve on all rows; the subset solves, which drive M, run
        # to solver_tol (a capped subset solve measurably degraded M at n = 50000)
        cap = None if phase == "sub" else p.solver_max_iter
        return _solve_iterative(plan, pts, Y_rows, y_rows, self.K, p, self.gen, self.work_budget, self.score,
                                x0, cap)

    def _feature_step(self, X_rows, pts, p):
        """The AGOP of the predictor (centres: the solve's rows, or the m-centre model's centres) over a sample of
        all training rows, and the new M."""
        n_tr = self.Xt.shape[0]
        idx = torch.randperm(n_tr, generator=self.gen)[: self.n_agop].to(X_rows.device) if self.n_agop < n_tr \
            else slice(None)
        agop = laplace_agop(self.Xt[idx], X_rows if p.diag else pts, self.alpha, kernel=kernel_of(p),
                            sqrt_m=self.factor, diag=p.diag, centering=p.centering, memory_budget=self.work_budget)
        if not bool(torch.isfinite(agop).all()):
            raise ValueError(
                f"{self.owner}: the AGOP is not finite (it overflowed): the targets or features are badly scaled "
                f"(largest |y| {float(self.Yt.abs().max()):.3g}); standardise them, or use dtype='float64'."
            )
        if self.tied_groups:
            agop = tie_groups(agop, self.tied_groups)
        r = feature_matrix_update(agop, power=p.agop_power, normalize=p.normalize_m)
        self.sqrt_m = r.to(X_rows.dtype)
        if not bool(torch.isfinite(self.sqrt_m).all()):
            raise ValueError(
                f"The 'agop_power' parameter of {self.owner} is too large for this AGOP: AGOP^{p.agop_power:g} "
                f"overflows {str(X_rows.dtype).replace('torch.', '')} (largest entry {float(r.abs().max()):.3g})."
            )
        # the product Laplace kernel reads the coordinates of x R themselves (not only ||x R||): no compact factor
        self.factor = compact_factor(self.sqrt_m) if kernel_of(p).radial else self.sqrt_m

    def step(self, t, phase, agop_step) -> dict:
        """One solve (and, when ``agop_step``, the feature-matrix update after it); returns its history record."""
        t0 = time.perf_counter()
        plan = self.plans[phase]
        rows = self.sub if phase == "sub" else None
        X_rows = self.Xt if rows is None else self.Xt[rows]
        Y_rows = self.Yt if rows is None else self.Yt[rows]
        y_rows = self.y_tr if rows is None else self.y_tr[rows.cpu().numpy()]
        pts = Points.of(X_rows, self.factor)
        bandwidth = _kernel_bandwidth(self.p, pts, self.owner, self.warned)
        p = replace(self.p, bandwidth=bandwidth)  # the loop's parameters with this solve's bandwidth
        x0 = self._start(phase, plan, X_rows.shape[0])
        local = self._centres(phase, X_rows.shape[0], plan.n_centres) if plan.solver == "nystrom" else None
        centres = None if local is None else Points(pts.z[local], pts.z_sq[local])
        sol, train_score = self._solve(plan, phase, pts, Y_rows, y_rows, p, x0, centres)
        self.alpha = sol.x
        self.alpha_of = phase if local is None else ("centres", phase)
        if not bool(torch.isfinite(self.alpha).all()):
            raise ValueError(
                "The kernel ridge solve produced non-finite coefficients; the data may be badly scaled "
                "(try a larger bandwidth, a larger reg or dtype='float64')."
            )
        if local is not None:  # the model lives on its centres: predictions, the AGOP and the kept rows use them
            rows = local if rows is None else rows[local]
            X_rows, pts = X_rows[local], centres
        rec = {"iter": t, "n_rows": Y_rows.shape[0], "n_centres": None if local is None else len(local),
               "bandwidth": bandwidth, "solver": sol.method,
               "solver_reason": plan.reason,
               "solver_iters": sol.n_iter, "solver_converged": sol.converged, "solver_residual": sol.final_residual,
               "reg_used": sol.reg_used, "train_score": train_score, "val_score": None,
               "agop_rows": self.n_agop if agop_step else None}
        if self.Xv is not None:
            val_out = kernel_matmul(self.Xv, pts, self.alpha, kernel=kernel_of(p), sqrt_m=self.factor,
                                    memory_budget=self.work_budget)
            val_out = val_out.cpu().double().numpy()
            rec["val_score"] = self.score(val_out, self.y_va)
        key = rec["val_score"]
        if self.best is None or key is None or key > self.best[0]:
            self.best = (key, t, self.sqrt_m, self.factor, self.alpha, rows, bandwidth)
            self.best_val_out = None if key is None else val_out
        if agop_step:
            self._feature_step(X_rows, pts, p)
        rec["seconds"] = time.perf_counter() - t0
        self.history.append(rec)
        return rec


def _refit_plans(n, p, bandwidth, plan_args):
    """The parameters and the plan of a refit on all n rows."""
    rp = replace(p, bandwidth=bandwidth, iters=0, validation_fraction=None)
    return rp, _plan_phases({"all": n}, **{**plan_args, "n_train": n, "n_val": 0, "p": rp})


def _refit(X, y, Y, rp, plans, sqrt_m, factor, t, score, gen, device, dtype, owner) -> _Loop:
    """One solve on all n rows with a chosen M (its factor) and bandwidth (in ``rp``); the loop holds the result."""
    n = X.shape[0]
    loop = _Loop(rp, plans, finite_tensor(X, dtype, device), finite_tensor(Y, dtype, device, "y"), y, None, None,
                 None, score=score, gen=gen, work_budget=plans["all"].work_budget(), n_agop=min(rp.agop_sample_size, n),
                 owner=owner)
    loop.sqrt_m, loop.factor = sqrt_m, factor
    rec = loop.step(t, "all", False)
    rec["refit"] = f"the chosen iterate's M refit on all {n} training rows (validation rows included)"
    loop.K = None
    return loop


def run_rfm(X: np.ndarray, y, Y: np.ndarray, *, params: RFMParams, score: Callable[[np.ndarray, object], float],
            device: torch.device, dtype: torch.dtype, budget: int, generator: torch.Generator, owner: str,
            final_solve: bool = True, X_val: np.ndarray | None = None, y_val=None,
            tied_groups: list | None = None) -> RFMState:
    """Run the RFM loop on validated arrays.

    Parameters
    ----------
    X : (n, d) features; y : (n,) labels or targets (what ``score`` compares against); Y : (n, c) encoded targets.
    params : the loop's hyperparameters.
    score : ``score(outputs (m, c), y_true (m,)) -> float`` (R^2, accuracy, ...).
    device, dtype, budget, generator : where and in what precision, under how many bytes, with which random draws.
    owner : the estimator's name, for messages.
    final_solve : solve once more on all rows with the final M (False for a Deep RFM layer: the loop then ends with
        its last AGOP step, and ``last_sqrt_m`` holds the new data map).
    X_val, y_val : explicit validation data (instead of a held-out ``validation_fraction``).
    tied_groups : column groups (one-hot blocks of categorical columns) whose AGOP entries are averaged over the
        permutations of each group before every feature-matrix update (:func:`drfm._categorical.tie_groups`).

    Early stopping (``params.early_stopping``; 'auto': on from EARLY_STOPPING_MIN_N rows or with explicit validation
    data; never for a Deep RFM layer): every solve's model is scored on the validation data, iteration 0 (M = I)
    included; the loop stops after ``n_iter_no_change`` solves without a better score; the best one is kept, and when
    its validation rows were held out of the training rows (at least REFIT_MIN_SHARE of them), its M (and bandwidth)
    are refit on all of them.
    """
    p, gen = params, generator
    n, d = X.shape
    c = Y.shape[1]
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
    # feature-learning solves (those followed by an AGOP step) may run on a random subset of the training rows;
    # the final solve always uses all of them
    sub = None
    n_agop = min(p.agop_sample_size, n_tr)
    n_val = len(va) if va is not None else 0 if X_val is None else len(X_val)
    plan_args = dict(n_train=n_tr, n_val=n_val, n_agop=n_agop, d=d, c=c,
                     itemsize=torch.empty((), dtype=dtype).element_size(), p=p, dtype=dtype, device=device,
                     budget=budget, owner=owner)
    # the plan on all rows does not depend on the subset (planned once; 'auto' subsets are decided from it)
    plans = _plan_phases({"all": n_tr}, **plan_args)
    size = p.iter_sample_size
    if size == "auto":
        # M is learned on exactly solved rows (at most AUTO_ITER_SAMPLE_SIZE of them, all when fewer) when the model
        # on all rows is the m-centre one (an M learned from m-centre models was measurably worse, README);
        # otherwise every solve uses all rows
        size = None
        if p.iters > 0 and plans["all"].solver == "nystrom":
            size = min(AUTO_ITER_SAMPLE_SIZE, n_tr)
            if size == n_tr:
                sub = torch.arange(n_tr, device=device)
    if size is not None and size < n_tr and p.iters > 0:
        sub = torch.randperm(n_tr, generator=gen)[:size].sort().values.to(device)
    if sub is not None:
        plans.update(_plan_phases({"sub": len(sub)}, **plan_args))
    if X_val is not None:
        Xv, y_va = finite_tensor(X_val, dtype, device), y_val
    else:
        Xv, y_va = (None, None) if va is None else (finite_tensor(X[va], dtype, device), y[va])
    loop = _Loop(p, plans, finite_tensor(X[tr], dtype, device), finite_tensor(Y[tr], dtype, device, "y"), y[tr],
                 Xv, y_va, sub,
                 score=score, gen=gen, work_budget=min(plan.work_budget() for plan in plans.values()), n_agop=n_agop,
                 owner=owner)
    loop.tied_groups = tied_groups
    # no subset solve with the final M when the solve on all rows does not start from its coefficients
    shape = (p.iters, sub is not None, final_solve, plans["all"].solver in ("direct", "nystrom"))
    bar = tqdm(enumerate(_schedule(*shape)), total=_n_solves(*shape), desc=owner, disable=not p.verbose,
               unit="solve")
    for t, (phase, agop_step) in bar:
        rec = loop.step(t, phase, agop_step)
        bar.set_postfix(train=f"{rec['train_score']:.4f}", val="-" if rec["val_score"] is None
                        else f"{rec['val_score']:.4f}")
        logger.info("RFM iteration %d: %s", t, rec)
        if stopping and t - loop.best[1] >= p.n_iter_no_change:
            rec["early_stop"] = f"no better validation score in {p.n_iter_no_change} solves"
            logger.info("%s: early stop after solve %d (best: %d)", owner, t, loop.best[1])
            break
    bar.close()
    loop.K = None
    _, best_t, best_r, best_factor, best_alpha, best_rows, best_bandwidth = loop.best
    X_fit = loop.Xt if best_rows is None else loop.Xt[best_rows]
    history, last_r = loop.history, loop.sqrt_m
    val_outputs, val_labels = loop.best_val_out, loop.y_va
    solver = plans["all"].solver if final_solve or sub is None else plans["sub"].solver
    refit_plans = None
    if stopping and va is not None and len(va) >= REFIT_MIN_SHARE * n:
        rp, refit_plans = _refit_plans(n, p, best_bandwidth, plan_args)
        kept_solver = history[best_t]["solver"]
        if (refit_plans["all"].solver == "nystrom" and kept_solver != "nystrom"
                and history[best_t]["n_rows"] == len(tr)):
            # all n rows would only fit the m-centre model (an approximation): the exactly solved kept iterate on
            # the training rows is the better model (MNIST 60000: the m-centre refit scored 0.9701)
            history[best_t]["refit_skipped"] = (f"all {n} rows fit only the m-centre model; the exact "
                                                f"{kept_solver} solve on {len(tr)} rows is kept")
            logger.info("%s: refit skipped: %s", owner, history[best_t]["refit_skipped"])
            refit_plans = None
    if refit_plans is not None:
        # the kept iterate's M (and bandwidth) refit on every training row: the validation rows only chose it
        del loop, X_fit, best_alpha
        refit = _refit(X, y, Y, rp, refit_plans, best_r, best_factor, len(history), score, gen, device, dtype,
                       owner)
        history.append(refit.history[0])
        _, _, _, _, best_alpha, rows, _ = refit.best
        X_fit = refit.Xt if rows is None else refit.Xt[rows]
        solver = refit.plans["all"].solver
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
    )
