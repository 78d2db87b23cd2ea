"""Deep Recursive Feature Machines: a stack of RFM layers with random feature maps, no backpropagation.

For each layer l = 1..depth (the seed paper's construction)::

    X_l <- X_l / ||X_l||_row                       stage "input"
    fit Laplace kernel ridge on (X_l, Y) (M = I, bandwidth L), layer.iters AGOP steps (the layer template)
    M_l <- AGOP / max entry ;  R_l <- M_l^{1/2}    (eigh in float64, negative eigenvalues clipped)
    Z_l <- X_l R_l                                 stage "linear"
    X_{l+1} <- Phi_l(Z_l)                          stage "nonlinear" (cosine / ReLU random features, or identity)

The final predictor is a Laplace kernel machine (M = I) on the last layer's output features ``X_{depth+1}`` as they
are (not row-normalised), so ``depth=1, feature_map='none'`` is exactly an RFM with one iteration on the
row-normalised data.

Every layer's kernel machine is a clone of one template, ``layer`` (an :class:`~drfm.rfm.RFMRegressor`; default
``RFMRegressor(bandwidth=2.0, iters=1)``), in scikit-learn's meta-estimator style: every RFM parameter can be set per
layer, directly or as a nested parameter (``DeepRFMClassifier(layer=RFMRegressor(bandwidth=3.0, solver_tol=1e-5))``,
``set_params(layer__reg=1e-4)``). The template's ``iters`` are the layer's AGOP steps; the final machine is the
template with ``iters=0``. ``device``, ``dtype``, ``memory_budget``, ``random_state`` and ``verbose`` are the Deep
RFM's own and replace the template's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from kernels import MemoryPlan, apply_sqrt_m
from kernels.features import apply_feature_map, draw_cosine, draw_relu

from ._backend import make_generator, resolve_dtype, to_tensor
from .engine import RFMParams, plan_layer, run_rfm, runtime_for
from .engine.agree import agree_data, agree_parameters, on_every_rank, one_hot_agreed, standardization_agreed
from .engine.runtime import DEFAULT_TIMEOUT_S, open_comm
from ._threads import with_threads
from ._params import BOOL, RANDOM_STATE, DeviceString, InstanceOf, Interval, InvalidParameterError, NoneOK, \
    Options, validate_params
from ._targets import (DEFAULT_TEMPERATURE, DTYPES, decision_values, encode_regression_targets, predict_labels,
                       r2_of_outputs, regression_output, softmax_proba, validate_classification_data,
                       validate_regression_data)
from .rfm import RFMRegressor

__all__ = ["DeepRFMClassifier", "DeepRFMRegressor", "Layer", "default_layer"]

def default_layer() -> RFMRegressor:
    """The layer template used when ``layer=None``: one AGOP step of a Laplace machine with bandwidth 2 (rows are
    unit norm)."""
    return RFMRegressor(bandwidth=2.0, iters=1)


@dataclass
class Layer:
    """One fitted Deep RFM layer.

    Attributes
    ----------
    index : 0-based depth.
    M : (d_l, d_l) feature matrix (normalised AGOP of the layer's kernel machine); (d_l,) with ``layer__diag``.
    sqrt_m : its square root R_l (the "linear" map ``X_l R_l``).
    feature_map : 'cosine', 'relu' or 'none'; W (width, d_l) and b (width,) its random weights (None for 'none').
    train_score : R^2 of the layer's kernel machine on its training inputs against the encoded targets.
    seconds : fitting time of the layer.
    solver : the layer machine's solver.
    extra : ``iter_rows`` (the subset of the feature-learning solves, with ``layer__iter_sample_size``).
    machine : the layer's kernel machine parameters (an unfitted RFMRegressor: the template as this layer ran it).
    history : the layer machine's per-solve records (as ``RFMRegressor.history_``).
    """

    index: int
    M: np.ndarray
    sqrt_m: np.ndarray
    feature_map: str
    W: np.ndarray | None
    b: np.ndarray | None
    train_score: float
    seconds: float
    solver: str = ""
    extra: dict = field(default_factory=dict)
    machine: RFMRegressor | None = None
    history: list = field(default_factory=list)


def _row_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _draw_map(kind, d_l, width, sigma, gen):
    if kind == "cosine":
        return draw_cosine(d_l, width, sigma=sigma, generator=gen)
    if kind == "relu":
        return draw_relu(d_l, width, generator=gen)
    return None, None


class _BaseDeepRFM(TransformerMixin, BaseEstimator):
    _parameter_constraints = {
        "depth": [Interval("int", 1, None, closed="left")],
        "layer": [InstanceOf(RFMRegressor, name="an RFMRegressor (the layer template)"), NoneOK],
        "feature_map": [Options("cosine", "relu", "none")],
        "width": [Interval("int", 1, None, closed="left"), NoneOK],
        "sigma": [Interval("float", 0, None, closed="neither")],
        "normalize_rows": [BOOL],
        "standardize": [BOOL],
        "target_encoding": [Options("pm1", "onehot")],
        "device": [DeviceString()],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval("int", 1, None, closed="left"), NoneOK],
        "n_threads": [Interval("int", 1, None, closed="left"), Options("auto"), NoneOK],
        "distributed": [BOOL],
        "distributed_timeout": [Interval("float", 0, None, closed="neither")],
        "random_state": RANDOM_STATE,
        "verbose": [BOOL, Interval("int", 0, None, closed="left")],
    }

    def __init__(
        self,
        depth=5,
        *,
        layer=None,
        feature_map="cosine",
        width=None,
        sigma=0.05,
        normalize_rows=True,
        standardize=True,
        target_encoding="pm1",
        device="auto",
        dtype="float32",
        memory_budget=None,
        n_threads="auto",
        distributed=False,
        distributed_timeout=DEFAULT_TIMEOUT_S,
        random_state=None,
        verbose=False,
    ):
        self.depth = depth
        self.layer = layer
        self.feature_map = feature_map
        self.width = width
        self.sigma = sigma
        self.normalize_rows = normalize_rows
        self.standardize = standardize
        self.target_encoding = target_encoding
        self.device = device
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.n_threads = n_threads
        self.distributed = distributed
        self.distributed_timeout = distributed_timeout
        self.random_state = random_state
        self.verbose = verbose

    # -- nested parameters: with layer=None the default template's parameters are exposed and settable
    def get_params(self, deep=True):
        params = super().get_params(deep=deep)
        if deep and self.layer is None:
            params.update({f"layer__{k}": v for k, v in default_layer().get_params().items()})
        return params

    def set_params(self, **params):
        if self.layer is None and any(k.startswith("layer__") for k in params):
            self.layer = default_layer()
        return super().set_params(**params)

    # -- subclass hooks
    def _validate_xy(self, X, y, ensure_min_samples=1):
        raise NotImplementedError

    def _encode(self, y, comm) -> np.ndarray:  # -> (n, c) targets (classes agreed over the ranks)
        raise NotImplementedError

    def _template(self) -> RFMRegressor:
        """A validated clone of the layer template."""
        template = default_layer() if self.layer is None else clone(self.layer)
        validate_params(template)
        if template.iters < 1:
            raise InvalidParameterError(
                f"The 'layer' parameter of {type(self).__name__} must have iters >= 1 (the AGOP steps that give each "
                f"layer its feature matrix). Got iters={template.iters!r} instead."
            )
        return template

    def _machine(self, template, *, iters, seed, budget, verbose=None):
        """A clone of the template with this Deep RFM's device, dtype, budget, a drawn seed and (default) quieter
        verbosity."""
        verbose = max(0, int(self.verbose) - 1) if verbose is None else verbose
        runtime = dict(device=self.device_, dtype=self.dtype, memory_budget=budget, random_state=seed,
                       verbose=verbose, n_threads=None,  # None: the Deep RFM's own count
                       distributed=self.distributed, distributed_timeout=self.distributed_timeout)
        # the machine sees the layers' features (rows normalised by the Deep RFM): standardising is the Deep RFM's
        # own `standardize` (of its input), never the template's
        return clone(template).set_params(iters=iters, standardize=False, **runtime)

    @with_threads
    def fit(self, X, y):
        """Fit ``depth`` layers greedily, then the final kernel machine on the last layer's features."""
        validate_params(self)
        template = self._template()
        owner = type(self).__name__
        comm = open_comm(self, owner)  # one process, or the ranks of a torch.distributed group (drfm.engine)
        agree_parameters(comm, self, owner)
        min_rows = 0 if comm.world_size > 1 else 1
        X, y = on_every_rank(comm, owner, lambda: self._validate_xy(X, y, ensure_min_samples=min_rows))
        agree_data(comm, owner, X, y, resolve_dtype(self.dtype), False, isinstance(self, ClassifierMixin))
        Y = self._encode(y, comm)
        rt = runtime_for(self, owner, comm)
        self.device_ = str(rt.device)
        gen = rt.generator  # (rank 0's seed on every rank: the same layer seeds and feature-map weights everywhere)
        self.mean_, self.scale_ = standardization_agreed(comm, X, self.standardize)
        dtype, budget = rt.dtype, rt.budget
        h = to_tensor((X - self.mean_) / self.scale_, torch.float64, torch.device("cpu"))
        n = h.shape[0]
        self._check_layers_fit(template, n, h.shape[1], Y.shape[1], rt)  # every layer's memory, before layer 0
        layers = []
        for idx in tqdm(range(self.depth), desc=type(self).__name__, disable=not self.verbose, unit="layer"):
            t0 = time.perf_counter()
            if self.normalize_rows:
                h = _row_normalise(h)
            d_l = h.shape[1]
            width = d_l if self.width is None else self.width
            held = self._layer_held(budget, n, d_l, idx)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            km = self._machine(template, iters=template.iters, seed=seed, budget=held.left())
            layer_rt = rt.with_generator(make_generator(seed), owner=f"{owner} layer {idx}", budget=km.memory_budget)
            state = run_rfm(h.numpy(), Y, Y, params=RFMParams.of(km), score=r2_of_outputs, runtime=layer_rt,
                            final_solve=False)
            R = state.last_sqrt_m if state.last_sqrt_m is not None else (
                np.ones(d_l) if km.diag else np.eye(d_l))
            W, b = _draw_map(self.feature_map, d_l, width, self.sigma, gen)
            z = apply_sqrt_m(h, torch.as_tensor(R))
            h = apply_feature_map(self.feature_map, z.to(dtype), W, b).double()
            on_every_rank(comm, owner, lambda: self._check_features(h, idx, dtype))
            layers.append(Layer(
                idx, R * R if R.ndim == 1 else R @ R.T, R, self.feature_map, None if W is None else W.numpy(),
                None if b is None else b.numpy(), float(state.history[-1]["train_score"]),
                time.perf_counter() - t0, state.solver,
                {} if state.iter_rows is None else {"iter_rows": state.iter_rows}, km, state.history,
            ))
        self.layers_ = layers
        self.n_layers_ = len(layers)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        # the final machine's solve is one of the long steps (minutes at 50 000 rows): with verbose its solver's
        # progress shows, where a layer's machine stays quiet under the layer bar
        final_verbose = int(self.verbose) + 1 if self.verbose else 0
        self.final_ = self._machine(template, iters=0, seed=seed, budget=budget, verbose=final_verbose).fit(
            h.numpy(), Y)
        return self

    def _layer_held(self, budget: int, n: int, d_l: int, idx: int) -> MemoryPlan:
        """What layer ``idx`` holds beside its kernel machine (its input and linear stage, the new features, W),
        checked against ``budget``; the plan's ``left()`` is the machine's budget."""
        width = d_l if self.width is None else self.width
        held = MemoryPlan(budget).add("layer input and linear stage (float64)", 2 * n * d_l * 8)
        held.add(f"random features (width {width}, float64 and working copy)", n * width * (8 + 8))
        held.add("feature-map weights", width * (d_l + 1) * 8)
        held.check(f"{type(self).__name__} layer {idx}", hint=f"(n = {n}, d = {d_l}, width = {width})")
        return held

    def _check_layers_fit(self, template, n: int, d: int, c: int, rt) -> None:
        """Refuse before any work a depth whose later layers cannot fit: each distinct layer input width (d for
        layer 0, the map's width after it) gets its held arrays and its kernel machine's memory plan checked."""
        later = d if self.feature_map == "none" or self.width is None else self.width
        for idx, d_l in [(0, d)] + ([(1, later)] if self.depth > 1 and later != d else []):
            held = self._layer_held(rt.budget, n, d_l, idx)
            km = self._machine(template, iters=template.iters, seed=0, budget=held.left())
            plan_layer(n, d_l, c, params=RFMParams.of(km),
                       runtime=rt.with_generator(make_generator(0), owner=f"{type(self).__name__} layer {idx}",
                                                 budget=km.memory_budget))

    def _check_features(self, h: torch.Tensor, idx: int, dtype) -> None:
        """A layer's random features must be finite and differ between rows, else a clear error naming the cause
        (e.g. ``sigma`` far too large: the cosine map's phases overflow; far too small: every row maps to the same
        features and the model predicts one value)."""
        owner, fm = type(self).__name__, self.feature_map
        cosine = fm == "cosine"
        if not bool(torch.isfinite(h).all()):
            why = (f": sigma={self.sigma:g} makes the phases z W^T overflow {str(dtype).replace('torch.', '')}; use "
                   "a smaller sigma" if cosine else "")
            raise ValueError(f"{owner} layer {idx}: the {fm} random features are not finite{why}")
        if h.shape[0] > 1 and h.shape[1] > 0:
            spread = float(h.std(0).max())
            if not spread > 1e-6 * max(float(h.abs().max()), torch.finfo(dtype).tiny):
                why = (f": sigma={self.sigma:g} is too small for the data (the phases z W^T barely vary between "
                       "rows); use a larger sigma" if cosine else "")
                raise ValueError(f"{owner} layer {idx}: the {fm} random features are the same for every row, the "
                                 f"model could only predict one value{why}")

    # -- transforms
    def _stages(self, X, upto=None):
        """Yield per layer (input, linear, nonlinear) float64 tensors for validated X."""
        h = to_tensor((X - self.mean_) / self.scale_, torch.float64, torch.device("cpu"))
        dtype = resolve_dtype(self.dtype)
        for layer in self.layers_[: upto]:
            if self.normalize_rows:
                h = _row_normalise(h)
            z = apply_sqrt_m(h, torch.as_tensor(layer.sqrt_m))
            W = None if layer.W is None else torch.as_tensor(layer.W)
            b = None if layer.b is None else torch.as_tensor(layer.b)
            out = apply_feature_map(layer.feature_map, z.to(dtype), W, b).double()
            yield h, z, out
            h = out

    def _check_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=DTYPES)

    @with_threads
    def transform(self, X, layer=None):
        """Features after layer ``layer``'s nonlinear stage (0-based; default: the last layer), as numpy."""
        X = self._check_X(X)
        if layer is not None and (isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer))):
            raise TypeError(f"layer must be an int (0-based layer index) or None, got {layer!r}")
        upto = self.n_layers_ if layer is None else int(layer) + 1
        if not 1 <= upto <= self.n_layers_:
            raise ValueError(f"layer must be in [0, {self.n_layers_ - 1}], got {layer!r}")
        out = None
        for _, _, out in self._stages(X, upto):
            pass
        return out.numpy()

    def get_feature_names_out(self, input_features=None):
        """Names of :meth:`transform`'s columns (the last layer's features): ``<classname>0``, ``<classname>1``, ...
        (what ``set_output(transform="pandas")`` and pipelines use)."""
        check_is_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self.final_.n_features_in_)], dtype=object)

    @with_threads
    def layer_features(self, X):
        """One dict per layer: ``{"input": X_l (row-normalised), "linear": X_l M_l^{1/2}, "nonlinear": Phi_l(...)}``
        (all layers at once; :meth:`iter_layer_features` holds one layer at a time)."""
        return list(self.iter_layer_features(X))

    def iter_layer_features(self, X):
        """:meth:`layer_features` as a generator, one layer's dict at a time (what a report over many layers and rows
        uses: one layer's features in memory)."""
        X = self._check_X(X)
        for a, b, c in self._stages(X):
            yield {"input": a.numpy(), "linear": b.numpy(), "nonlinear": c.numpy()}

    @with_threads
    def _outputs(self, X):
        feats = self.transform(X)
        return self.final_.predict(feats).reshape(feats.shape[0], -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class DeepRFMClassifier(ClassifierMixin, _BaseDeepRFM):
    """Deep RFM classifier (targets ``2 * onehot - 1`` by default; ``target_encoding='onehot'`` for 0/1).

    Parameters
    ----------
    depth : int, default=5
        Number of layers.
    feature_map : {'cosine', 'relu', 'none'}, default='cosine'
        Random feature map after each layer's linear map ``M_l^{1/2}``.
    width : int or None, default=None
        Random features per layer (None: the layer's input width).
    sigma : float, default=0.05
        Scale of the Cauchy frequencies of the cosine map (the published runs: 0.05 MNIST, 0.1 CIFAR-10 / SVHN).
    layer : RFMRegressor or None, default=None
        The template of every layer's kernel machine, cloned per layer (None: ``RFMRegressor(bandwidth=2.0,
        iters=1)``). Every RFM parameter is per layer: ``iters`` AGOP steps, ``bandwidth``, ``reg``, ``solver``,
        ``solver_tol``, ``solver_max_iter``, ``diag``, ``centering``, ``agop_power``, ``normalize_m``,
        ``agop_sample_size``, ``iter_sample_size`` (each layer's machine fit on a random subset of that many points;
        its M is the AGOP over up to ``agop_sample_size`` of all points; the final machine uses all). Nested
        parameters work as in scikit-learn: ``set_params(layer__reg=1e-4)``.
    normalize_rows, standardize : bool, default=True
        Row-normalise each layer's input; standardise the raw features (training mean / std) first.
    target_encoding : {'pm1', 'onehot'}, default='pm1'
    device, dtype, memory_budget, n_threads, distributed, distributed_timeout, random_state, verbose : as in
        :class:`RFMRegressor`; they replace the template's (``distributed=True``: every layer's machine and the final
        one are fit across the process group by the same loop as on one process, each rank on its rows;
        standardisation uses every rank's rows)
        (the layer machines' seeds are drawn from ``random_state``).

    Attributes
    ----------
    layers_ : list of :class:`Layer` (M, sqrt_m, feature-map weights, train score, the layer machine, per layer).
    final_ : the final kernel machine (the template with iters=0, fitted) on the last layer's features.
    classes_, mean_, scale_, n_features_in_, device_.
    """

    def _validate_xy(self, X, y, ensure_min_samples=1):
        return validate_classification_data(self, X, y, ensure_min_samples)

    def _encode(self, y, comm):
        self.classes_, Y = one_hot_agreed(comm, y, type(self).__name__)
        return 2.0 * Y - 1.0 if self.target_encoding == "pm1" else Y

    def decision_function(self, X):
        """Final kernel machine outputs (n, n_classes); (n,) = output[1] - output[0] for two classes."""
        return decision_values(self._outputs(X))

    def predict_proba(self, X):
        """Class probabilities ``softmax(outputs / T)`` with T = 0.1 times the target encoding's range (0.1 one-hot,
        0.2 for +-1): rows sum to 1 and follow the outputs' order; not calibrated (wrap the model in
        ``CalibratedClassifierCV`` for calibrated probabilities)."""
        scale = 2.0 if self.target_encoding == "pm1" else 1.0
        return softmax_proba(self._outputs(X), DEFAULT_TEMPERATURE * scale)

    def predict(self, X):
        out = self._outputs(X)  # first: it checks that the model is fitted
        return predict_labels(self.classes_, out)


class DeepRFMRegressor(RegressorMixin, _BaseDeepRFM):
    """Deep RFM regressor (targets used as given). Parameters and attributes as :class:`DeepRFMClassifier`."""

    def _validate_xy(self, X, y, ensure_min_samples=1):
        return validate_regression_data(self, X, y, ensure_min_samples)

    def _encode(self, y, comm):
        return encode_regression_targets(self, y)

    def predict(self, X):
        return regression_output(self, self._outputs(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
