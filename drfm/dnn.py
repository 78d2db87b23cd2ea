"""Trained networks beside Deep RFM: the SVD split of each layer, the network AGOP and the Neural Feature Ansatz.

Import it explicitly (``from drfm import dnn``); ``import drfm`` does not load it.

For a layer ``h_{l+1} = act(W_l h_l + b_l)`` with ``W_l = U S V^T`` three stages are measured on the training set::

    "input"      h_l
    "linear"     S V^T h_l      (the right singular structure; the rotation U changes no trace ratio, so NC1 of this
                                  stage equals NC1 of W_l h_l)
    "nonlinear"  act(W_l h_l + b_l)   (absent for a Linear layer with no activation after it, e.g. the output layer)

exactly as ``X_l``, ``X_l M_l^{1/2}`` and ``Phi_l(...)`` in Deep RFM, so the rows of both models concatenate in one
:class:`~drfm.collapse.CollapseReport`.

The AGOP of the network with respect to the input of its ``l``-th Linear layer is ``(1/N) sum_i J_i^T J_i`` with
``J_i`` the Jacobian of the network output with respect to ``h_l`` at sample ``i`` (``torch.func.vmap`` over
``torch.func.jacrev``, blocked over samples). The Neural Feature Ansatz says ``W_l^T W_l`` is proportional to
``AGOP_l^{1/2}``; it is measured by the Pearson correlation of the flattened matrices.
"""
from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from tqdm.auto import tqdm

from ._backend import make_generator, resolve_device, resolve_dtype, standardization, to_tensor
from ._params import BOOL, RANDOM_STATE, DeviceString, InstanceOf, Interval, NoneOK, Options, validate_params
from .collapse import METRICS, CollapseReport, check_metrics, stage_report
from .rfm import one_hot_classes, validate_classification_data

__all__ = [
    "ACTIVATIONS",
    "TorchMLPClassifier",
    "build_mlp",
    "compare",
    "comparison_table",
    "layer_blocks",
    "layer_features",
    "mlp_collapse_report",
    "network_agop",
    "nfa_correlations",
    "nfa_report",
    "pearson",
    "psd_sqrt",
]

#: elementwise activations the SVD split understands (the "nonlinear" stage)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Softplus)
#: modules that leave a (n, d) batch unchanged in evaluation mode
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Flatten)
_SUPPORTED = "Linear, " + ", ".join(c.__name__ for c in ACTIVATIONS + _PASSTHROUGH)

NFA_METRICS = ("nfa_sqrt", "nfa_agop", "nfa_sqrt_delta", "nfa_agop_delta")


# ---------------------------------------------------------------------------------------------------------------------
# network structure
class _Block:
    """One Linear layer of a Sequential and the modules after it up to the next Linear."""

    def __init__(self, index: int, start: int, stop: int, linear: nn.Linear, has_activation: bool):
        self.index, self.start, self.stop, self.linear, self.has_activation = index, start, stop, linear, has_activation


def layer_blocks(net) -> list[_Block]:
    """Split a ``torch.nn.Sequential`` of Linear layers and elementwise activations into one block per Linear layer.

    Raises a ``TypeError`` for something that is not a Sequential and a ``ValueError`` naming the first unsupported
    module (convolutions, normalisation layers, nested containers, ...).
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"network must be a torch.nn.Sequential of Linear layers and activations, got "
                        f"{type(net).__name__}")
    mods = list(net)
    for pos, m in enumerate(mods):
        if not isinstance(m, (nn.Linear,) + ACTIVATIONS + _PASSTHROUGH):
            raise ValueError(f"network layer {pos} ({type(m).__name__}) is not supported: drfm analyses Sequential "
                             f"networks built from {_SUPPORTED}")
    linear_pos = [p for p, m in enumerate(mods) if isinstance(m, nn.Linear)]
    if not linear_pos:
        raise ValueError("network has no Linear layer: there is nothing to analyse")
    for pos in range(linear_pos[0]):
        if not isinstance(mods[pos], _PASSTHROUGH):
            raise ValueError(f"network layer {pos} ({type(mods[pos]).__name__}) comes before the first Linear layer; "
                             f"the SVD split needs each activation to follow a Linear layer")
    blocks = []
    for i, start in enumerate(linear_pos):
        stop = linear_pos[i + 1] if i + 1 < len(linear_pos) else len(mods)
        acts = [m for m in mods[start + 1: stop] if isinstance(m, ACTIVATIONS)]
        if len(acts) > 1:
            raise ValueError(f"network layers {start + 1}..{stop - 1} stack {len(acts)} activations after one Linear "
                             f"layer; the SVD split needs at most one")
        blocks.append(_Block(i, start, stop, mods[start], bool(acts)))
    return blocks


def build_mlp(d_in: int, n_out: int, *, depth: int = 5, width: int = 512, init_gain: float = 0.1, bias: bool = False,
              generator: torch.Generator | None = None) -> nn.Sequential:
    """``depth`` hidden Linear+ReLU layers of ``width`` units and a Linear output layer, Xavier-uniform initialised
    with gain ``init_gain`` (drawn from ``generator`` on the CPU; biases, if any, start at zero)."""
    sizes = [d_in] + [width] * depth + [n_out]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, bias=bias)
        bound = init_gain * np.sqrt(6.0 / (a + b))
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=generator)
            if bias:
                lin.bias.zero_()
        mods.append(lin)
        if i < depth:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _as_network(model):
    """The Sequential inside a fitted :class:`TorchMLPClassifier`, or the Sequential itself."""
    if isinstance(model, TorchMLPClassifier):
        check_is_fitted(model)
        return model.network_
    layer_blocks(model)
    return model


def _net_device_dtype(net):
    p = next(net.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _input_tensor(net, X, name="X"):
    device, dtype = _net_device_dtype(net)
    if isinstance(X, torch.Tensor):
        x = X.detach().to(device=device, dtype=dtype)
    else:
        try:
            x = torch.as_tensor(np.asarray(X, dtype=np.float64), device=device).to(dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array, got {type(X).__name__}") from exc
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(x.shape)}")
    d_in = layer_blocks(net)[0].linear.in_features
    if x.shape[1] != d_in:
        raise ValueError(f"{name} has {x.shape[1]} features but the network's first Linear layer expects {d_in}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return x


class _EvalMode:
    """Context manager: evaluation mode and no autograd graph on the parameters; the previous mode is restored."""

    def __init__(self, net):
        self.net = net

    def __enter__(self):
        self.was_training = self.net.training
        self.net.eval()
        return self.net

    def __exit__(self, *exc):
        self.net.train(self.was_training)
        return False


# ---------------------------------------------------------------------------------------------------------------------
# SVD split
def _split_block(block: _Block, mods, h: torch.Tensor):
    """(S V^T h as rows, the block's output) for one block; float64 SVD of the weight."""
    W = block.linear.weight.detach().double()
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)
    lin = (h.double() @ Vh.T) * S
    out = h
    for m in mods[block.start: block.stop]:
        out = m(out)
    return lin, out


@torch.no_grad()
def layer_features(model, X, *, batch_size: int = 4096) -> list[dict]:
    """Per Linear layer: ``{"input": h_l, "linear": S V^T h_l (as rows h_l V S), "nonlinear": act(W h_l + b)}``
    as float64 numpy arrays (``"nonlinear"`` only where an activation follows the layer).

    ``model``: a fitted :class:`TorchMLPClassifier` or a ``torch.nn.Sequential``; ``X`` in the network's input space
    (for a TorchMLPClassifier, the raw features: its standardisation is applied).
    """
    net = _as_network(model)
    if isinstance(model, TorchMLPClassifier):
        X = model._prepare(X)
    blocks = layer_blocks(net)
    x = _input_tensor(net, X)
    mods = list(net)
    stages = [{"input": [], "linear": [], "nonlinear": []} for _ in blocks]
    with _EvalMode(net):
        for s in range(0, x.shape[0], batch_size):
            h = x[s: s + batch_size]
            for m in mods[: blocks[0].start]:
                h = m(h)
            for blk, st in zip(blocks, stages):
                lin, out = _split_block(blk, mods, h)
                st["input"].append(h.double().cpu())
                st["linear"].append(lin.cpu())
                if blk.has_activation:
                    st["nonlinear"].append(out.double().cpu())
                h = out
    return [{k: torch.cat(v).numpy() for k, v in st.items() if v} for st in stages]


def mlp_collapse_report(model, X, y, *, metrics=("nc1", "nc2"), model_name: str = "mlp", epoch: int | None = None,
                        report: CollapseReport | None = None) -> CollapseReport:
    """Collapse metrics per Linear layer and stage (input / linear = S V^T h / nonlinear), rows as in Deep RFM's
    :func:`~drfm.collapse.collapse_report`; with ``epoch`` every row carries it (training dynamics)."""
    check_metrics(metrics)  # before the feature pass
    return stage_report(layer_features(model, X), y, metrics=metrics, model_name=model_name, epoch=epoch,
                        report=report)


# ---------------------------------------------------------------------------------------------------------------------
# AGOP and the Neural Feature Ansatz
def network_agop(model, X, layer: int, *, batch_size: int = 256, sample_size: int | None = None,
                 generator: torch.Generator | None = None) -> np.ndarray:
    """AGOP ``(1/N) sum_i J_i^T J_i`` of the network output with respect to the input of its ``layer``-th Linear
    layer (0-based), shape (d_in, d_in), float64.

    Jacobians come from ``torch.func.vmap(torch.func.jacrev(...))`` over blocks of ``batch_size`` samples (memory
    ``batch_size * n_outputs * d_in``). ``sample_size``: average over a random subset of that many samples (drawn
    with ``generator``) instead of all of ``X``.
    """
    from torch.func import jacrev, vmap

    net = _as_network(model)
    if isinstance(model, TorchMLPClassifier):
        X = model._prepare(X)
    blocks = layer_blocks(net)
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be in [0, {len(blocks) - 1}] (the network has {len(blocks)} Linear layers), "
                         f"got {layer}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = _input_tensor(net, X)
    if sample_size is not None and sample_size < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=generator)[:sample_size].to(x.device)
        x = x[idx]
    mods = list(net)
    head, tail = nn.Sequential(*mods[: blocks[layer].start]), nn.Sequential(*mods[blocks[layer].start:])

    def f(h):  # one sample -> network output
        return tail(h.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(f))
    d = blocks[layer].linear.in_features
    agop = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    with _EvalMode(net):
        for s in range(0, x.shape[0], batch_size):
            with torch.no_grad():
                h = head(x[s: s + batch_size])
            J = jac(h).detach()  # (b, n_out, d)
            J = J.reshape(J.shape[0], -1, d).double()
            agop += torch.einsum("bkd,bke->de", J, J)
    return (agop / x.shape[0]).cpu().numpy()


def pearson(A, B) -> float:
    """Pearson correlation of the flattened entries of two equally shaped matrices (NaN-free: a constant matrix gives
    a ``ValueError``)."""
    a = np.asarray(A, dtype=np.float64).ravel()
    b = np.asarray(B, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally shaped matrices, got {np.shape(A)} and {np.shape(B)}")
    a = a - a.mean()
    b = b - b.mean()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("pearson is undefined for a constant matrix (zero variance)")
    return float(a @ b / (na * nb))


def psd_sqrt(A) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (float64 eigh, negative round-off eigenvalues clipped)."""
    A = np.asarray(A, dtype=np.float64)
    w, V = np.linalg.eigh((A + A.T) / 2)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def nfa_correlations(model, X, *, initial=None, layers=None, batch_size: int = 256, sample_size: int | None = None,
                     generator=None) -> list[dict]:
    """Per Linear layer: Pearson correlations of ``W^T W`` with ``AGOP^{1/2}`` (``nfa_sqrt``) and with ``AGOP``
    (``nfa_agop``); with ``initial`` (the network at initialisation, or its ``state_dict``) also of
    ``(W - W_0)^T (W - W_0)`` (``nfa_sqrt_delta``, ``nfa_agop_delta``)."""
    net = _as_network(model)
    if isinstance(model, TorchMLPClassifier):
        X = model._prepare(X)
        if initial is None:
            initial = model.initial_state_
    blocks = layer_blocks(net)
    init_weights = None
    if initial is not None:
        state = initial.state_dict() if isinstance(initial, nn.Module) else initial
        init_weights = [state[f"{b.start}.weight"].detach().double().cpu().numpy() for b in blocks]
    x = _input_tensor(net, X)
    if sample_size is not None and sample_size < x.shape[0]:  # one subsample shared by every layer
        x = x[torch.randperm(x.shape[0], generator=generator)[:sample_size].to(x.device)]
    out = []
    for blk in blocks if layers is None else [blocks[i] for i in layers]:
        agop = network_agop(net, x, blk.index, batch_size=batch_size)
        root = psd_sqrt(agop)
        W = blk.linear.weight.detach().double().cpu().numpy()
        pairs = {"nfa_sqrt": (W.T @ W, root), "nfa_agop": (W.T @ W, agop)}
        if init_weights is not None:
            D = W - init_weights[blk.index]
            if np.any(D):
                pairs.update(nfa_sqrt_delta=(D.T @ D, root), nfa_agop_delta=(D.T @ D, agop))
        rec = {"layer": blk.index}
        for name, (A, B) in pairs.items():
            if np.ptp(A) == 0 or np.ptp(B) == 0:
                # e.g. every ReLU after this layer is dead: the AGOP is 0 and no correlation exists
                warnings.warn(f"layer {blk.index}: {name} is undefined (a constant matrix; the AGOP is "
                              f"{'zero' if not np.any(B) else 'constant'}); left out", RuntimeWarning, stacklevel=2)
                continue
            rec[name] = pearson(A, B)
        out.append(rec)
    return out


def nfa_report(model, X, *, model_name: str = "mlp", epoch: int | None = None, report: CollapseReport | None = None,
               **kw) -> CollapseReport:
    """:func:`nfa_correlations` as report rows (stage ``"weights"``, metrics ``nfa_*``)."""
    report = report if report is not None else CollapseReport(meta={"model": model_name})
    extra = {} if epoch is None else {"epoch": int(epoch)}
    n = len(X)
    for rec in nfa_correlations(model, X, **kw):
        for metric in NFA_METRICS:
            if metric in rec:
                report.add(model=model_name, layer=rec["layer"], stage="weights", metric=metric, value=rec[metric],
                           n_samples=n, **extra)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# the trained MLP
class TorchMLPClassifier(ClassifierMixin, BaseEstimator):
    """A ReLU MLP trained with torch, instrumented for neural collapse and the Neural Feature Ansatz.

    Defaults follow the seed paper's setup: 5 hidden layers of 512 units, no biases, Xavier-uniform initialisation
    with gain 0.1 (small initialisation: the feature-learning regime), Adam with learning rate 5e-5, MSE loss against
    +-1 one-hot targets, batch size 128, 250 epochs (about 2.5 minutes for 4000 MNIST digits on a 2-core CPU; with these
    settings the loss plateaus for ~100 epochs before the network starts to fit).

    Parameters
    ----------
    depth, width : int, default=5, 512
        Hidden Linear+ReLU layers and their width (ignored when ``module`` is given).
    init_gain : float, default=0.1
        Gain of the Xavier-uniform initialisation.
    bias : bool, default=False
    loss : {'mse', 'cross_entropy'}, default='mse'
        MSE against ``2 * onehot - 1`` (the paper) or cross-entropy on the logits.
    lr : float, default=5e-5
        Adam learning rate.
    epochs, batch_size : int, default=250, 128
    measure_every : int or None, default=None
        Record collapse metrics and NFA correlations on the training data at initialisation, every ``measure_every``
        epochs and at the end, as rows with an ``epoch`` column in ``dynamics_``.
    measure_metrics : tuple of str, default=('nc1', 'nc2')
    agop_sample_size : int, default=1000
        Training samples the network AGOP averages over at each snapshot.
    module : torch.nn.Sequential or None
        A network of your own (Linear layers and elementwise activations, output width = number of classes); it is
        copied and trained from its current weights. None builds :func:`build_mlp`.
    standardize : bool, default=False
        Standardise features with the training mean / std before the network.
    device, dtype, random_state, verbose : as in the RFM estimators.

    Attributes
    ----------
    network_ : the trained ``torch.nn.Sequential`` (on ``device_``).
    initial_state_ : its ``state_dict`` at initialisation (CPU copies).
    history_ : list of dicts (epoch, train_loss, train_accuracy, seconds).
    dynamics_ : :class:`~drfm.collapse.CollapseReport` with per-epoch rows (``measure_every`` set), else empty.
    classes_, n_features_in_, device_.
    """

    _parameter_constraints = {
        "depth": [Interval("int", 1, None, closed="left")],
        "width": [Interval("int", 1, None, closed="left")],
        "init_gain": [Interval("float", 0, None, closed="neither")],
        "bias": [BOOL],
        "loss": [Options("mse", "cross_entropy")],
        "lr": [Interval("float", 0, None, closed="neither")],
        "epochs": [Interval("int", 0, None, closed="left")],
        "batch_size": [Interval("int", 1, None, closed="left")],
        "measure_every": [Interval("int", 1, None, closed="left"), NoneOK],
        "measure_metrics": [InstanceOf(tuple, list, name="a tuple of metric names")],
        "agop_sample_size": [Interval("int", 1, None, closed="left")],
        "module": [InstanceOf(nn.Sequential, name="a torch.nn.Sequential"), NoneOK],
        "standardize": [BOOL],
        "device": [DeviceString()],
        "dtype": [Options("float32", "float64")],
        "random_state": RANDOM_STATE,
        "verbose": [BOOL, Interval("int", 0, None, closed="left")],
    }

    def __init__(self, depth=5, width=512, *, init_gain=0.1, bias=False, loss="mse", lr=5e-5, epochs=250,
                 batch_size=128, measure_every=None, measure_metrics=("nc1", "nc2"), agop_sample_size=1000,
                 module=None, standardize=False, device="auto", dtype="float32", random_state=None, verbose=False):
        self.depth = depth
        self.width = width
        self.init_gain = init_gain
        self.bias = bias
        self.loss = loss
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.measure_every = measure_every
        self.measure_metrics = measure_metrics
        self.agop_sample_size = agop_sample_size
        self.module = module
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # -- helpers
    def _prepare(self, X):
        """Validated, standardised float64 features for the fitted network."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return (X - self.mean_) / self.scale_

    def _snapshot(self, X, y, epoch, gen):
        mlp_collapse_report(self.network_, X, y, metrics=tuple(self.measure_metrics), epoch=epoch,
                            report=self.dynamics_)
        nfa_report(self.network_, X, epoch=epoch, report=self.dynamics_, initial=self.initial_state_,
                   sample_size=self.agop_sample_size, generator=gen)

    def fit(self, X, y):
        """Train the network (deterministic under ``random_state``)."""
        validate_params(self)
        unknown = [m for m in self.measure_metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"The 'measure_metrics' parameter of {type(self).__name__} names unknown metrics "
                             f"{unknown}; available: {', '.join(METRICS)}")
        X, y = validate_classification_data(self, X, y)
        self.classes_, Y = one_hot_classes(y, type(self).__name__)
        labels = Y.argmax(1)
        device = resolve_device(self.device, type(self).__name__)
        self.device_ = str(device)
        dtype = resolve_dtype(self.dtype)
        gen = make_generator(self.random_state)
        # snapshots draw their AGOP subsamples from their own generator: measuring does not change the training
        snap_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        self.mean_, self.scale_ = standardization(X, self.standardize)
        Xs = (X - self.mean_) / self.scale_
        K = len(self.classes_)
        if self.module is not None:
            net = copy.deepcopy(self.module).cpu()
            blocks = layer_blocks(net)
            if blocks[0].linear.in_features != X.shape[1] or blocks[-1].linear.out_features != K:
                raise ValueError(
                    f"The 'module' parameter of {type(self).__name__} maps {blocks[0].linear.in_features} inputs to "
                    f"{blocks[-1].linear.out_features} outputs, but the data have {X.shape[1]} features and {K} "
                    f"classes")
        else:
            net = build_mlp(X.shape[1], K, depth=self.depth, width=self.width, init_gain=self.init_gain,
                            bias=self.bias, generator=gen)
        self.initial_state_ = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net = net.to(device=device, dtype=dtype)
        self.network_ = net
        x = to_tensor(Xs, dtype, device)
        if self.loss == "mse":
            target = to_tensor(2.0 * Y - 1.0, dtype, device)
            loss_fn = nn.MSELoss()
        else:
            target = torch.as_tensor(labels, device=device)
            loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        self.history_ = []
        self.dynamics_ = CollapseReport(meta={"model": "mlp", "n_samples": len(y)})
        measure = self.measure_every is not None
        if measure:
            self._snapshot(Xs, y, 0, snap_gen)
        n = x.shape[0]
        bar = tqdm(range(1, self.epochs + 1), desc=type(self).__name__, disable=not self.verbose, unit="epoch")
        for epoch in bar:
            t0 = time.perf_counter()
            net.train()
            perm = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for s in range(0, n, self.batch_size):
                idx = perm[s: s + self.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(x[idx]), target[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            train_loss = total / n
            if not np.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); lower 'lr'")
            with torch.no_grad(), _EvalMode(net):
                acc = float((net(x).argmax(1).cpu().numpy() == labels).mean())
            self.history_.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": acc,
                                  "seconds": time.perf_counter() - t0})
            bar.set_postfix(loss=f"{train_loss:.3g}", acc=f"{acc:.3f}")
            if measure and (epoch % self.measure_every == 0 or epoch == self.epochs):
                self._snapshot(Xs, y, epoch, snap_gen)
        net.eval()
        return self

    def decision_function(self, X):
        """Network outputs (n, n_classes); (n,) = output[1] - output[0] for two classes."""
        X = self._prepare(X)
        x = _input_tensor(self.network_, X)
        with torch.no_grad(), _EvalMode(self.network_):
            out = torch.cat([self.network_(x[s: s + 8192]) for s in range(0, x.shape[0], 8192)]).double().cpu()
        out = out.numpy()
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def predict(self, X):
        out = self.decision_function(X)
        idx = (out > 0).astype(int) if out.ndim == 1 else out.argmax(1)
        return self.classes_[idx]

    def layer_features(self, X):
        """Per Linear layer ``{"input", "linear", "nonlinear"}`` features, as in Deep RFM (see :func:`layer_features`)."""
        return layer_features(self, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


# ---------------------------------------------------------------------------------------------------------------------
# side by side
def compare(X_train, y_train, X_test, y_test, *, depth: int = 5, mlp_params: dict | None = None,
            deep_params: dict | None = None, metrics=("nc1", "nc2"), measure_every: int | None = None,
            random_state=0, verbose=False) -> CollapseReport:
    """Train an MLP with ``depth`` hidden layers and a Deep RFM of depth ``depth`` on the same data; one report with
    both models' per-layer, per-stage collapse rows, the MLP's NFA rows (trained and at initialisation), the MLP's
    per-epoch rows (``measure_every``), and test accuracy / seconds in ``meta``."""
    from .collapse import collapse_report
    from .deep import DeepRFMClassifier

    mlp = TorchMLPClassifier(depth, **{"random_state": random_state, "verbose": verbose,
                                       "measure_every": measure_every, **(mlp_params or {})})
    deep = DeepRFMClassifier(depth, **{"random_state": random_state, "verbose": verbose, **(deep_params or {})})
    t0 = time.perf_counter()
    deep.fit(X_train, y_train)
    deep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mlp.fit(X_train, y_train)
    mlp_s = time.perf_counter() - t0
    report = collapse_report(deep, X_train, y_train, metrics=metrics, model_name="deep_rfm")
    report = report + mlp_collapse_report(mlp, X_train, y_train, metrics=metrics)
    gen = make_generator(random_state)
    report = report + nfa_report(mlp, X_train, sample_size=mlp.agop_sample_size, generator=gen)
    init_net = copy.deepcopy(mlp.network_)
    init_net.load_state_dict(mlp.initial_state_)
    init_rows = nfa_report(init_net, mlp._prepare(X_train), sample_size=mlp.agop_sample_size, generator=gen)
    for r in init_rows.rows:
        r["model"] = "mlp_init"
    report = report + init_rows + mlp.dynamics_
    report.meta = {
        "depth": depth, "n_train": len(y_train), "n_test": len(y_test),
        "deep_rfm": {"test_accuracy": float(deep.score(X_test, y_test)), "fit_seconds": deep_s,
                     "params": {k: v for k, v in deep.get_params().items() if k != "verbose"}},
        "mlp": {"test_accuracy": float(mlp.score(X_test, y_test)), "fit_seconds": mlp_s,
                "train_accuracy": mlp.history_[-1]["train_accuracy"] if mlp.history_ else None,
                "final_train_loss": mlp.history_[-1]["train_loss"] if mlp.history_ else None,
                "params": {k: v for k, v in mlp.get_params().items() if k not in ("verbose", "module")}},
    }
    return report


def comparison_table(report: CollapseReport, metric: str = "nc1") -> str:
    """Markdown: per layer, ``metric`` at each stage for Deep RFM and the MLP, the change of log10 ``metric`` in each
    model's linear and nonlinear stage (negative = collapse), and the MLP's NFA correlation corr(W^T W, AGOP^{1/2})
    (trained; with the initial weights subtracted; at initialisation)."""
    def by(model, stage, layer, m=metric):
        for r in report.rows:
            if (r["model"], r["stage"], r["layer"], r["metric"]) == (model, stage, layer, m) and "epoch" not in r:
                return r["value"]
        return None

    shares = {(s["model"], s["layer"]): s for s in report.linear_share(metric)}
    layers = sorted({r["layer"] for r in report.rows if r["model"] in ("deep_rfm", "mlp") and "epoch" not in r})
    fmt = lambda v: "" if v is None else f"{v:.3g}"  # noqa: E731
    head = ("| layer | RFM input | RFM linear | RFM nonlinear | RFM Δlog10 lin / nonlin | MLP input | MLP linear (SVᵀh) | "
            "MLP nonlinear | MLP Δlog10 lin / nonlin | NFA corr(WᵀW, AGOP^½) | NFA (W−W₀) | NFA at init |")
    lines = [head, "|---" * 12 + "|"]
    for layer in layers:
        cells = [str(layer)]
        for model in ("deep_rfm", "mlp"):
            cells += [fmt(by(model, s, layer)) for s in ("input", "linear", "nonlinear")]
            sh = shares.get((model, layer))
            cells.append("" if sh is None else
                         f"{-sh['linear_log10_reduction']:+.2f} / {-sh['nonlinear_log10_reduction']:+.2f}")
        cells += [fmt(by("mlp", "weights", layer, "nfa_sqrt")), fmt(by("mlp", "weights", layer, "nfa_sqrt_delta")),
                  fmt(by("mlp_init", "weights", layer, "nfa_sqrt"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
