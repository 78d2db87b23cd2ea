"""The trained-network estimator: a ReLU MLP trained with torch, instrumented for neural collapse and the Neural
Feature Ansatz (the analysis itself is :mod:`drfm.networks.analysis`, for any Sequential)."""
from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from tqdm.auto import tqdm

from kernels.memory import available_memory, format_bytes

from ._backend import make_generator, resolve_device, resolve_dtype, standardization, to_tensor
from .networks.backbones import WithBackbone, backbone_features, build_backbone, check_image_shape
from ._params import BOOL, RANDOM_STATE, DeviceString, InstanceOf, Interval, NoneOK, Options, validate_params
from ._threads import with_threads
from ._targets import (DEFAULT_TEMPERATURE, DTYPES, decision_values, one_hot_classes, predict_labels, softmax_proba,
                       validate_classification_data)
from .collapse import METRICS, CollapseReport
from .networks.analysis import (_EvalMode, _input_tensor, build_mlp, iter_layer_features, layer_blocks, layer_features,
                   mlp_collapse_report, nfa_report)

__all__ = ["TorchMLPClassifier", "TrainingDivergedError"]


class TrainingDivergedError(FloatingPointError, ValueError):
    """Training produced a non-finite loss (a ``FloatingPointError``, and a ``ValueError`` for bad settings)."""


def _network_bytes(sizes, *, bias, itemsize) -> int:
    """Weights, gradients and Adam's two moments in the working dtype, plus the float32 initial copy."""
    params = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))
    return params * (4 * itemsize + 4)


def _layer_rng_seed(gen: torch.Generator) -> int:
    """A seed for the random layers (Dropout) derived from the fit's generator without drawing from it (so the
    weights and batch order are the same with and without such layers)."""
    return (gen.initial_seed() * 2654435761 + 97) % 2**63


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
    readout_init : {'xavier', 'pytorch'}, default='xavier'
        The output layer's initialisation: Xavier with ``init_gain`` like the hidden layers, or PyTorch's default
        ``nn.Linear`` initialisation (the seed paper's code).
    reset_adam : bool, default=False
        Create a fresh Adam optimiser at every epoch (its moment estimates start from zero each epoch), as the seed
        paper's code does.
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
        copied and trained from its current weights. None builds :func:`build_mlp`. With a backbone it is the head
        (its input width = the backbone's features).
    backbone : {'resnet18', 'vgg11'}, torch.nn.Module or None, default=None
        A convolutional feature extractor in front of the MLP (the seed paper's ResNet-18 / VGG-11 + MLP head
        variant), trained end to end with it: torchvision's architecture with random weights (torchvision must be
        installed; an ``ImportError`` says how otherwise), its first convolution taking the images' channels, its
        classifier removed, the last feature maps averaged to 512 features (see :mod:`drfm.networks.backbones`); or
        any module mapping ``(n, C, H, W)`` to ``(n, p)``. ``network_`` and every analysis (collapse stages, AGOP, NFA)
        are the MLP head's, on the backbone's features. Such a model cannot be saved in drfm's model format (save
        ``backbone_`` and ``network_`` with torch).
    image_shape : tuple (C, H, W) or None
        How each row is read as an image (required with ``backbone``; MNIST: ``(1, 28, 28)``).
    standardize : bool, default=False
        Standardise features with the training mean / std before the network.
    device, dtype, n_threads, random_state, verbose : as in the RFM estimators.

    Attributes
    ----------
    network_ : the trained ``torch.nn.Sequential`` (on ``device_``); with a backbone, the MLP head.
    backbone_ : the trained backbone module, or None.
    initial_state_ : its ``state_dict`` at initialisation (CPU copies).
    history_ : list of dicts (epoch, train_loss, train_accuracy, seconds).
    dynamics_ : :class:`~drfm.collapse.CollapseReport` with per-epoch rows (``measure_every`` set), else empty.
    at_chance_ : whether training ended no better than predicting the largest class (+ 0.05 accuracy); a
        ``ConvergenceWarning`` says so.
    classes_, n_features_in_, device_.
    """

    _parameter_constraints = {
        "depth": [Interval("int", 1, None, closed="left")],
        "width": [Interval("int", 1, None, closed="left")],
        "init_gain": [Interval("float", 0, None, closed="neither")],
        "bias": [BOOL],
        "readout_init": [Options("xavier", "pytorch")],
        "reset_adam": [BOOL],
        "loss": [Options("mse", "cross_entropy")],
        "lr": [Interval("float", 0, None, closed="neither")],
        "epochs": [Interval("int", 0, None, closed="left")],
        "batch_size": [Interval("int", 1, None, closed="left")],
        "measure_every": [Interval("int", 1, None, closed="left"), NoneOK],
        "measure_metrics": [InstanceOf(tuple, list, name="a tuple of metric names")],
        "agop_sample_size": [Interval("int", 1, None, closed="left")],
        "module": [InstanceOf(nn.Sequential, name="a torch.nn.Sequential"), NoneOK],
        "backbone": [Options("resnet18", "vgg11"), InstanceOf(nn.Module, name="a torch.nn.Module"), NoneOK],
        "image_shape": [InstanceOf(tuple, list, name="a tuple (C, H, W)"), NoneOK],
        "standardize": [BOOL],
        "device": [DeviceString()],
        "dtype": [Options("float32", "float64")],
        "n_threads": [Interval("int", 1, None, closed="left"), Options("auto"), NoneOK],
        "random_state": RANDOM_STATE,
        "verbose": [BOOL, Interval("int", 0, None, closed="left")],
    }

    def __init__(self, depth=5, width=512, *, init_gain=0.1, bias=False, readout_init="xavier", reset_adam=False,
                 loss="mse", lr=5e-5, epochs=250,
                 batch_size=128, measure_every=None, measure_metrics=("nc1", "nc2"), agop_sample_size=1000,
                 module=None, backbone=None, image_shape=None, standardize=False, device="auto", dtype="float32",
                 n_threads="auto", random_state=None, verbose=False):
        self.depth = depth
        self.width = width
        self.init_gain = init_gain
        self.readout_init = readout_init
        self.reset_adam = reset_adam
        self.bias = bias
        self.loss = loss
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.measure_every = measure_every
        self.measure_metrics = measure_metrics
        self.agop_sample_size = agop_sample_size
        self.module = module
        self.backbone = backbone
        self.image_shape = image_shape
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def paper(cls, **overrides) -> "TorchMLPClassifier":
        """The seed paper's training as its code runs it (a named preset): 5 hidden ReLU layers of 512 units without
        biases, Xavier gain 0.1 on the hidden layers and PyTorch's default initialisation on the readout layer, MSE
        against +-1 one-hot targets, Adam with learning rate 5e-5 re-created at every epoch, batch size 128, 250
        epochs, inputs standardised with the training mean / std. ``overrides`` replace any of these (e.g.
        ``epochs=50``, ``measure_every=10`` for the training panels)."""
        preset = dict(depth=5, width=512, init_gain=0.1, bias=False, readout_init="pytorch", reset_adam=True,
                      loss="mse", lr=5e-5, epochs=250, batch_size=128, standardize=True)
        return cls(**{**preset, **overrides})

    # -- helpers
    def _prepare(self, X):
        """Validated, standardised float64 features for the fitted network."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=DTYPES)
        return (X - self.mean_) / self.scale_

    def network_view(self, X):
        """``(network_, its inputs, initial_state_)``: what :mod:`drfm.networks.analysis` analyses -- X standardised
        as in training, or with a backbone the backbone's features of it (float64)."""
        return self.network_, self._head_inputs(self._prepare(X)), self.initial_state_

    def _head_inputs(self, Xs):
        """The MLP's inputs for standardised rows: the rows themselves, or the backbone's features of them."""
        if getattr(self, "backbone_", None) is None:
            return Xs
        p = next(self.backbone_.parameters())
        x = to_tensor(Xs, p.dtype, p.device)
        return backbone_features(self.backbone_, self.image_shape_, x).double().cpu().numpy()

    def __getstate__(self):
        """Pickled state with every tensor on the CPU (a model fitted on a GPU loads on a machine without one)."""
        state = self.__dict__.copy()
        for key in ("network_", "module", "backbone_", "backbone"):
            if isinstance(state.get(key), nn.Module):
                state[key] = copy.deepcopy(state[key]).cpu()
        if state.get("initial_state_") is not None:
            state["initial_state_"] = {k: v.detach().cpu() for k, v in state["initial_state_"].items()}
        return state

    def _move_to(self, device: torch.device):
        """Run predictions on ``device`` (used when a saved model is loaded)."""
        self.device_ = str(device)
        if hasattr(self, "network_"):
            self.network_ = self.network_.to(device)
        if getattr(self, "backbone_", None) is not None:
            self.backbone_ = self.backbone_.to(device)
        return self

    def _snapshot(self, X, y, epoch, gen):
        X = self._head_inputs(X)
        mlp_collapse_report(self.network_, X, y, metrics=tuple(self.measure_metrics), epoch=epoch,
                            report=self.dynamics_)
        nfa_report(self.network_, X, epoch=epoch, report=self.dynamics_, initial=self.initial_state_,
                   sample_size=self.agop_sample_size, generator=gen)

    @with_threads
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
        self.backbone_, self.image_shape_, d_in, extra = None, None, X.shape[1], 0
        if self.backbone is not None:  # the images' shape and the backbone are checked before any training
            self.image_shape_ = check_image_shape(self.image_shape, X.shape[1], type(self).__name__)
            self.backbone_, d_in = build_backbone(self.backbone, self.image_shape_, gen, type(self).__name__)
            extra = sum(p.numel() for p in self.backbone_.parameters())
        if self.module is not None:
            net = copy.deepcopy(self.module).cpu()
            blocks = layer_blocks(net)
            if blocks[0].linear.in_features != d_in or blocks[-1].linear.out_features != K:
                inputs = "the backbone gives" if self.backbone is not None else "the data have"
                raise ValueError(
                    f"The 'module' parameter of {type(self).__name__} maps {blocks[0].linear.in_features} inputs to "
                    f"{blocks[-1].linear.out_features} outputs, but {inputs} {d_in} features and there are {K} "
                    f"classes")
        else:
            self._check_memory([d_in] + [self.width] * self.depth + [K], dtype, device, len(y), extra)
            net = build_mlp(d_in, K, depth=self.depth, width=self.width, init_gain=self.init_gain,
                            readout_init=self.readout_init,
                            bias=self.bias, generator=gen)
        self.initial_state_ = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net = net.to(device=device, dtype=dtype)
        self.network_ = net
        if self.backbone_ is not None:  # trained end to end; network_ (the head) is what is analysed
            self.backbone_ = self.backbone_.to(device=device, dtype=dtype)
            net = WithBackbone(self.backbone_, self.network_, self.image_shape_)
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
        # Dropout and other random layers draw from torch's global RNG: train inside a fork of it, seeded from
        # random_state (the caller's global RNG state is restored afterwards)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.default_generator.manual_seed(_layer_rng_seed(gen))
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(_layer_rng_seed(gen))
            self._train(net, x, target, labels, loss_fn, opt, gen, Xs, y, snap_gen, measure)
        if measure:  # the loss beside the per-epoch collapse rows (the training panels)
            for h in self.history_:
                if h["epoch"] % self.measure_every == 0 or h["epoch"] == self.epochs:
                    self.dynamics_.add(model="mlp", layer=self.depth if self.module is None else 0, stage="final",
                                       metric="train_loss", value=h["train_loss"], n_samples=len(y),
                                       epoch=h["epoch"])
        net.eval()
        self._check_learned(labels)
        return self

    def _check_learned(self, labels):
        """``at_chance_``: whether training ended no better than predicting the largest class (+ 0.05); warns."""
        chance = float(np.bincount(labels).max() / len(labels))
        acc = self.history_[-1]["train_accuracy"] if self.history_ else None
        self.at_chance_ = acc is not None and acc <= chance + 0.05
        if self.at_chance_:
            warnings.warn(
                f"{type(self).__name__} ended at chance level: train accuracy {acc:.3f} after {self.epochs} epochs, "
                f"while always predicting the largest class scores {chance:.3f}. The network did not learn: with a "
                f"small initialisation (init_gain={self.init_gain:g}) and lr={self.lr:g}, small data need more epochs "
                "or a larger lr.", ConvergenceWarning, stacklevel=3)

    def _check_memory(self, sizes, dtype, device, n, backbone_params=0):
        """Refuse a network whose weights, gradients and optimiser state do not fit the memory available (a
        backbone's parameters counted likewise; its activations, which depend on the batch, are not)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = (_network_bytes(sizes, bias=self.bias, itemsize=itemsize) + backbone_params * (4 * itemsize + 4)
                + 4 * n * max(sizes) * itemsize)
        have = available_memory(device)
        if need > have:
            raise ValueError(
                f"The 'width' parameter of {type(self).__name__} (width={self.width}, depth={self.depth}) gives a "
                f"network that needs {format_bytes(need)} for its weights, gradients and Adam state, but "
                f"{format_bytes(have)} are available on {device}. Use a smaller width or depth."
            )

    def _train(self, net, x, target, labels, loss_fn, opt, gen, Xs, y, snap_gen, measure):
        n = x.shape[0]
        device = x.device
        bar = tqdm(range(1, self.epochs + 1), desc=type(self).__name__, disable=not self.verbose, unit="epoch")
        for epoch in bar:
            t0 = time.perf_counter()
            if self.reset_adam and epoch > 1:  # the seed paper's code creates a new Adam every epoch
                opt = torch.optim.Adam(net.parameters(), lr=self.lr)
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
                raise TrainingDivergedError(f"training diverged at epoch {epoch} (loss {train_loss}); lower 'lr'")
            with torch.no_grad(), _EvalMode(net):
                out = net(x) if self.backbone_ is None else torch.cat(
                    [net(x[s: s + 512]) for s in range(0, n, 512)])  # a CNN's activations: bounded batches
                acc = float((out.argmax(1).cpu().numpy() == labels).mean())
            self.history_.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": acc,
                                  "seconds": time.perf_counter() - t0})
            bar.set_postfix(loss=f"{train_loss:.3g}", acc=f"{acc:.3f}")
            if measure and (epoch % self.measure_every == 0 or epoch == self.epochs):
                self._snapshot(Xs, y, epoch, snap_gen)

    @with_threads
    def _outputs(self, X) -> np.ndarray:
        X = self._head_inputs(self._prepare(X))
        x = _input_tensor(self.network_, X)
        with torch.no_grad(), _EvalMode(self.network_):
            out = torch.cat([self.network_(x[s: s + 8192]) for s in range(0, x.shape[0], 8192)]).double().cpu()
        return out.numpy()

    def decision_function(self, X):
        """Network outputs (n, n_classes); (n,) = output[1] - output[0] for two classes."""
        return decision_values(self._outputs(X))

    def predict(self, X):
        out = self._outputs(X)  # first: it checks that the model is fitted
        return predict_labels(self.classes_, out)

    def predict_proba(self, X):
        """Class probabilities: with ``loss='cross_entropy'`` the softmax of the logits (the model that loss fits);
        with ``loss='mse'`` (targets +-1) ``softmax(outputs / 0.2)``, 0.1 per unit of the targets' range as for Deep
        RFM -- rows sum to 1 and follow the outputs' order, not calibrated (use ``CalibratedClassifierCV``)."""
        temperature = 1.0 if self.loss == "cross_entropy" else 2.0 * DEFAULT_TEMPERATURE
        return softmax_proba(self._outputs(X), temperature)

    @with_threads
    def layer_features(self, X):
        """Per Linear layer ``{"input", "linear", "nonlinear"}`` features, as in Deep RFM (see :func:`layer_features`)."""
        return layer_features(self, X)

    def iter_layer_features(self, X, **kw):
        """:meth:`layer_features` one layer at a time (see :func:`drfm.networks.analysis.iter_layer_features`; ``kw``:
        ``agop_stage``, ``agop_sample_size``, ``generator``)."""
        return iter_layer_features(self, X, **kw)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
