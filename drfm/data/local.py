"""Image data sets from the standard files on disk: MNIST and Fashion-MNIST (IDX), CIFAR-10 (python batches).

Folders searched, in order: the ``data_home`` argument, ``$DRFM_DATA``, drfm's download folder
(``~/.cache/drfm``, where a torchvision download goes); in each, the set's usual sub-folders (``mnist/``,
``MNIST/raw/`` as torchvision lays it out, ``cifar-10-batches-py/``, ...) and the folder itself. Files are checked
(format, shapes, label range, image and label counts agree) and a missing set is a ``ValueError`` naming every path
searched and how to get the files. CIFAR-10's batches are pickles: they are read with an unpickler that only builds
dicts, lists, bytes and numpy arrays, so a crafted file cannot run code.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["LOCAL_SETS", "find_local", "read_idx", "read_cifar_batch", "load_local", "search_folders",
           "search_roots"]

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

#: name -> (sub-folders to look in, how to get the files)
LOCAL_SETS = {
    "mnist": (("mnist", "MNIST/raw", "MNIST", "."),
              "the four IDX files (train-images-idx3-ubyte.gz, ...) from the MNIST distribution, or torchvision's "
              "datasets.MNIST(root, download=True)"),
    "fashion-mnist": (("fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion_mnist", "."),
                      "the four IDX files from github.com/zalandoresearch/fashion-mnist, or torchvision's "
                      "datasets.FashionMNIST(root, download=True)"),
    "cifar10": (("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", "."),
                "the python version of CIFAR-10 (cifar-10-python.tar.gz, extracted: cifar-10-batches-py/), or "
                "torchvision's datasets.CIFAR10(root, download=True)"),
}


def read_idx(path) -> np.ndarray:
    """An IDX file (plain or gzipped) as a uint8 array; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it as an IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x}; only unsigned bytes (0x08) are image data")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {dims} ({int(np.prod(dims))} bytes) but holds "
                         f"{len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays; refuses every other global (no code can run)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only arrays and lists")


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (n, 3072) uint8 and labels (n,)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            batch = _ArraysOnly(io.BytesIO(fh.read()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no b'data' / b'labels')")
    X, y = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if X.ndim != 2 or X.shape[1] != 3072 or X.dtype != np.uint8 or y.shape != (X.shape[0],):
        raise ValueError(f"{path}: CIFAR-10 batch of shape {X.shape} ({X.dtype}) with {y.shape} labels; expected "
                         "(n, 3072) uint8 images and n labels")
    return X, y


def search_roots(data_home=None) -> list[Path]:
    """The folders searched, in order, before their usual sub-folders: data_home, $DRFM_DATA, ~/.cache/drfm."""
    return [Path(r).expanduser() for r in (data_home, os.environ.get("DRFM_DATA"),
                                           os.path.join("~", ".cache", "drfm")) if r]


def search_folders(name: str, data_home=None) -> list[Path]:
    """Every folder where the files of ``name`` are looked for, in order."""
    subs = LOCAL_SETS[name][0]
    out = []
    for root in search_roots(data_home):
        for sub in subs:
            folder = (root / sub).resolve() if sub != "." else root.resolve()
            if folder not in out:
                out.append(folder)
    return out


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / (stem + ".gz"), folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_split(folder: Path, split: str, name: str):
    images, labels = (_idx_path(folder, stem) for stem in _IDX_FILES[split])
    X, y = read_idx(images), read_idx(labels)
    if X.ndim != 3 or X.shape[1:] != (28, 28):
        raise ValueError(f"{images}: images of shape {X.shape[1:]}; {name} images are 28 x 28")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"{labels}: {y.shape} labels for the {len(X)} images of {images}")
    if y.size and y.max() > 9:
        raise ValueError(f"{labels}: label {int(y.max())}; {name} has classes 0-9")
    return X.reshape(len(X), -1), y.astype(np.int64)


def _has_set(name: str, folder: Path) -> bool:
    if name == "cifar10":
        return (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file()
    return all(_idx_path(folder, stem) is not None for split in _IDX_FILES.values() for stem in split)


def find_local(name: str, data_home=None) -> Path | None:
    """The first searched folder holding the files of ``name`` (not read or checked yet), or None."""
    for folder in search_folders(name, data_home):
        if folder.is_dir() and _has_set(name, folder):
            return folder
    return None


def load_local(name: str, data_home=None):
    """(X_train, y_train, X_test, y_test) of ``name`` from local files, pixels as uint8 (flattened), and the folder
    they came from; ``None`` when no searched folder holds the set (see :func:`search_folders`)."""
    for folder in search_folders(name, data_home):
        if not folder.is_dir() or not _has_set(name, folder):
            continue
        if name == "cifar10":
            parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)
                     if (folder / f"data_batch_{i}").is_file()]
            Xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            Xte, yte = read_cifar_batch(folder / "test_batch")
            for labels, where in ((ytr, "data_batch_*"), (yte, "test_batch")):
                if labels.size and (labels.min() < 0 or labels.max() > 9):
                    raise ValueError(f"{folder / where}: labels outside 0-9")
            return Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64), folder
        Xtr, ytr = _read_idx_split(folder, "train", name)
        Xte, yte = _read_idx_split(folder, "test", name)
        return Xtr, ytr, Xte, yte, folder
    return None


def missing_message(name: str, data_home=None) -> str:
    where = "\n  ".join(str(p) for p in search_folders(name, data_home))
    return (f"dataset {name!r} was not found in any of:\n  {where}\nGet {LOCAL_SETS[name][1]}, put the files in one "
            "of these folders, or name the folder holding them: data_home= in Python, --data-home in the drfm "
            "command, or the DRFM_DATA environment variable.")
