"""What the ranks of a distributed fit agree on before any heavy work, so that N ranks fit the model one process
would fit on all their rows -- or every rank raises the same clear error.

Each function takes the fit's rank group (``comm``); with a single-process :class:`~kernels.distributed.LocalComm`
each is the single-process behaviour (errors propagate as they are, nothing is exchanged).

* :func:`agree_parameters`: every estimator parameter equal on every rank (a difference would make the ranks run
  different collectives and hang);
* :func:`on_every_rank`: a rank's input checks, the outcome agreed (one ``ValueError`` naming the failed rank);
* :func:`agree_encoding`: categorical columns and their categories (the union over the ranks, sorted as one process
  sorts them);
* :func:`agree_data`: feature counts, dtypes, label types, whether validation data are given;
* :func:`one_hot_agreed`: the classes of every rank;
* :func:`standardization_agreed`: the global per-feature mean and scale.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .._backend import standardization
from .._categorical import CategoricalEncoding
from .._targets import label_kinds, one_hot_classes, one_hot_of

__all__ = ["agree_data", "agree_encoding", "agree_parameters", "on_every_rank", "one_hot_agreed",
           "column_spread_agreed", "standardization_agreed"]


def _param_key(value) -> str:
    """A parameter's value as text comparable across processes (a RandomState by its state)."""
    if isinstance(value, np.random.RandomState):
        state = value.get_state()
        return f"RandomState(pos={state[2]}, key={hashlib.sha1(state[1].tobytes()).hexdigest()})"
    return repr(value)


def agree_parameters(comm, estimator, owner: str) -> None:
    """Every parameter of ``estimator`` equal on every rank, or one ValueError naming the first that differs."""
    if comm.world_size == 1:
        return
    mine = {k: _param_key(v) for k, v in estimator.get_params(deep=False).items()}
    everyone = comm.gather_objects(mine)
    for name in sorted(set().union(*everyone)):
        values = [e.get(name, "<missing>") for e in everyone]
        if len(set(values)) > 1:
            detail = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ValueError(f"The {name!r} parameter of {owner} differs between the ranks ({detail}); every rank "
                             "must construct the estimator with the same parameters.")


def on_every_rank(comm, owner: str, fn):
    """``fn()`` (this rank's input checks), its outcome agreed before any heavy work: when any rank's checks raise,
    every rank raises the same ValueError naming that rank (one process: ``fn``'s own error)."""
    if comm.world_size == 1:
        return fn()
    try:
        out, status = fn(), None
    except Exception as exc:  # (any failure of a rank's checks: the others must not wait for it)
        out, status = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    failed = [(r, st) for r, st in enumerate(comm.gather_objects(status)) if st is not None]
    if failed:
        r, st = failed[0]
        raise ValueError(f"{owner} (distributed): rank {r} of {comm.world_size} rejected its data: {st}")
    return out


def _sorted_categories(values: set) -> list:
    try:
        return sorted(values)
    except TypeError:  # mixed types: a stable order by text (as fit_encoding)
        return sorted(values, key=repr)


def agree_encoding(comm, enc: CategoricalEncoding | None, owner: str) -> CategoricalEncoding | None:
    """The categorical encoding of every rank's rows: the same categorical columns on every rank (else one
    ValueError), each with the union of the ranks' categories."""
    if comm.world_size == 1:
        return enc
    everyone = comm.gather_objects(None if enc is None else (enc.state, enc.n_columns))
    columns = [None if e is None else sorted(int(j) for j, _ in e[0]) for e in everyone]
    if len({repr(c) for c in columns}) > 1:
        detail = ", ".join(f"rank {r}: {c or 'none'}" for r, c in enumerate(columns))
        raise ValueError(f"{owner} (distributed): the ranks disagree on which columns are categorical ({detail}); "
                         "give every rank the same column types (or pass categorical_features explicitly).")
    if everyone[0] is None:
        return None
    merged = []
    for j in columns[0]:
        cats = set()
        for state, _ in everyone:
            cats.update(next(c for jj, c in state if int(jj) == j))
        merged.append([j, _sorted_categories(cats)])
    return CategoricalEncoding(merged, everyone[0][1])


def agree_data(comm, owner: str, X, y, dtype: torch.dtype, has_val: bool, classifier: bool) -> None:
    """Feature counts and working dtype equal on every rank, the labels of one type (as one process requires),
    and validation data given on every rank or on none -- else the same ValueError on every rank."""
    if comm.world_size == 1:
        return
    mine = (int(X.shape[1]), str(dtype).replace("torch.", ""), sorted(label_kinds(y)) if classifier else [],
            bool(has_val))
    everyone = comm.gather_objects(mine)
    if len({(d, t) for d, t, _, _ in everyone}) > 1:
        detail = ", ".join(f"rank {r}: {d} features, {t}" for r, (d, t, _, _) in enumerate(everyone))
        raise ValueError(f"{owner} (distributed): the ranks' data disagree ({detail}); every rank must pass the same "
                         "features and dtype")
    kinds = set().union(*[set(k) for _, _, k, _ in everyone])
    if len(kinds) > 1:
        detail = ", ".join(f"rank {r}: {', '.join(k) or 'no rows'}" for r, (_, _, k, _) in enumerate(everyone))
        raise ValueError(f"{owner} (distributed): the ranks' labels are of different types ({detail}); one process "
                         "rejects mixed label types, so must every rank: give every label the same type.")
    given = [v for _, _, _, v in everyone]
    if len(set(given)) > 1:
        ranks = [r for r, v in enumerate(given) if v]
        raise ValueError(f"{owner} (distributed): X_val / y_val were given on rank(s) {ranks} only; pass each rank's "
                         "share of the validation data on every rank (an empty array where a rank has none), or "
                         "none on any.")


def one_hot_agreed(comm, y, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The sorted union of every rank's classes (at least two) and this rank's (n_p, K) one-hot targets."""
    if comm.world_size == 1:
        return one_hot_classes(y, owner)
    everyone = comm.gather_objects(np.unique(y))
    classes = np.unique(np.concatenate([v for v in everyone if len(v)]))
    if len(classes) < 2:
        raise ValueError(f"{owner} needs samples of at least 2 classes over all ranks.")
    return classes, one_hot_of(y, classes)


#: rows per float64 chunk of column_spread_agreed (no float64 copy of the whole input)
SPREAD_CHUNK = 65536


def column_spread_agreed(comm, X: np.ndarray) -> float:
    """The largest column standard deviation over the median one (columns that vary only), over every rank's rows:
    about 1 when the columns share a scale (pixels, generated features), large for a table of prices beside 0/1
    flags; 1.0 when no column varies. Computed in float64 chunks of rows, each column divided by its largest
    magnitude first (no overflow)."""
    X = np.asarray(X)
    n, d = X.shape

    def chunked(fn, init):
        acc = init
        for i in range(0, n, SPREAD_CHUNK):
            acc = fn(acc, X[i : i + SPREAD_CHUNK].astype(np.float64))
        return acc

    top = chunked(lambda a, c: np.maximum(a, c.max(0)), np.full(d, -np.inf))
    low = chunked(lambda a, c: np.minimum(a, c.min(0)), np.full(d, np.inf))
    if comm.world_size > 1:
        every = comm.gather_objects((top, low))
        top, low = np.max([t for t, _ in every], 0), np.min([v for _, v in every], 0)
    varies = top > low
    if not varies.any():
        return 1.0
    peak = np.where(varies, np.maximum(np.abs(top), np.abs(low)), 1.0)
    sums = chunked(lambda a, c: a + np.r_[(c / peak).sum(0), len(c)], np.zeros(d + 1))
    sums = comm.allreduce(torch.as_tensor(sums)).numpy() if comm.world_size > 1 else sums
    mean = sums[:d] / max(sums[d], 1.0)
    sq = chunked(lambda a, c: a + ((c / peak - mean) ** 2).sum(0), np.zeros(d))
    sq = comm.allreduce(torch.as_tensor(sq)).numpy() if comm.world_size > 1 else sq
    std = (np.sqrt(sq / max(sums[d], 1.0)) * peak)[varies]
    std = std[std > 0]
    return float(std.max() / np.median(std)) if std.size else 1.0


def standardization_agreed(comm, X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`drfm._backend.standardization` over every rank's rows: the global per-feature mean and standard
    deviation (constant features keep scale 1), from two all-reduces."""
    if comm.world_size == 1:
        return standardization(X, enabled)
    d = X.shape[1]
    if not enabled:
        return np.zeros(d), np.ones(d)
    X = np.asarray(X, dtype=np.float64)
    stats = comm.allreduce(torch.as_tensor(np.r_[X.sum(0), len(X)], dtype=torch.float64)).numpy()
    mean = stats[:d] / stats[d]
    var = comm.allreduce(torch.as_tensor(((X - mean) ** 2).sum(0), dtype=torch.float64)).numpy() / stats[d]
    scale = np.sqrt(var)
    return mean, np.where(scale > 0, scale, 1.0)
