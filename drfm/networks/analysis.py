"""Analysis of a trained network -- any ``torch.nn.Sequential`` of Linear layers and elementwise activations: the SVD
split of each layer, the network AGOP and the Neural Feature Ansatz.

A fitted model can stand in for its network: every function accepts a ``torch.nn.Sequential`` or any object with a
``network_view(X)`` method returning ``(network, X in the network's input space, initial state_dict or None)``
(:class:`~drfm.mlp.TorchMLPClassifier` has one: it standardises X as in training).

For a layer ``h_{l+1} = act(W_l h_l + b_l)`` with ``W_l = U S V^T`` three stages are measured on the training set::

    "input"      h_l
    "linear"     S V^T h_l      (the right singular structure; the rotation U changes no trace ratio, so NC1 of this
                                  stage equals NC1 of W_l h_l)
    "nonlinear"  act(W_l h_l + b_l)   (absent for a Linear layer with no activation after it, e.g. the output layer)
    "agop"       AGOP_l^{1/2} h_l     (asked for: ``agop_stage=True``; the seed paper's network analysis: the features
                                       mapped by the square root of the network's AGOP with respect to h_l -- by the
                                       NFA, close to the linear stage where W_l^T W_l tracks AGOP_l^{1/2})

exactly as ``X_l``, ``X_l M_l^{1/2}`` and ``Phi_l(...)`` in Deep RFM, so the rows of both models concatenate in one
:class:`~drfm.collapse.CollapseReport`.

The AGOP of the network with respect to the input of its ``l``-th Linear layer is ``(1/N) sum_i J_i^T J_i`` with
``J_i`` the Jacobian of the network output with respect to ``h_l`` at sample ``i`` (``torch.func.vmap`` over
``torch.func.jacrev``, blocked over samples). The Neural Feature Ansatz says ``W_l^T W_l`` is proportional to
``AGOP_l^{1/2}``; it is measured by the Pearson correlation of the flattened matrices.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from kernels.linalg import psd_power

from ..collapse.metrics import feature_matrix_sparsity
from ..collapse.report import CollapseReport, check_metrics, stage_report

__all__ = ["sparsity_report", 
    "ACTIVATIONS",
    "NFA_METRICS",
    "build_mlp",
    "layer_blocks",
    "iter_layer_features",
    "layer_features",
    "mlp_collapse_report",
    "network_agop",
    "network_view",
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
              generator: torch.Generator | None = None, readout_init: str = "xavier") -> nn.Sequential:
    """``depth`` hidden Linear+ReLU layers of ``width`` units and a Linear output layer, Xavier-uniform initialised
    with gain ``init_gain`` (drawn from ``generator`` on the CPU; biases, if any, start at zero; torch's global RNG is
    not used). ``readout_init="pytorch"``: the output layer gets PyTorch's default ``nn.Linear`` initialisation
    instead, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for its weights and bias (as the seed paper's code)."""
    if readout_init not in ("xavier", "pytorch"):
        raise ValueError(f"readout_init must be 'xavier' or 'pytorch', got {readout_init!r}")
    sizes = [d_in] + [width] * depth + [n_out]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.utils.skip_init(nn.Linear, a, b, bias=bias)  # no default init: torch's global RNG untouched
        readout_default = readout_init == "pytorch" and i == depth
        bound = 1.0 / np.sqrt(a) if readout_default else init_gain * np.sqrt(6.0 / (a + b))
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=generator)
            if bias:
                if readout_default:
                    lin.bias.uniform_(-bound, bound, generator=generator)
                else:
                    lin.bias.zero_()
        mods.append(lin)
        if i < depth:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def network_view(model, X):
    """``(network, X, initial state or None)`` for a Sequential or a fitted model with a ``network_view`` method."""
    view = getattr(model, "network_view", None)
    if callable(view):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(model)  # NotFittedError, not an AttributeError from inside
        return view(X)
    layer_blocks(model)
    return model, X, None


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
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
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


def layer_features(model, X, *, batch_size: int = 4096, agop_stage: bool = False,
                   agop_sample_size: int | None = 1000, generator: torch.Generator | None = None) -> list[dict]:
    """Per Linear layer: ``{"input": h_l, "linear": S V^T h_l (as rows h_l V S), "nonlinear": act(W h_l + b)}``
    as float64 numpy arrays (``"nonlinear"`` only where an activation follows the layer).

    ``model``: a ``torch.nn.Sequential`` (``X`` in its input space) or a fitted model with ``network_view`` (e.g. a
    TorchMLPClassifier: ``X`` are the raw features, its standardisation is applied). All layers at once: for many
    rows and layers :func:`iter_layer_features` holds one layer at a time. ``agop_stage=True`` adds ``"agop"``:
    ``h_l AGOP_l^{1/2}`` (rows), the AGOP over ``agop_sample_size`` random rows (None: all; drawn with ``generator``).
    """
    return list(iter_layer_features(model, X, batch_size=batch_size, agop_stage=agop_stage,
                                    agop_sample_size=agop_sample_size, generator=generator))


def iter_layer_features(model, X, *, batch_size: int = 4096, agop_stage: bool = False,
                        agop_sample_size: int | None = 1000, generator: torch.Generator | None = None):
    """:func:`layer_features` one layer at a time (a generator): only the current layer's stages and its output are
    held, so a report over many layers and rows needs one layer's memory."""
    if agop_stage:
        _check_sample_size(agop_sample_size)
    raw = X
    net, X, _ = network_view(model, X)
    blocks = layer_blocks(net)
    x = _input_tensor(net, X)
    mods = list(net)
    with torch.no_grad(), _EvalMode(net):
        h = []
        for s in range(0, x.shape[0], batch_size):
            hb = x[s: s + batch_size]
            for m in mods[: blocks[0].start]:
                hb = m(hb)
            h.append(hb)
    for blk in blocks:  # no grad mode or eval mode is held across a yield (the caller runs in its own modes)
        st = {"input": [], "linear": [], "nonlinear": []}
        with torch.no_grad(), _EvalMode(net):
            for i, hb in enumerate(h):
                lin, out = _split_block(blk, mods, hb)
                st["input"].append(hb.double().cpu())
                st["linear"].append(lin.cpu())
                if blk.has_activation:
                    st["nonlinear"].append(out.double().cpu())
                h[i] = out
        stages = {k: torch.cat(v).numpy() for k, v in st.items() if v}
        if agop_stage:
            agop = network_agop(model, raw, blk.index, sample_size=agop_sample_size, generator=generator)
            stages["agop"] = stages["input"] @ psd_sqrt(agop)
        yield stages


def mlp_collapse_report(model, X, y, *, metrics=("nc1", "nc2"), model_name: str = "mlp", epoch: int | None = None,
                        report: CollapseReport | None = None, agop_stage: bool = False,
                        agop_sample_size: int | None = 1000, generator: torch.Generator | None = None
                        ) -> CollapseReport:
    """Collapse metrics per Linear layer and stage (input / linear = S V^T h / nonlinear, and with ``agop_stage``
    the AGOP-projected h AGOP^{1/2}), rows as in Deep RFM's :func:`~drfm.collapse.collapse_report`; with ``epoch``
    every row carries it (training dynamics)."""
    metrics = check_metrics(metrics)  # before the feature pass
    return stage_report(iter_layer_features(model, X, agop_stage=agop_stage, agop_sample_size=agop_sample_size,
                                            generator=generator),
                        y, metrics=metrics, model_name=model_name, epoch=epoch, report=report)


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

    net, X, _ = network_view(model, X)
    blocks = layer_blocks(net)
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be in [0, {len(blocks) - 1}] (the network has {len(blocks)} Linear layers), "
                         f"got {layer}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = _input_tensor(net, X)
    _check_sample_size(sample_size)
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


def _check_sample_size(sample_size):
    if sample_size is not None and (isinstance(sample_size, (bool, np.bool_))
                                    or not isinstance(sample_size, (int, np.integer)) or sample_size < 1):
        raise ValueError(f"sample_size must be a positive int or None, got {sample_size!r}")


def _initial_weight(state, block) -> np.ndarray:
    """The initial weight of ``block`` from a state dict, checked against the network's weight."""
    key = f"{block.start}.weight"
    if key not in state:
        raise ValueError(f"initial has no weight for Linear layer {block.index} (state_dict key {key!r}); pass the "
                         "network at initialisation or its state_dict")
    w = state[key].detach().double().cpu().numpy()
    if w.shape != tuple(block.linear.weight.shape):
        raise ValueError(f"initial weight of Linear layer {block.index} has shape {w.shape}, but the network's is "
                         f"{tuple(block.linear.weight.shape)}")
    return w


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
    """Symmetric square root of a symmetric PSD matrix (:func:`kernels.linalg.psd_power` with power 1/2)."""
    return psd_power(torch.as_tensor(np.asarray(A, dtype=np.float64)), 0.5).numpy()


def nfa_correlations(model, X, *, initial=None, layers=None, batch_size: int = 256, sample_size: int | None = None,
                     generator=None) -> list[dict]:
    """Per Linear layer: Pearson correlations of ``W^T W`` with ``AGOP^{1/2}`` (``nfa_sqrt``) and with ``AGOP``
    (``nfa_agop``); with ``initial`` (the network at initialisation, or its ``state_dict``) also of
    ``(W - W_0)^T (W - W_0)`` (``nfa_sqrt_delta``, ``nfa_agop_delta``)."""
    net, X, own_initial = network_view(model, X)
    if initial is None:
        initial = own_initial
    blocks = layer_blocks(net)
    init_weights = None
    if initial is not None:
        state = initial.state_dict() if isinstance(initial, nn.Module) else initial
        init_weights = [_initial_weight(state, b) for b in blocks]
    if layers is not None and not all(isinstance(i, (int, np.integer)) and 0 <= i < len(blocks) for i in layers):
        raise ValueError(f"layers must be indices in [0, {len(blocks) - 1}] (the network has {len(blocks)} Linear "
                         f"layers), got {list(layers)}")
    x = _input_tensor(net, X)
    _check_sample_size(sample_size)
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


def sparsity_report(model, *, model_name: str, report: CollapseReport | None = None) -> CollapseReport:
    """Rows (stage ``"weights"``, metrics ``m_effective_rank`` and ``m_input_share``) of every layer's feature matrix:
    a Deep RFM's ``M_l``, or ``W^T W`` of a trained network's hidden layers (:func:`feature_matrix_sparsity`)."""
    report = report if report is not None else CollapseReport(meta={"model": model_name})
    if hasattr(model, "layers_"):
        mats = [layer.M for layer in model.layers_]
    else:
        net = getattr(model, "network_", model)
        mats = [b.linear.weight.detach().double().cpu().numpy() for b in layer_blocks(net) if b.has_activation]
        mats = [W.T @ W for W in mats]
    for layer, M in enumerate(mats):
        sp = feature_matrix_sparsity(M)
        report.add(model=model_name, layer=layer, stage="weights", metric="m_effective_rank",
                   value=sp["effective_rank"], n_samples=0)
        report.add(model=model_name, layer=layer, stage="weights", metric="m_input_share", value=sp["input_share"],
                   n_samples=0)
    return report
