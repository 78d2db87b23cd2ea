"""Deep Recursive Feature Machines: a stack of RFM layers with random feature maps, no backpropagation.

For each layer l = 1..depth (the seed paper's construction)::

    X_l <- X_l / ||X_l||_row                       stage "input"
    fit Laplace kernel ridge on (X_l, Y) (M = I, bandwidth L), iters_per_layer AGOP steps
    M_l <- AGOP / max entry ;  R_l <- M_l^{1/2}    (eigh in float64, negative eigenvalues clipped)
    Z_l <- X_l R_l                                 stage "linear"
    X_{l+1} <- Phi_l(Z_l)                          stage "nonlinear" (cosine / ReLU random features, or identity)

The final predictor is a Laplace kernel machine (M = I) on the last layer's output features ``X_{depth+1}`` as they
are (not row-normalised), so ``depth=1, feature_map='none'`` is exactly an RFM with one iteration on the
row-normalised data. Each layer's kernel machine uses the RFM machinery (solver choice, memory budget, device).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from kernels.features import apply_feature_map, draw_cosine, draw_relu

from ._backend import make_generator, resolve_device, resolve_dtype, standardization, to_tensor
from ._params import BOOL, RANDOM_STATE, DeviceString, Interval, NoneOK, Options, validate_params
from .rfm import RFMRegressor, one_hot_classes, validate_classification_data

__all__ = ["DeepRFMClassifier", "DeepRFMRegressor", "Layer"]


@dataclass
class Layer:
    """One fitted Deep RFM layer.

    Attributes
    ----------
    index : 0-based depth.
    M : (d_l, d_l) feature matrix (normalised AGOP of the layer's kernel machine).
    sqrt_m : (d_l, d_l) its symmetric square root R_l (the "linear" map).
    feature_map : 'cosine', 'relu' or 'none'; W (width, d_l) and b (width,) its random weights (None for 'none').
    train_score : R^2 of the layer's kernel machine on its training inputs against the encoded targets.
    seconds : fitting time of the layer.
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

    @property
    def n_features_in(self) -> int:
        return self.M.shape[0]

    @property
    def n_features_out(self) -> int:
        return self.n_features_in if self.W is None else self.W.shape[0]


def _row_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


class _BaseDeepRFM(BaseEstimator):
    _parameter_constraints = {
        "depth": [Interval("int", 1, None, closed="left")],
        "feature_map": [Options("cosine", "relu", "none")],
        "width": [Interval("int", 1, None, closed="left"), NoneOK],
        "sigma": [Interval("float", 0, None, closed="neither")],
        "bandwidth": [Interval("float", 0, None, closed="neither")],
        "reg": [Interval("float", 0, None, closed="left")],
        "iters_per_layer": [Interval("int", 1, None, closed="left")],
        "normalize_rows": [BOOL],
        "standardize": [BOOL],
        "target_encoding": [Options("pm1", "onehot")],
        "agop_sample_size": [Interval("int", 1, None, closed="left")],
        "iter_sample_size": [Interval("int", 1, None, closed="left"), NoneOK],
        "solver": [Options("auto", "direct", "cg", "eigenpro")],
        "device": [DeviceString()],
        "dtype": [Options("float32", "float64")],
        "memory_budget": [Interval("int", 1, None, closed="left"), NoneOK],
        "random_state": RANDOM_STATE,
        "verbose": [BOOL, Interval("int", 0, None, closed="left")],
    }

    def __init__(
        self,
        depth=5,
        *,
        feature_map="cosine",
        width=None,
        sigma=0.05,
        bandwidth=2.0,
        reg=1e-3,
        iters_per_layer=1,
        normalize_rows=True,
        standardize=True,
        target_encoding="pm1",
        agop_sample_size=20000,
        iter_sample_size=None,
        solver="auto",
        device="auto",
        dtype="float32",
        memory_budget=None,
        random_state=None,
        verbose=False,
    ):
        self.depth = depth
        self.feature_map = feature_map
        self.width = width
        self.sigma = sigma
        self.bandwidth = bandwidth
        self.reg = reg
        self.iters_per_layer = iters_per_layer
        self.normalize_rows = normalize_rows
        self.standardize = standardize
        self.target_encoding = target_encoding
        self.agop_sample_size = agop_sample_size
        self.iter_sample_size = iter_sample_size
        self.solver = solver
        self.device = device
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.random_state = random_state
        self.verbose = verbose

    # -- subclass hooks
    def _validate_xy(self, X, y):
        raise NotImplementedError

    def _encode(self, y) -> np.ndarray:
        raise NotImplementedError

    def _kernel_machine(self, iters, seed):
        km = RFMRegressor(
            self.bandwidth, reg=self.reg, iters=iters, agop_sample_size=self.agop_sample_size,
            iter_sample_size=self.iter_sample_size, solver=self.solver,
            device=self.device_, dtype=self.dtype, memory_budget=self.memory_budget, random_state=seed,
        )
        km._y_ndim = 2  # targets are always (n, c) here
        return km

    def fit(self, X, y):
        """Fit ``depth`` layers greedily, then the final kernel machine on the last layer's features."""
        validate_params(self)
        X, y = self._validate_xy(X, y)
        Y = self._encode(y)
        self.device_ = str(resolve_device(self.device, type(self).__name__))
        dtype = resolve_dtype(self.dtype)
        gen = make_generator(self.random_state)
        self.mean_, self.scale_ = standardization(X, self.standardize)
        h = to_tensor((X - self.mean_) / self.scale_, torch.float64, torch.device("cpu"))
        layers = []
        for idx in tqdm(range(self.depth), desc=type(self).__name__, disable=not self.verbose, unit="layer"):
            t0 = time.perf_counter()
            if self.normalize_rows:
                h = _row_normalise(h)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            km = self._kernel_machine(self.iters_per_layer, seed)
            km._fit(h.numpy(), Y, Y, final_solve=False)
            R = km.next_sqrt_m_
            d_l = R.shape[0]
            width = d_l if self.width is None else self.width
            if self.feature_map == "cosine":
                W, b = draw_cosine(d_l, width, sigma=self.sigma, generator=gen)
            elif self.feature_map == "relu":
                W, b = draw_relu(d_l, width, generator=gen)
            else:
                W = b = None
            z = h @ torch.as_tensor(R)
            h = apply_feature_map(self.feature_map, z.to(dtype), W, b).double()
            layers.append(Layer(
                idx, km.next_M_, R, self.feature_map, None if W is None else W.numpy(),
                None if b is None else b.numpy(), float(km.history_[-1]["train_score"]), time.perf_counter() - t0,
                km.solver_, {} if km.iter_rows_ is None else {"iter_rows": km.iter_rows_},
            ))
        self.layers_ = layers
        self.n_layers_ = len(layers)
        final = self._kernel_machine(0, int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        final._fit(h.numpy(), Y, Y)
        self.final_ = final
        return self

    # -- transforms
    def _stages(self, X, upto=None):
        """Yield per layer (input, linear, nonlinear) float64 tensors for validated X."""
        h = to_tensor((X - self.mean_) / self.scale_, torch.float64, torch.device("cpu"))
        dtype = resolve_dtype(self.dtype)
        for layer in self.layers_[: upto]:
            if self.normalize_rows:
                h = _row_normalise(h)
            z = h @ torch.as_tensor(layer.sqrt_m)
            W = None if layer.W is None else torch.as_tensor(layer.W)
            b = None if layer.b is None else torch.as_tensor(layer.b)
            out = apply_feature_map(layer.feature_map, z.to(dtype), W, b).double()
            yield h, z, out
            h = out

    def _check_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def transform(self, X, layer=None):
        """Features after layer ``layer``'s nonlinear stage (0-based; default: the last layer), as numpy."""
        X = self._check_X(X)
        upto = self.n_layers_ if layer is None else int(layer) + 1
        if not 1 <= upto <= self.n_layers_:
            raise ValueError(f"layer must be in [0, {self.n_layers_ - 1}], got {layer!r}")
        out = None
        for _, _, out in self._stages(X, upto):
            pass
        return out.numpy()

    def layer_features(self, X):
        """One dict per layer: ``{"input": X_l (row-normalised), "linear": X_l M_l^{1/2}, "nonlinear": Phi_l(...)}``."""
        X = self._check_X(X)
        return [{"input": a.numpy(), "linear": b.numpy(), "nonlinear": c.numpy()} for a, b, c in self._stages(X)]

    def _outputs(self, X):
        feats = self.transform(X)
        return self.final_.predict(feats).reshape(feats.shape[0], -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class DeepRFMClassifier(ClassifierMixin, TransformerMixin, _BaseDeepRFM):
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
    bandwidth : float, default=2.0
        Laplace bandwidth of every layer's kernel machine (rows are unit norm).
    reg : float, default=1e-3
    iters_per_layer : int, default=1
        AGOP iterations per layer.
    normalize_rows, standardize : bool, default=True
        Row-normalise each layer's input; standardise the raw features (training mean / std) first.
    target_encoding : {'pm1', 'onehot'}, default='pm1'
    agop_sample_size, iter_sample_size, solver, device, dtype, memory_budget, random_state, verbose : as in
        :class:`RFMRegressor`. With ``iter_sample_size`` each layer's kernel machine is fit on a random subset of that
        many points (its M is the AGOP over up to ``agop_sample_size`` of all points); the final machine uses all.

    Attributes
    ----------
    layers_ : list of :class:`Layer` (M, sqrt_m, feature-map weights, train score per layer).
    final_ : the final kernel machine (an RFMRegressor with iters=0) on the last layer's features.
    classes_, mean_, scale_, n_features_in_, device_.
    """

    def _validate_xy(self, X, y):
        return validate_classification_data(self, X, y)

    def _encode(self, y):
        self.classes_, Y = one_hot_classes(y, type(self).__name__)
        return 2.0 * Y - 1.0 if self.target_encoding == "pm1" else Y

    def decision_function(self, X):
        """Final kernel machine outputs (n, n_classes); (n,) = output[1] - output[0] for two classes."""
        out = self._outputs(X)
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def predict(self, X):
        out = self._outputs(X)
        return self.classes_[np.argmax(out, axis=1)]


class DeepRFMRegressor(RegressorMixin, TransformerMixin, _BaseDeepRFM):
    """Deep RFM regressor (targets used as given). Parameters and attributes as :class:`DeepRFMClassifier`."""

    def _validate_xy(self, X, y):
        return validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])

    def _encode(self, y):
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        return y.reshape(len(y), -1)

    def predict(self, X):
        out = self._outputs(X)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
