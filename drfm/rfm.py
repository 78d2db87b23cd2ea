"""Recursive Feature Machines: scikit-learn estimators.

RFM alternates kernel ridge regression with the Mahalanobis Laplace kernel ``k_M(x, z) = exp(-||x - z||_M / L)``
and the feature-matrix update ``M <- AGOP(f)`` (closed form, batched; see :mod:`kernels.agop`)::

    M <- I
    repeat iters times:
        alpha <- (K_M + reg I)^{-1} Y
        A <- AGOP of f = K_M(., X) alpha ;  A <- A / max|A_ij|  (normalize_m)
        R <- A^{agop_power} ;  M <- R R          (agop_power = 0.5: M is the AGOP itself)
    alpha <- (K_M + reg I)^{-1} Y   with the final M

With ``validation_fraction`` the iterate with the best validation score is kept. The loop itself is
:func:`drfm.engine.run_rfm` (one loop for one process or many ranks); the estimators validate, run it and keep its
result as fitted attributes.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from kernels.family import KERNELS, Kernel
from kernels.solvers.plan import SOLVERS

from ._backend import finite_tensor, resolve_budget, resolve_dtype, to_tensor
from .engine import KernelMachine, RFMParams, run_rfm, runtime_for
from .engine.agree import (agree_data, agree_encoding, agree_parameters, on_every_rank, one_hot_agreed,
                           column_spread_agreed, standardization_agreed)
from .engine.runtime import DEFAULT_TIMEOUT_S, open_comm
from ._targets import DEFAULT_TEMPERATURE, fit_temperature, softmax_proba
from ._categorical import CategoricalEncoding, fit_encoding
from ._threads import with_threads

from ._params import BOOL, RANDOM_STATE, DeviceString, InstanceOf, Interval, NoneOK, Options, validate_params
from ._targets import (DTYPES, accuracy_of_outputs, decision_values, encode_regression_targets, one_hot_of,
                       predict_labels, r2_of_outputs, regression_output, validate_classification_data,
                       validate_regression_data)

__all__ = ["RFMRegressor", "RFMClassifier"]

#: standardize='auto' standardises when the largest column standard deviation is more than this many times the
#: median one (columns that vary; one-hot columns included). Measured (`bench tabular` and the image sets): all 24
#: public tables but two pre-scaled ones lie at 5.2 .. 2e5 (standardising lifted 18 of the 20 measured, one by
#: 2.1 R^2; tied one, cost 0.015 on one), MNIST 2.1, Fashion-MNIST 1.3, digits 1.5, make_classification 4.1, Gaussian
#: data 1.0-1.2 (standardising MNIST cost 1.2-1.8 points of accuracy)
STANDARDIZE_SPREAD = 5.0


class _BaseRFM(BaseEstimator):
    _parameter_constraints = {
        "bandwidth": [Interval("float", 0, None, closed="neither"), Options("median", "auto")],
        "kernel": [Options(*KERNELS)],
        "exponent": [Interval("float", 0, 2, closed="right")],
        "reg": [Interval("float", 0, None, closed="left"), Options("auto")],
        "iters": [Interval("int", 0, None, closed="left")],
        "diag": [BOOL],
        "centering": [BOOL],
        "agop_power": [Interval("float", 0, None, closed="neither")],
        "normalize_m": [BOOL],
        "agop_sample_size": [Interval("int", 1, None, closed="left")],
        "iter_sample_size": [Interval("int", 1, None, closed="left"), Options("auto"), NoneOK],
        "validation_fraction": [Interval("float", 0, 1, closed="neither"), NoneOK],
        "early_stopping": [BOOL, Options("auto")],
        "n_iter_no_change": [Interval("int", 1, None, closed="left")],
        "solver": [Options(*SOLVERS)],
        "solver_tol": [Interval("float", 0, 1, closed="neither")],
        "solver_max_iter": [Interval("int", 1, None, closed="left"), NoneOK],
        "n_centres": [Interval("int", 1, None, closed="left"), NoneOK],
        "device": [DeviceString()],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval("int", 1, None, closed="left"), NoneOK],
        "n_threads": [Interval("int", 1, None, closed="left"), Options("auto"), NoneOK],
        "distributed": [BOOL],
        "distributed_timeout": [Interval("float", 0, None, closed="neither")],
        "standardize": [BOOL, Options("auto")],
        "categorical_features": [Options("from_dtype"), InstanceOf(list, tuple, np.ndarray, name="a list of column "
                                 "names / indices or a boolean mask"), NoneOK],
        "random_state": RANDOM_STATE,
        "verbose": [BOOL, Interval("int", 0, None, closed="left")],
    }

    def __init__(
        self,
        bandwidth=10.0,
        *,
        kernel="laplace",
        exponent=1.0,
        reg="auto",
        iters=5,
        diag=False,
        centering=False,
        agop_power=0.5,
        normalize_m=True,
        agop_sample_size=20000,
        iter_sample_size="auto",
        validation_fraction=None,
        early_stopping="auto",
        n_iter_no_change=2,
        solver="auto",
        solver_tol=1e-4,
        solver_max_iter=None,
        n_centres=None,
        device="auto",
        dtype="float32",
        memory_budget=None,
        n_threads="auto",
        categorical_features="from_dtype",
        standardize="auto",
        distributed=False,
        distributed_timeout=DEFAULT_TIMEOUT_S,
        random_state=None,
        verbose=False,
    ):
        self.bandwidth = bandwidth
        self.kernel = kernel
        self.exponent = exponent
        self.reg = reg
        self.iters = iters
        self.diag = diag
        self.centering = centering
        self.agop_power = agop_power
        self.normalize_m = normalize_m
        self.agop_sample_size = agop_sample_size
        self.iter_sample_size = iter_sample_size
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.solver = solver
        self.solver_tol = solver_tol
        self.solver_max_iter = solver_max_iter
        self.n_centres = n_centres
        self.device = device
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.n_threads = n_threads
        self.categorical_features = categorical_features
        self.standardize = standardize
        self.distributed = distributed
        self.distributed_timeout = distributed_timeout
        self.random_state = random_state
        self.verbose = verbose

    # ---- hooks for the subclasses: validated (X, y) -> encoded targets, and the score of outputs ----------------
    def _validate_xy(self, X, y, ensure_min_samples=1):
        raise NotImplementedError

    def _encode_targets(self, y, comm) -> np.ndarray:  # -> (n, c) float array (classes agreed over the ranks)
        raise NotImplementedError

    def _scorer(self):  # -> score(outputs, y_true) -> float
        raise NotImplementedError

    def _encode_val(self, y_val) -> np.ndarray:  # -> (n_val, c) encoded like the training targets
        y_val = np.asarray(y_val, dtype=np.float64)
        return y_val.reshape(len(y_val), -1)

    def _validate_val(self, X_val, y_val):
        """Validation data checked like the training data (same features; for a classifier, known labels)."""
        X_val = self._input(X_val)
        y_val = np.asarray(y_val)
        if y_val.shape[0] != X_val.shape[0]:
            raise ValueError(f"X_val has {X_val.shape[0]} rows but y_val has {y_val.shape[0]}.")
        return X_val, y_val

    # ---- fitting --------------------------------------------------------------------------------------------------
    @with_threads
    def fit(self, X, y, X_val=None, y_val=None):
        """Fit the RFM: ``iters`` rounds of kernel ridge + AGOP, then a final kernel ridge fit.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,) or (n_samples, n_outputs); class labels for the classifier.
        X_val, y_val : optional validation data (both or neither). Every iterate is scored on it and the best one
            is kept (early stopping, unless ``early_stopping=False``); the training rows are not split then.

        Returns
        -------
        self
        """
        validate_params(self)
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be given together (validation data), or neither.")
        owner = type(self).__name__
        comm = open_comm(self, owner)  # one process, or the ranks of a torch.distributed group (drfm.engine)
        agree_parameters(comm, self, owner)
        # every rank checks its rows and the ranks agree on the outcome (and the categories) before any heavy work
        enc = on_every_rank(comm, owner, lambda: fit_encoding(X, self.categorical_features, owner))
        enc = agree_encoding(comm, enc, owner)
        names = np.asarray(X.columns, dtype=object) if enc is not None and hasattr(X, "columns") else None
        min_rows = 0 if comm.world_size > 1 else 1
        X, y = on_every_rank(comm, owner, lambda: self._validate_xy(
            X if enc is None else enc.transform(X, owner), y, ensure_min_samples=min_rows))
        agree_data(comm, owner, X, y, resolve_dtype(self.dtype), X_val is not None, isinstance(self, ClassifierMixin))
        # the input's columns (before one-hot encoding) and the categorical ones with their categories
        self.categorical_ = None if enc is None else enc.state
        if enc is not None:
            self.n_features_in_ = enc.n_columns
            if names is not None and all(isinstance(c, str) for c in names):
                self.feature_names_in_ = names
        # the numeric columns standardised with every rank's training rows (one-hot blocks as they are)
        numeric = np.ones(X.shape[1], dtype=bool)
        for block in ([] if enc is None else [g for j, g in enumerate(enc.groups) if j in enc.cats]):
            numeric[block] = False
        self.x_mean_, self.x_scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])
        # 'auto': standardise when the columns' spreads differ (a table), not when they share a scale (pixels)
        self.column_spread_ = column_spread_agreed(comm, X) if self.standardize == "auto" else None
        self.standardized_ = bool(self.standardize is True or (
            self.column_spread_ is not None and self.column_spread_ > STANDARDIZE_SPREAD))
        mean, scale = standardization_agreed(comm, X[:, numeric], self.standardized_)
        self.x_mean_[numeric], self.x_scale_[numeric] = mean, scale
        X = self._standardized(X)
        Y = self._encode_targets(y, comm)
        if X_val is not None:
            X_val, y_val = on_every_rank(comm, owner, lambda: self._validate_val(X_val, y_val))
        rt = runtime_for(self, owner, comm)
        state = run_rfm(X, y, Y, params=RFMParams.of(self), score=self._scorer(), runtime=rt, X_val=X_val, y_val=y_val,
                        Y_val=None if X_val is None else self._encode_val(y_val),
                        tied_groups=None if enc is None else enc.tied)
        device = rt.device
        d = X.shape[1]
        r64 = state.sqrt_m if state.sqrt_m is not None else (np.ones(d) if self.diag else np.eye(d))
        self.sqrt_m_ = r64
        self.M_ = r64 * r64 if r64.ndim == 1 else r64 @ r64.T
        # the compact factor the kernel is evaluated with (None: M = I); predict and agop reuse it
        self.factor_ = None if state.factor is None else state.factor.cpu().numpy()
        self.bandwidth_ = float(state.bandwidth)
        self.reg_ = float(state.reg)
        self.dual_coef_ = state.alpha.cpu().numpy()
        self.X_fit_ = state.X_fit.cpu().numpy()
        self.best_iter_ = state.best_iter
        self.history_ = state.history
        self.n_iter_ = len(state.history)
        self.solver_ = state.solver
        self.device_ = str(device)
        # the rows of X the feature-learning solves used (None: all training rows)
        self.iter_rows_ = state.iter_rows
        self._fitted_outputs(state)
        return self

    def _fitted_outputs(self, state):
        """A subclass hook: what to keep of the kept iterate's validation outputs (nothing for a regressor)."""

    # ---- prediction -----------------------------------------------------------------------------------------------
    def _fitted_kernel(self) -> Kernel:
        # models saved before bandwidth_ existed (format 1 files) used the bandwidth parameter as it was
        return Kernel(self.kernel, getattr(self, "bandwidth_", self.bandwidth), self.exponent)

    def _machine(self):
        """The fitted kernel machine on the fitted device (CPU when that device is absent here), and that device.

        Rebuilt per call (one n x r GEMM with the stored compact factor, no eigendecomposition): predict must not
        change the estimator's ``__dict__``.
        """
        device = torch.device(self.device_)
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        dtype = resolve_dtype(self.dtype)
        r = None if self.factor_ is None else to_tensor(self.factor_, dtype, device)
        machine = KernelMachine.fitted(to_tensor(self.X_fit_, dtype, device), to_tensor(self.dual_coef_, dtype, device),
                                       self._fitted_kernel(), r)
        return machine, device

    def _encoding(self) -> CategoricalEncoding | None:
        state = getattr(self, "categorical_", None)
        return None if state is None else CategoricalEncoding(state, self.n_features_in_)

    def _standardized(self, X: np.ndarray) -> np.ndarray:
        """``X`` with the training standardisation (a model saved before ``standardize`` existed: as it is)."""
        mean = getattr(self, "x_mean_", None)
        if mean is None or not getattr(self, "standardized_", self.standardize is True):
            return X
        return (X - mean) / self.x_scale_

    def _input(self, X) -> np.ndarray:
        """Prediction-time input: validated like the training input (categorical columns one-hot encoded, numeric
        ones standardised)."""
        enc = self._encoding()
        if enc is None:
            # a distributed model may be asked for the predictions of a rank without test rows
            return self._standardized(validate_data(self, X, reset=False, dtype=DTYPES,
                                                    ensure_min_samples=0 if getattr(self, "distributed", False) else 1))
        names = getattr(self, "feature_names_in_", None)
        if names is not None and hasattr(X, "columns") and list(X.columns) != list(names):
            raise ValueError(f"The feature names should match those that were passed during fit: got "
                             f"{list(X.columns)}, expected {list(names)}.")
        return self._standardized(check_array(enc.transform(X, type(self).__name__), dtype=DTYPES))

    @with_threads
    def _raw_predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = self._input(X)
        machine, device = self._machine()
        out = machine.outputs(finite_tensor(X, machine.alpha.dtype, device),
                              memory_budget=resolve_budget(self.memory_budget, device), accumulate=torch.float64)
        return out.cpu().double().numpy()

    @with_threads
    def agop(self, X=None, *, diag=None, centering=None) -> np.ndarray:
        """AGOP of the fitted predictor, averaged over ``X`` (default: up to ``agop_sample_size`` training points).

        Unlike ``M_`` this is not normalised or raised to ``agop_power``: it is the raw average gradient outer
        product ``(1/n) sum_x J_f(x)^T J_f(x)`` of the final model. Returns (d, d), or (d,) when ``diag``.
        """
        check_is_fitted(self)
        machine, device = self._machine()
        if X is None:
            xs = machine.x[: self.agop_sample_size]
        else:
            xs = finite_tensor(self._input(X), machine.alpha.dtype, device)
        a = machine.agop(xs, diag=self.diag if diag is None else diag,
                         centering=self.centering if centering is None else centering,
                         memory_budget=resolve_budget(self.memory_budget, device))
        return a.cpu().numpy()

    @property
    def feature_importances_(self) -> np.ndarray:
        """Per-feature importances: the diagonal of the learned feature matrix ``M_``, normalised to sum to 1 (one
        entry per input column: a categorical column's one-hot block counts once, the sum of its entries)."""
        check_is_fitted(self)
        dg = np.asarray(self.M_ if self.M_.ndim == 1 else np.diag(self.M_), dtype=np.float64)
        enc = self._encoding()
        if enc is not None:
            dg = np.array([dg[g].sum() for g in enc.groups])
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
    bandwidth : float, 'median' or 'auto', default=10.0
        Kernel bandwidth L, e.g. in the Laplace kernel ``exp(-||x - z||_M / L)``; ``'median'``: the kernel's distance
        unit at the median pairwise distance between training points in the current metric (L = median; L = median^p
        for ``laplace_exp``), measured again at every solve (scale-free: multiplying the features by a constant
        changes nothing); ``'auto'``: at twice that distance (the best multiple of 0.5 / 1 / 2 / 4 on MNIST and the
        low-rank task with the Laplace kernel, README). A fixed bandwidth that makes the kernel matrix nearly the
        identity or nearly constant gives a ``KernelScaleWarning``.
    kernel : {'laplace', 'gaussian', 'laplace_exp', 'product_laplace'}, default='laplace'
        ``'laplace'``: ``exp(-||x - z||_M / L)``; ``'gaussian'``: ``exp(-||x - z||_M^2 / (2 L^2))``;
        ``'laplace_exp'``: ``exp(-||x - z||_M^p / L)`` with p = ``exponent``; ``'product_laplace'``:
        ``exp(-sum_i |(x R)_i - (z R)_i| / L)`` with R = ``sqrt_m_`` (an L1 distance: no GEMM, several times the cost
        of the others; M is then used through R itself, never a compact factor). Each has its closed-form AGOP
        (:mod:`kernels.family`).
    exponent : float in (0, 2], default=1.0
        p of ``kernel='laplace_exp'`` (ignored by the other kernels).
    reg : float or 'auto', default='auto'
        Ridge added to the kernel diagonal (``0`` interpolates). 'auto': chosen from the data at every solve on a
        grid from 1e-6 to 100 (half decades) by an exact path: the leave-one-out error from one eigendecomposition
        of K (direct solves of up to 3000 rows), the m-centre model's generalised eigenproblem (up to 4000 centres;
        scored on the validation rows, or by GCV without them), else one solve per value scored on the validation
        rows (walked from the last choice; the first walk from the leave-one-out choice on 1000 rows), else the leave-one-out path on 3000 random rows. The criterion is the
        mean squared error of the encoded targets (one-hot for a classifier). ``reg_`` and ``history_`` (``reg``,
        ``reg_criterion``, ``reg_path``) say what was chosen and why; the refit after early stopping keeps the kept
        solve's value.
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
    iter_sample_size : int, 'auto' or None, default='auto'
        Run the feature-learning solves (the ``iters`` kernel fits whose only use is the AGOP) on a random subset of
        this many training points; the final kernel machine is still fit on all of them with the learned M. None uses
        every point in every solve (the exact algorithm). 'auto': None, except when the solve on all rows is the
        m-centre model (``solver='nystrom'``, or 'auto' beyond the stored matrix): then M is learned on 16000 random
        rows solved exactly (an M learned from m-centre models was measurably worse: test R^2 0.950 against 0.998 at
        n = 20000, m = 2000). For n whose n x n kernel matrix does not fit the memory budget (~50000 points in
        float32 on a 24 GB machine), e.g. 12800 to 20000 makes each feature-learning step a fast solve on a stored
        matrix and leaves one solve on all n.
    validation_fraction : float in (0, 1) or None, default=None
        Hold out this fraction and keep the iterate with the best validation score. With early stopping, None means
        0.1 (at most 10000 rows).
    early_stopping : 'auto', bool, default='auto'
        Keep the best iterate by default, in scikit-learn's idiom (as ``HistGradientBoostingClassifier``): score
        every solve's model on validation data (a held-out ``validation_fraction``, or ``X_val``/``y_val`` given to
        ``fit``), iteration 0 (plain kernel ridge, no feature learning) included; stop after ``n_iter_no_change``
        solves without a better score; keep the best. When the validation rows were held out of the training rows,
        the kept iterate's M and bandwidth are refit on all training rows (one more solve: the validation rows only
        chose the iterate, and the final machine should use every row; ``history_`` marks it ``refit``) -- unless
        they are under 5% of the rows (n > 200 000 with the default split), where that solve would cost as much as
        the fit for little gain. 'auto': on
        from 2000 training rows, or when validation data are given. Feature learning can hurt (smooth targets with
        many relevant directions): with early stopping the fit returns plain kernel ridge then.
    n_iter_no_change : int, default=2
        Solves without a better validation score before early stopping stops.
    solver : {'auto', 'direct', 'cg', 'eigenpro', 'nystrom'}, default='auto'
        Linear solver for the kernel ridge system. 'auto': direct (Cholesky) for n <= 8000, or for any n whose
        n x n matrix fits the memory budget when ``reg < 1e-4``; otherwise Nystrom-preconditioned CG, warm-started
        across iterations, on the stored kernel matrix while it fits the budget (one GEMM per CG step); beyond
        that, the m-centre model ('nystrom'). 'cg' / 'eigenpro' beyond the stored matrix solve the exact system on
        blocked products (n^2 kernel entries per step). 'nystrom': the model is restricted to ``n_centres`` random
        training points, ``f(x) = sum_j beta_j k(x, c_j)`` with ``(K_nm^T K_nm + reg K_mm) beta = K_nm^T Y`` solved by
        CG with Falkon's preconditioner -- an approximation of the exact solve (exact when ``n_centres >= n``);
        the fitted model keeps only the centres. With ``iter_sample_size`` chosen separately for the subset and the
        full solve.
    solver_tol : float, default=1e-4
        Relative residual ``||(K + reg I) alpha - Y|| / ||Y||`` (per output) at which CG stops; EigenPro's stopping
        tolerance.
    solver_max_iter : int or None, default=None
        Cap on CG iterations (default ``max(100, n // 10)``) or EigenPro epochs (default 10) of each solve; with
        ``iter_sample_size``, of the final solve on all rows only (the subset solves, which learn M, run to
        ``solver_tol``). For 'nystrom', CG iterations (default 100).
    n_centres : int or None, default=None
        Centres of the m-centre model (``solver='nystrom'``, or 'auto' beyond the stored matrix); None:
        ``min(n, max(2000, 4 sqrt(n)))``.
    device : str, default='auto'
        'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'.
    dtype : {'float32', 'float64'}, default='float32'
    memory_budget : int or None, default=None
        Bytes the fit may use for kernel blocks; default: 60% of the memory available at fit time.
    n_threads : int, 'auto' or None, default='auto'
        CPU threads while fitting and predicting (torch and the BLAS pools; restored after each call). 'auto': the
        cores left idle by other processes (measured from the CPU counters when fit starts; every core on a quiet
        machine; 2.7-3.4x faster than torch's count beside one busy process, measured; runs that measured different
        counts agree to the solver's tolerance, not bit for bit; the environment variable ``DRFM_THREADS`` replaces
        this default); None: torch's current setting, with a logged warning when other processes are measured to
        occupy the cores; an int: that many (bit-for-bit reproducible on a machine). See :mod:`drfm._threads`.
    categorical_features : 'from_dtype', list of column names / indices, boolean mask or None, default='from_dtype'
        Categorical input columns, one-hot encoded inside the estimator with each one-hot block counting as one
        feature in M (its AGOP entries tied over the block's permutations: one learned "same / different category"
        weight per column; :mod:`drfm._categorical`). 'from_dtype': a DataFrame's ``category``, ``object``,
        ``string`` and ``bool`` columns; None: every column numeric. ``M_`` is over the encoded columns;
        ``feature_importances_`` has one entry per input column; ``categorical_`` lists the categorical columns and
        their categories (a category unseen in fit gets an all-zero block).
    standardize : bool or 'auto', default='auto'
        Standardise the numeric input columns with the training rows' mean and standard deviation (constant columns
        keep scale 1; one-hot blocks are left as they are) and, for :class:`RFMRegressor`, centre the targets on
        their mean (an intercept): unscaled tables (prices beside 0/1 flags) otherwise put every point far from
        every other, and a kernel machine without intercept predicts 0 away from the data. 'auto': standardise
        when the columns' spreads differ -- the largest column standard deviation above STANDARDIZE_SPREAD (5)
        times the median one (one-hot columns counted) -- and leave columns that share a scale (pixels, generated
        features) as they are; ``standardized_`` says what was done and ``column_spread_`` the ratio ('auto'
        only; None otherwise). Measured
        (``bench tabular``, docs/rfm.md): standardising lifted 18 of 20 public tables (tied one) (unscaled ones from negative
        R^2 to above LightGBM's) and cost 1.2-1.8 points of accuracy on 8000 MNIST digits, whose spread is 2.1.
        ``x_mean_`` / ``x_scale_`` (and ``y_offset_``) hold the standardisation; ``M_``, ``agop`` and ``X_fit_``
        are in the standardised coordinates. False: the raw columns and targets; True: always standardise.
    distributed : bool, default=False
        Fit across the processes of an initialised ``torch.distributed`` process group (e.g. under ``torchrun``):
        every rank calls ``fit`` with its own rows (rank order = row order; a rank may hold none) and the same
        parameters. The fit is the same loop as on one process (:mod:`drfm.engine.loop`) and gives the model one
        process would fit on all the rows -- every setting means the same: early stopping with its held-out rows
        and refit, ``bandwidth='auto'``, categorical columns (categories agreed over the ranks), ``diag``,
        ``centering``, every solver (CG on the row-sharded kernel, the m-centre model on each rank's rows with one
        m x c all-reduce per CG step; direct and EigenPro solve the gathered rows on every rank). The fitted model is
        complete and identical on every rank; ``history_`` records the bytes each rank received per solver step.
        The memory budget is shared among the ranks of a host.
    distributed_timeout : float, default=600.0
        Seconds a collective of a distributed fit waits for the other ranks: a rank that died, raised or is paused
        makes every other rank raise :class:`~kernels.distributed.RankFailureError` (naming it where it can be
        seen) after at most this long, instead of torch's default of 30 minutes.
    random_state : int, RandomState or None
        Seeds a local torch.Generator (AGOP subsets, validation split); global RNGs are never touched.
    verbose : bool, default=False
        Progress bar over iterations.

    Attributes
    ----------
    M_ : (d, d) or (d,) ndarray, learned feature matrix of the kept iterate.
    sqrt_m_ : ndarray, its factor R (``M_ = R R``) used to transform the data.
    bandwidth_ : float, the bandwidth of the kept iterate's kernel (``bandwidth``, or the measured median).
    reg_ : float, the ridge of the kept solve (``reg``, or the value reg='auto' chose).
    factor_ : (d, r) ndarray or None, the compact factor of ``sqrt_m_`` the kernel is evaluated with (its
        numerically non-zero eigen-directions; None when M = I); predict and agop reuse it.
    dual_coef_ : (n_fit, n_outputs) ndarray.
    X_fit_ : (n_fit, d) ndarray, the training points (kernel centres).
    history_ : list of dict, per iteration: train/validation score, seconds, solver.
    best_iter_ : int, index in ``history_`` of the kept iterate.
    iter_rows_ : indices (into the X given to fit) of the rows the feature-learning solves used with
        ``iter_sample_size``; None when every solve used all training rows.
    solver_ : the solver of the final solve ('direct', 'cg', 'eigenpro'); the reason is in ``history_``.
    n_features_in_, device_ : as in scikit-learn; the resolved device.
    """

    def _validate_xy(self, X, y, ensure_min_samples=1):
        return validate_regression_data(self, X, y, ensure_min_samples)

    def _encode_targets(self, y, comm):
        Y = encode_regression_targets(self, y)
        # with standardize: the targets centred on every rank's mean (the kernel machine then has an intercept;
        # without one it predicts 0 away from the training rows)
        self.y_offset_ = np.zeros(Y.shape[1])
        if self.standardized_:
            self.y_offset_ = standardization_agreed(comm, Y, True)[0]
        return Y - self.y_offset_

    def _encode_val(self, y_val):
        return super()._encode_val(y_val) - getattr(self, "y_offset_", 0.0)

    def _scorer(self):
        offset = self.y_offset_
        return lambda out, y_true: r2_of_outputs(out + offset, y_true)

    def predict(self, X):
        """Predicted targets, (n,) or (n, n_outputs) like the ``y`` given to fit."""
        return regression_output(self, self._raw_predict(X) + getattr(self, "y_offset_", 0.0))

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
    proba_temperature_ : float, the softmax temperature of :meth:`predict_proba` (fitted on held-out outputs, or
        the default 0.1).
    """

    def _validate_xy(self, X, y, ensure_min_samples=1):
        return validate_classification_data(self, X, y, ensure_min_samples)

    def _encode_targets(self, y, comm):
        self.classes_, Y = one_hot_agreed(comm, y, type(self).__name__)  # a shard may hold only some classes
        return Y

    def _scorer(self):
        return accuracy_of_outputs(self.classes_)

    def _encode_val(self, y_val):
        return one_hot_of(y_val, self.classes_)

    def _validate_val(self, X_val, y_val):
        X_val, y_val = super()._validate_val(X_val, y_val)
        unknown = np.setdiff1d(np.unique(y_val.astype(self.classes_.dtype, copy=False)), self.classes_)
        if unknown.size:
            raise ValueError(f"y_val has labels not seen in y: {unknown[:5].tolist()}.")
        return X_val, y_val

    def _fitted_outputs(self, state):
        # temperature scaling on the kept iterate's held-out outputs, when there are any
        if state.val_outputs is not None and len(state.val_outputs) > 0:
            self.proba_temperature_ = fit_temperature(state.val_outputs, state.val_labels, self.classes_)
        else:
            self.proba_temperature_ = DEFAULT_TEMPERATURE

    def decision_function(self, X):
        """Kernel machine outputs: (n, n_classes), or (n,) = score of classes_[1] minus classes_[0] for 2 classes."""
        return decision_values(self._raw_predict(X))

    def predict_proba(self, X):
        """Class probabilities (n, n_classes): ``softmax(outputs / proba_temperature_)``.

        The outputs are the kernel machine's regression onto one-hot targets. The temperature is fitted by
        temperature scaling (the log-loss minimiser, Guo et al. 2017) on held-out outputs: the early-stopping
        validation split or ``X_val``/``y_val`` given to ``fit``. Without held-out data it is 0.1 (``proba_temperature_``
        says which): rows sum to 1 and follow the outputs' order, but are not calibrated -- pass validation data, or
        wrap the model in ``CalibratedClassifierCV``.
        """
        return softmax_proba(self._raw_predict(X), getattr(self, "proba_temperature_", DEFAULT_TEMPERATURE))

    def predict(self, X):
        """Predicted class labels."""
        out = self._raw_predict(X)  # first: it checks that the model is fitted
        return predict_labels(self.classes_, out)
