"""Recursive Feature Machines: scikit-learn estimators.

RFM alternates kernel ridge regression with the Mahalanobis Laplace kernel ``k_M(x, z) = exp(-||x - z||_M / L)``
and the feature-matrix update ``M <- AGOP(f)`` (closed form, batched; see :mod:`kernels.agop`)::

    M <- I
    repeat iters times:
        alpha <- (K_M + reg I)^{-1} Y
        A <- AGOP of f = K_M(., X) alpha ;  A <- A / max|A_ij|  (normalize_m)
        R <- A^{agop_power} ;  M <- R R          (agop_power = 0.5: M is the AGOP itself)
    alpha <- (K_M + reg I)^{-1} Y   with the final M

With ``validation_fraction`` the iterate with the best validation score is kept.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from kernels import (DenseKernelOperator, KernelOperator, NystromEigensystem, apply_sqrt_m, kernel_matmul,
                     laplace_agop, sq_norms)
from kernels.laplace import laplace_kernel_transformed
from kernels.solvers import default_n_centres, solve_cg, solve_direct, solve_eigenpro

from ._backend import format_bytes, make_generator, resolve_budget, resolve_device, resolve_dtype, to_tensor
from ._params import BOOL, RANDOM_STATE, DeviceString, Interval, NoneOK, Options, validate_params

__all__ = ["RFMRegressor", "RFMClassifier", "agop_power_factor"]

logger = logging.getLogger(__name__)


def agop_power_factor(agop: torch.Tensor, power: float) -> torch.Tensor:
    """``A^power`` of a symmetric PSD matrix (eigh in float64, negative eigenvalues clipped to 0), or of a diagonal.

    Returns a float64 tensor of ``agop``'s shape; ``agop`` may be (d, d) or a diagonal (d,).
    """
    a = agop.double()
    if a.dim() == 1:
        return a.clamp_min(0.0).pow(power)
    a = 0.5 * (a + a.T)
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0.0).pow(power)) @ v.T


#: eigen-directions of the data map R = M^{1/2} below this fraction of its largest eigenvalue are dropped from the
#: compact factor (their share of any squared distance is below 1e-6 relative, under float32 round-off)
COMPACT_RTOL = 1e-3


def compact_factor(sqrt_m: torch.Tensor | None, rtol: float = COMPACT_RTOL):
    """A (d, r) factor F with ``||x F|| = ||x R||`` up to the dropped directions, for a symmetric PSD (d, d) ``R``.

    ``R = V diag(w) V^T`` gives ``||x R|| = ||x V diag(w)||``; keeping the r directions with ``w > rtol * max(w)``
    turns every kernel GEMM from d into r columns. A learned M is typically of low rank (a handful of directions on
    the low-rank task), so this cuts the cost of kernel products. None and diagonal factors are returned as they are;
    so is R when nothing would be dropped.
    """
    if sqrt_m is None or sqrt_m.dim() == 1:
        return sqrt_m
    r = sqrt_m.double()
    w, v = torch.linalg.eigh(0.5 * (r + r.T))
    keep = w > rtol * w.abs().max()
    if bool(keep.all()) or not bool(keep.any()):
        return sqrt_m
    return (v[:, keep] * w[keep]).to(sqrt_m.dtype)


def validate_classification_data(estimator, X, y):
    """``validate_data`` for a classifier's fit, plus the classification-target check."""
    X, y = validate_data(estimator, X, y, dtype=[np.float64, np.float32])
    check_classification_targets(y)
    return X, y


def one_hot_classes(y, owner: str):
    """Sorted class labels and the (n, K) one-hot target matrix; at least two classes are required."""
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{owner} needs samples of at least 2 classes in the data, but the data contain only "
            f"one class: {classes[0].item()!r}."
        )
    Y = np.zeros((len(y), len(classes)))
    Y[np.arange(len(y)), idx] = 1.0
    return classes, Y


def direct_solve_bytes(n: int, d: int, c: int, itemsize: int) -> int:
    """Bytes the direct path holds: the n x n kernel matrix plus the transformed data, targets and solution."""
    return n * n * itemsize + 3 * n * (d + c) * itemsize


#: with solver="auto", the direct solver is used up to this many training points (when its n x n matrix fits the
#: budget). Above it, conjugate gradients on the stored kernel matrix (Nystrom-preconditioned, warm-started across RFM
#: iterations) is faster: measured on a 2-core CPU, RFM fits took the same time at n = 6000 and half the time at
#: n = 12800 (lowrank: 45 s direct vs 20 s; classif10 n = 16000: 109 s vs 59 s), at equal test scores.
AUTO_DIRECT_MAX_N = 8000

#: with solver="auto", ridges below this (relative to k(x, x) = 1) keep the direct solver whenever the matrix fits:
#: CG needs many more iterations as reg -> 0 (n = 12800 lowrank: reg 1e-4 still 37 s vs 45 s direct, reg = 0 94 s)
AUTO_CG_MIN_REG = 1e-4


def iterative_solve_bytes(n: int, d: int, c: int, itemsize: int, n_centres: int, rank: int = 500) -> int:
    """Bytes the iterative path holds besides kernel tiles: data (raw + transformed), ~8 n x c CG vectors (float64),
    the n x rank Nystrom basis, the s x s Nystrom eigenproblem (float64 matrix, eigenvectors and LAPACK workspace),
    and a minimal 256 x 256 tile."""
    return (2 * n * d + n * rank) * itemsize + 8 * n * c * 8 + 6 * n_centres**2 * 8 + 3 * 256 * 256 * itemsize


def choose_solver(requested: str, n: int, d: int, c: int, itemsize: int, budget: int, owner: str,
                  reg: float = 1e-3):
    """Pick the linear solver and say why; raise a ValueError saying what fits when nothing does."""
    direct = direct_solve_bytes(n, d, c, itemsize)
    iterative = iterative_solve_bytes(n, d, c, itemsize, default_n_centres(n))
    if requested == "direct":
        if direct > budget:
            per = 3 * (d + c) * itemsize
            n_max = int((-per + np.sqrt(per**2 + 4 * itemsize * budget)) / (2 * itemsize))
            raise ValueError(
                f"{owner} with solver='direct' needs {format_bytes(direct)} for the {n} x {n} kernel matrix, but "
                f"memory_budget is {format_bytes(budget)}; under this budget the direct solver fits at most {n_max} "
                "training samples. Use solver='cg' or 'eigenpro' (or 'auto'), or a larger memory_budget."
            )
        return "direct", "forced by solver='direct'"
    if requested == "auto" and direct <= budget:
        if n <= AUTO_DIRECT_MAX_N:
            return "direct", f"n={n} <= {AUTO_DIRECT_MAX_N} and the n x n matrix ({format_bytes(direct)}) fits the budget"
        if reg < AUTO_CG_MIN_REG:
            return "direct", (f"the n x n matrix ({format_bytes(direct)}) fits the budget and reg={reg:g} < "
                              f"{AUTO_CG_MIN_REG:g} (CG converges slowly as reg -> 0)")
    if iterative > budget:
        per_n = (2 * d + 500) * itemsize + 8 * c * 8
        raise ValueError(
            f"{owner} cannot fit {n} training samples under memory_budget={format_bytes(budget)}: even the "
            f"iterative solver needs {format_bytes(iterative)} (data, solver vectors, Nystrom basis); about "
            f"{max(0, int((budget - 6 * default_n_centres(n) ** 2 * 8) // per_n))} samples would fit. Pass a larger memory_budget."
        )
    if requested in ("cg", "eigenpro"):
        return requested, f"forced by solver={requested!r}"
    why = "the n x n matrix does not fit the budget" if direct > budget else f"n={n} > {AUTO_DIRECT_MAX_N}"
    return "cg", f"{why}: Nystrom-preconditioned CG, warm-started across iterations"


class _BaseRFM(BaseEstimator):
    _parameter_constraints = {
        "bandwidth": [Interval("float", 0, None, closed="neither")],
        "reg": [Interval("float", 0, None, closed="left")],
        "iters": [Interval("int", 0, None, closed="left")],
        "diag": [BOOL],
        "centering": [BOOL],
        "agop_power": [Interval("float", 0, None, closed="neither")],
        "normalize_m": [BOOL],
        "agop_sample_size": [Interval("int", 1, None, closed="left")],
        "iter_sample_size": [Interval("int", 1, None, closed="left"), NoneOK],
        "validation_fraction": [Interval("float", 0, 1, closed="neither"), NoneOK],
        "solver": [Options("auto", "direct", "cg", "eigenpro")],
        "solver_tol": [Interval("float", 0, 1, closed="neither")],
        "solver_max_iter": [Interval("int", 1, None, closed="left"), NoneOK],
        "device": [DeviceString()],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval("int", 1, None, closed="left"), NoneOK],
        "random_state": RANDOM_STATE,
        "verbose": [BOOL, Interval("int", 0, None, closed="left")],
    }

    def __init__(
        self,
        bandwidth=10.0,
        *,
        reg=1e-3,
        iters=5,
        diag=False,
        centering=False,
        agop_power=0.5,
        normalize_m=True,
        agop_sample_size=20000,
        iter_sample_size=None,
        validation_fraction=None,
        solver="auto",
        solver_tol=1e-4,
        solver_max_iter=None,
        device="auto",
        dtype="float32",
        memory_budget=None,
        random_state=None,
        verbose=False,
    ):
        self.bandwidth = bandwidth
        self.reg = reg
        self.iters = iters
        self.diag = diag
        self.centering = centering
        self.agop_power = agop_power
        self.normalize_m = normalize_m
        self.agop_sample_size = agop_sample_size
        self.iter_sample_size = iter_sample_size
        self.validation_fraction = validation_fraction
        self.solver = solver
        self.solver_tol = solver_tol
        self.solver_max_iter = solver_max_iter
        self.device = device
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    # ---- hooks for the subclasses -------------------------------------------------------------------------------
    def _encode_targets(self, y):  # -> (n, c) float array
        raise NotImplementedError

    def _score_outputs(self, outputs: np.ndarray, y_true) -> float:
        raise NotImplementedError

    # ---- fitting --------------------------------------------------------------------------------------------------
    def fit(self, X, y):
        """Fit the RFM: ``iters`` rounds of kernel ridge + AGOP, then a final kernel ridge fit.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,) or (n_samples, n_outputs); class labels for the classifier.

        Returns
        -------
        self
        """
        validate_params(self)
        X, y = self._validate_xy(X, y)
        return self._fit(X, y, self._encode_targets(y))

    def _fit(self, X, y, Y, *, final_solve=True):
        """The RFM loop on validated arrays (X, labels or targets y, encoded targets Y).

        With ``final_solve=False`` the loop stops after the last AGOP step without solving again (Deep RFM layers):
        the new feature matrix and its factor are then in ``next_M_`` / ``next_sqrt_m_``.
        """
        n, d = X.shape
        c = Y.shape[1]
        device = resolve_device(self.device, type(self).__name__)
        dtype = resolve_dtype(self.dtype)
        itemsize = torch.empty((), dtype=dtype).element_size()
        budget = resolve_budget(self.memory_budget, device)
        gen = make_generator(self.random_state)

        # validation split (before any heavy work)
        if self.validation_fraction is not None:
            n_val = int(round(self.validation_fraction * n))
            if n_val < 1 or n - n_val < 1:
                raise ValueError(
                    f"validation_fraction={self.validation_fraction} leaves {n_val} validation and {n - n_val} "
                    f"training samples out of n_samples={n}; both must be at least 1."
                )
            perm = torch.randperm(n, generator=gen).numpy()
            tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        else:
            tr, va = np.arange(n), None
        n_tr = len(tr)

        # feature-learning solves (those followed by an AGOP step) may run on a random subset of the training rows;
        # the final solve always uses all of them
        sub = None
        if self.iter_sample_size is not None and self.iter_sample_size < n_tr and self.iters > 0:
            sub = torch.randperm(n_tr, generator=gen)[: self.iter_sample_size].sort().values.to(device)

        def plan(n_rows):
            solver, reason = choose_solver(self.solver, n_rows, d, c, itemsize, budget, type(self).__name__,
                                           reg=float(self.reg))
            # what the solver holds for the whole phase comes off the top; kernel tiles and AGOP blocks share the rest
            dense = direct_solve_bytes(n_rows, d, c, itemsize)
            iterative = iterative_solve_bytes(n_rows, d, c, itemsize, default_n_centres(n_rows))
            store = solver != "direct" and dense + iterative <= budget
            if solver == "direct":
                held = dense
            elif store:
                held = dense + iterative
                reason += "; the n x n kernel matrix fits the budget and is stored (one GEMM per product)"
            else:
                held = iterative
                reason += "; kernel products recomputed in blocks (the n x n matrix does not fit the budget)"
            return solver, reason, max(budget - held, 3 * 256 * 256 * itemsize), store

        plans = {"all": plan(n_tr)}
        if sub is not None:
            plans["sub"] = plan(len(sub))
        for name, (solver, reason, _, _) in plans.items():
            logger.info("%s: solver %s for %s rows (%s)", type(self).__name__, solver, name, reason)
        work_budget = min(p[2] for p in plans.values())

        Xt = to_tensor(X[tr], dtype, device)
        Yt = to_tensor(Y[tr], dtype, device)
        Xv = to_tensor(X[va], dtype, device) if va is not None else None
        y_tr = y[tr]
        y_va = y[va] if va is not None else None

        K = None
        sqrt_m = factor = None  # R = M^{1/2} (d, d) and its compact (d, r) factor used for distances
        alpha = None
        best = None
        history = []
        # the solves: (rows, whether an AGOP step follows)
        n_solves = self.iters + 1 if final_solve else max(self.iters, 1)
        schedule = [("sub" if sub is not None and t < self.iters else "all", t < self.iters) for t in range(n_solves)]
        if sub is not None and final_solve and plans["all"][0] != "direct":
            # one more subset solve with the final M: its coefficients start the iterative solve on all rows
            schedule.insert(self.iters, ("sub", False))
        bar = tqdm(list(enumerate(schedule)), desc=type(self).__name__, disable=not self.verbose, unit="solve")
        for t, (phase, agop_step) in bar:
            t0 = time.perf_counter()
            rows = sub if phase == "sub" else None
            solver, reason, _, store = plans[phase]
            X_rows = Xt if rows is None else Xt[rows]
            Y_rows = Yt if rows is None else Yt[rows]
            y_rows = y_tr if rows is None else y_tr[rows.cpu().numpy()]
            n_rows = X_rows.shape[0]
            if alpha is not None and alpha.shape[0] != n_rows:
                # from the subset to all rows: the subset's coefficients (zero elsewhere) predict exactly as the
                # subset's kernel machine, a good start for the full system (a warm start worse than zero is dropped)
                full = torch.zeros((n_rows, c), dtype=dtype, device=device)
                full[sub] = alpha
                alpha = full
            Z = apply_sqrt_m(X_rows, factor)
            z_sq = sq_norms(Z)
            if solver == "direct" or store:
                # one n x n buffer, reused by every solve on the same rows (direct: factorised in place; stored CG)
                if K is None or K.shape[0] != n_rows:
                    K = None
                    K = torch.empty((n_rows, n_rows), dtype=dtype, device=device)
            if solver == "direct":

                def build(out, Z=Z, z_sq=z_sq):
                    laplace_kernel_transformed(Z, Z, bandwidth=self.bandwidth, x_sq=z_sq, z_sq=z_sq, out=out)

                build(K)
                sol = solve_direct(K, Y_rows, reg=float(self.reg), overwrite_k=True, rebuild=build)
                # K alpha = Y - reg_used * alpha: training outputs come for free
                train_out = (Y_rows - sol.reg_used * sol.x).cpu().double().numpy()
                train_y = y_rows
            else:
                if store:
                    op = DenseKernelOperator(Z, bandwidth=self.bandwidth, memory_budget=work_budget,
                                             transformed=True, out=K)
                else:
                    K = None  # a stored matrix of another phase is not needed any more
                    op = KernelOperator(Z, bandwidth=self.bandwidth, memory_budget=work_budget, transformed=True)
                pre = NystromEigensystem(op, generator=gen, build_extension=solver == "cg")
                # with a subset, the cap is the time budget of the solve on all rows; the subset solves, which
                # drive M, run to solver_tol (a capped subset solve measurably degraded M at n = 50000)
                cap = None if phase == "sub" else self.solver_max_iter
                if solver == "cg":
                    sol = solve_cg(op, Y_rows, reg=float(self.reg), x0=alpha, preconditioner=pre,
                                   rtol=self.solver_tol, max_iter=cap,
                                   verbose=bool(self.verbose) and self.verbose > 1)
                else:
                    sol = solve_eigenpro(op, Y_rows, reg=float(self.reg), x0=alpha, preconditioner=pre,
                                         epochs=cap or 10, rtol=self.solver_tol, generator=gen,
                                         verbose=bool(self.verbose) and self.verbose > 1)
                # iterative solvers: training score estimated on a fixed random subset (an exact one costs a pass)
                score_idx = torch.randperm(n_rows, generator=gen)[: min(n_rows, 2000)].sort().values.to(device)
                train_out = kernel_matmul(Z[score_idx], Z, sol.x, bandwidth=self.bandwidth,
                                          memory_budget=work_budget, z_transformed=True,
                                          z_sq=z_sq).cpu().double().numpy()
                train_y = y_rows[score_idx.cpu().numpy()]
                del op, pre  # release the Nystrom basis before the AGOP and the next iteration allocate
            alpha = sol.x
            if not bool(torch.isfinite(alpha).all()):
                raise ValueError(
                    "The kernel ridge solve produced non-finite coefficients; the data may be badly scaled "
                    "(try a larger bandwidth, a larger reg or dtype='float64')."
                )
            rec = {
                "iter": t,
                "n_rows": n_rows,
                "solver": sol.method,
                "solver_reason": reason,
                "solver_iters": sol.n_iter,
                "solver_converged": sol.converged,
                "solver_residual": sol.info.get("returned_relative_residual",
                                                sol.residual_norms[-1] if sol.residual_norms else None),
                "reg_used": sol.reg_used,
                "train_score": self._score_outputs(train_out, train_y),
                "val_score": None,
            }
            if Xv is not None:
                val_out = kernel_matmul(
                    apply_sqrt_m(Xv, factor), Z, alpha, bandwidth=self.bandwidth, memory_budget=work_budget,
                    z_transformed=True, z_sq=z_sq,
                )
                rec["val_score"] = self._score_outputs(val_out.cpu().double().numpy(), y_va)
            key = rec["val_score"] if Xv is not None else None
            if best is None or (key is not None and key > best[0]) or (key is None):
                best = (key, t, sqrt_m, alpha, rows)
            if agop_step:
                # the AGOP of the predictor (centres: the solve's rows) over a sample of all training rows
                s_agop = min(self.agop_sample_size, n_tr)
                idx = torch.randperm(n_tr, generator=gen)[:s_agop].to(device) if s_agop < n_tr else slice(None)
                agop = laplace_agop(
                    Xt[idx], X_rows, alpha, bandwidth=self.bandwidth, sqrt_m=factor, diag=self.diag,
                    centering=self.centering, memory_budget=work_budget,
                )
                if self.normalize_m:
                    top = float(agop.abs().max())
                    if top > 0:
                        agop = agop / top
                sqrt_m = agop_power_factor(agop, self.agop_power).to(dtype)
                factor = compact_factor(sqrt_m)
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            bar.set_postfix(train=f"{rec['train_score']:.4f}", val="-" if key is None else f"{key:.4f}")
            logger.info("RFM iteration %d: %s", t, rec)
        del K
        self.solver_ = plans["all"][0] if final_solve or sub is None else plans["sub"][0]
        if not final_solve:
            r_next = np.eye(d) if sqrt_m is None else sqrt_m.double().cpu().numpy()
            self.next_sqrt_m_ = r_next
            self.next_M_ = r_next * r_next if r_next.ndim == 1 else r_next @ r_next.T

        _, best_t, best_r, best_alpha, best_rows = best
        self.best_iter_ = best_t
        self.history_ = history
        self.device_ = str(device)
        self.n_iter_ = len(history)
        if best_r is None:
            r64 = np.ones(d) if self.diag else np.eye(d)
        else:
            r64 = best_r.double().cpu().numpy()
        self.sqrt_m_ = r64
        self.M_ = r64 * r64 if r64.ndim == 1 else r64 @ r64.T
        self.dual_coef_ = best_alpha.cpu().numpy()
        self.X_fit_ = (Xt if best_rows is None else Xt[best_rows]).cpu().numpy()
        # the rows of X the feature-learning solves used (None: all training rows)
        self.iter_rows_ = None if sub is None else tr[sub.cpu().numpy()]
        return self

    def _validate_xy(self, X, y):
        raise NotImplementedError

    # ---- prediction -----------------------------------------------------------------------------------------------
    def _tensors(self):
        """Fitted arrays as tensors on the fitted device (CPU when that device is absent here).

        Rebuilt per call (one n x d GEMM): predict must not change the estimator's ``__dict__``.
        """
        device = torch.device(self.device_)
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        dtype = resolve_dtype(self.dtype)
        xf = to_tensor(self.X_fit_, dtype, device)
        # the same compact factor as in fit (eigh of the same float64 values)
        r = compact_factor(to_tensor(self.sqrt_m_, torch.float64, device)).to(dtype)
        z = apply_sqrt_m(xf, r)
        return {"device": device, "dtype": dtype, "r": r, "z": z, "z_sq": sq_norms(z),
                "alpha": to_tensor(self.dual_coef_, dtype, device), "x": xf}

    def _raw_predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        tc = self._tensors()
        xt = to_tensor(X, tc["dtype"], tc["device"])
        out = kernel_matmul(
            apply_sqrt_m(xt, tc["r"]), tc["z"], tc["alpha"], bandwidth=self.bandwidth,
            memory_budget=resolve_budget(self.memory_budget, tc["device"]), z_transformed=True, z_sq=tc["z_sq"],
        )
        return out.cpu().double().numpy()

    def agop(self, X=None, *, diag=None, centering=None) -> np.ndarray:
        """AGOP of the fitted predictor, averaged over ``X`` (default: up to ``agop_sample_size`` training points).

        Unlike ``M_`` this is not normalised or raised to ``agop_power``: it is the raw average gradient outer
        product ``(1/n) sum_x J_f(x)^T J_f(x)`` of the final model. Returns (d, d), or (d,) when ``diag``.
        """
        check_is_fitted(self)
        tc = self._tensors()
        if X is None:
            xs = tc["x"][: self.agop_sample_size]
        else:
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
            xs = to_tensor(X, tc["dtype"], tc["device"])
        a = laplace_agop(
            xs, tc["x"], tc["alpha"], bandwidth=self.bandwidth, sqrt_m=tc["r"],
            diag=self.diag if diag is None else diag, centering=self.centering if centering is None else centering,
            memory_budget=resolve_budget(self.memory_budget, tc["device"]),
        )
        return a.cpu().numpy()

    @property
    def feature_importances_(self) -> np.ndarray:
        """Per-feature importances: the diagonal of the learned feature matrix ``M_``, normalised to sum to 1."""
        check_is_fitted(self)
        dg = np.asarray(self.M_ if self.M_.ndim == 1 else np.diag(self.M_), dtype=np.float64)
        total = dg.sum()
        return dg / total if total > 0 else dg

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class RFMRegressor(RegressorMixin, _BaseRFM):
    """Recursive Feature Machine regressor (Laplace kernel ridge + AGOP feature learning).

    Parameters
    ----------
    bandwidth : float, default=10.0
        Laplace kernel bandwidth L in ``exp(-||x - z||_M / L)``.
    reg : float, default=1e-3
        Ridge added to the kernel diagonal (``0`` interpolates).
    iters : int, default=5
        Number of AGOP updates of M (``0``: plain Laplace kernel ridge).
    diag : bool, default=False
        Learn only a diagonal M (per-feature scales).
    centering : bool, default=False
        Centre gradients before the outer product (gradient covariance).
    agop_power : float, default=0.5
        The data transform is ``AGOP^agop_power``; the effective Mahalanobis matrix is ``AGOP^(2*agop_power)``.
    normalize_m : bool, default=True
        Divide the AGOP by its largest absolute entry before taking the power.
    agop_sample_size : int, default=20000
        AGOP averaged over at most this many random training points.
    iter_sample_size : int or None, default=None
        Run the feature-learning solves (the ``iters`` kernel fits whose only use is the AGOP) on a random subset of
        this many training points; the final kernel machine is still fit on all of them with the learned M. None uses
        every point in every solve (the exact algorithm). For n whose n x n kernel matrix does not fit the memory
        budget (~50000 points in float32 on a 24 GB machine), e.g. 12800 to 20000 makes each feature-learning step a
        fast solve on a stored matrix and leaves one iterative solve on all n.
    validation_fraction : float in (0, 1) or None, default=None
        Hold out this fraction and keep the iterate with the best validation score.
    solver : {'auto', 'direct', 'cg', 'eigenpro'}, default='auto'
        Linear solver for the kernel ridge system. 'auto': direct (Cholesky) for n <= 8000, or for any n whose
        n x n matrix fits the memory budget when ``reg < 1e-4``; otherwise Nystrom-preconditioned CG, warm-started
        across iterations, on the stored kernel matrix while it fits the budget (one GEMM per CG step) and on
        blocked products beyond. With ``iter_sample_size`` chosen separately for the subset and the full solve.
    solver_tol : float, default=1e-4
        Relative residual ``||(K + reg I) alpha - Y|| / ||Y||`` (per output) at which CG stops; EigenPro's stopping
        tolerance.
    solver_max_iter : int or None, default=None
        Cap on CG iterations (default ``max(100, n // 10)``) or EigenPro epochs (default 10) of each solve; with
        ``iter_sample_size``, of the final solve on all rows only (the subset solves, which learn M, run to
        ``solver_tol``).
    device : str, default='auto'
        'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'.
    dtype : {'float32', 'float64'}, default='float32'
    memory_budget : int or None, default=None
        Bytes the fit may use for kernel blocks; default: 60% of the memory available at fit time.
    random_state : int, RandomState or None
        Seeds a local torch.Generator (AGOP subsets, validation split); global RNGs are never touched.
    verbose : bool, default=False
        Progress bar over iterations.

    Attributes
    ----------
    M_ : (d, d) or (d,) ndarray, learned feature matrix of the kept iterate.
    sqrt_m_ : ndarray, its factor R (``M_ = R R``) used to transform the data.
    dual_coef_ : (n_fit, n_outputs) ndarray.
    X_fit_ : (n_fit, d) ndarray, the training points (kernel centres).
    history_ : list of dict, per iteration: train/validation score, seconds, solver.
    best_iter_ : int, index in ``history_`` of the kept iterate.
    iter_rows_ : indices (into the X given to fit) of the rows the feature-learning solves used with
        ``iter_sample_size``; None when every solve used all training rows.
    n_features_in_, device_ : as in scikit-learn; the resolved device.
    """

    def _validate_xy(self, X, y):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        return X, y

    def _encode_targets(self, y):
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        return y.reshape(len(y), -1)

    def _score_outputs(self, outputs, y_true):
        return float(r2_score(np.asarray(y_true, dtype=np.float64).reshape(outputs.shape), outputs))

    def predict(self, X):
        """Predicted targets, (n,) or (n, n_outputs) like the ``y`` given to fit."""
        out = self._raw_predict(X)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class RFMClassifier(ClassifierMixin, _BaseRFM):
    """Recursive Feature Machine classifier: RFM regression on one-hot targets, argmax decision.

    Parameters are those of :class:`RFMRegressor`. Labels may be of any type (ints, strings, ...).
    ``decision_function`` returns the per-class outputs (for two classes: output[1] - output[0]).

    Attributes
    ----------
    classes_ : ndarray of the class labels; plus every attribute of :class:`RFMRegressor`.
    """

    def _validate_xy(self, X, y):
        return validate_classification_data(self, X, y)

    def _encode_targets(self, y):
        self.classes_, Y = one_hot_classes(y, type(self).__name__)
        return Y

    def _score_outputs(self, outputs, y_true):
        return float(accuracy_score(y_true, self.classes_[np.argmax(outputs, axis=1)]))

    def decision_function(self, X):
        """Kernel machine outputs: (n, n_classes), or (n,) = score of classes_[1] minus classes_[0] for 2 classes."""
        out = self._raw_predict(X)
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def predict(self, X):
        """Predicted class labels."""
        out = self._raw_predict(X)
        return self.classes_[np.argmax(out, axis=1)]
