"""Offline datasets: one registry of names, each generated locally or shipped with an installed package.

Nothing here touches the network. ``load(name, ...)`` returns a :class:`Dataset` with a train/test split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Dataset", "load", "available", "REGISTRY"]


@dataclass
class Dataset:
    name: str
    task: str  # "classification" or "regression"
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., Dataset]
    task: str
    description: str
    default_n_train: int | None
    default_n_test: int | None


REGISTRY: dict[str, _Entry] = {}


def _register(name, task, description, n_train=None, n_test=None):
    def deco(fn):
        REGISTRY[name] = _Entry(fn, task, description, n_train, n_test)
        return fn

    return deco


def _split(X, y, n_train, n_test, rng):
    n = len(X)
    if n_train is None:
        n_train = n - (n_test if n_test is not None else n // 4)
    if n_test is None:
        n_test = n - n_train
    if n_train < 1 or n_test < 0 or n_train + n_test > n:
        raise ValueError(f"n_train={n_train} and n_test={n_test} do not fit a dataset of {n} samples.")
    perm = rng.permutation(n)
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    return X[tr], y[tr], X[te], y[te]


@_register("digits", "classification", "scikit-learn's bundled 8x8 handwritten digits (1797 x 64, 10 classes), pixels / 16")
def _digits(n_train=None, n_test=None, random_state=0, **_):
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data.astype(np.float64) / 16.0
    rng = np.random.default_rng(random_state)
    return _split(X, data.target, n_train, n_test if n_test is not None or n_train is not None else 450, rng)


@_register(
    "lowrank", "regression", "synthetic low-rank target y = x_0 * x_1, x ~ N(0, I_d) (d = 100 by default)",
    n_train=4000, n_test=5000,
)
def _lowrank(n_train=4000, n_test=5000, random_state=0, d=100, **_):
    rng = np.random.default_rng(random_state)
    X = rng.standard_normal((n_train + n_test, d))
    y = X[:, 0] * X[:, 1]
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


@_register(
    "classif10", "classification",
    "scikit-learn make_classification: 10 classes, d = 100, 10 informative features",
    n_train=16000, n_test=4000,
)
def _classif10(n_train=16000, n_test=4000, random_state=0, d=100, **_):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n_train + n_test, n_features=d, n_informative=10, n_classes=10, random_state=random_state
    )
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def available() -> dict[str, str]:
    """Names of the datasets available offline, with a one-line description each."""
    return {name: f"[{e.task}] {e.description}" for name, e in REGISTRY.items()}


def load(name: str, *, n_train: int | None = None, n_test: int | None = None, random_state: int = 0, **kw) -> Dataset:
    """Load a registered dataset by name with a deterministic train/test split."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}; available offline: {', '.join(sorted(REGISTRY))}.")
    entry = REGISTRY[name]
    args = {"random_state": random_state, **kw}
    if n_train is not None or entry.default_n_train is not None:
        args["n_train"] = n_train if n_train is not None else entry.default_n_train
    if n_test is not None or entry.default_n_test is not None:
        args["n_test"] = n_test if n_test is not None else entry.default_n_test
    Xtr, ytr, Xte, yte = entry.loader(**args)
    return Dataset(name, entry.task, Xtr, ytr, Xte, yte, entry.description)
