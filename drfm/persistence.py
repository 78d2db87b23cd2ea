"""Saving and loading fitted drfm models.

A model file is a pickle behind a short text header::

    DRFM-MODEL 1\\n
    {"drfm_version": ..., "class": ..., "task": ..., ...}\\n      (one JSON line)
    <pickle bytes>

The header is read and checked before anything is unpickled, so a file that is not a drfm model (another pickle, a
CSV, a truncated file) is refused with a clear message without running any of its code. **The pickle part still runs
code when loaded: load model files only from sources you trust.**

Fitted state is stored on the CPU (numpy arrays; a trained network's ``__getstate__`` moves its tensors to the CPU),
so a model fitted on a GPU loads on a machine without one; ``load_model(..., device=...)`` chooses where predictions
run.
"""
from __future__ import annotations

import importlib
import json
import pickle
import time
from pathlib import Path

import torch
from sklearn.base import BaseEstimator

from . import __version__
from ._backend import resolve_device

__all__ = ["MAGIC", "ModelFileError", "load_model", "read_header", "save_model"]

MAGIC = b"DRFM-MODEL 1\n"


class ModelFileError(ValueError):
    """A file that is not a readable drfm model."""


def _estimators(obj):
    """``obj`` and the fitted estimators nested in it (e.g. a Deep RFM's final kernel machine)."""
    yield obj
    for value in vars(obj).values():
        if isinstance(value, BaseEstimator) and value is not obj:
            yield from _estimators(value)


def _place(model, device: torch.device):
    """Predictions of ``model`` (and of the estimators nested in it) run on ``device``: an estimator that holds
    tensors moves them itself (``_move_to``); the others keep numpy state and only record the device."""
    for est in _estimators(model):
        if hasattr(est, "_move_to"):
            est._move_to(device)
        elif hasattr(est, "device_"):
            est.device_ = str(device)
    return model


def save_model(model, path, *, metadata: dict | None = None) -> Path:
    """Write a fitted drfm estimator to ``path`` (header + pickle); returns the path."""
    module = type(model).__module__
    if not (isinstance(model, BaseEstimator) and module.split(".")[0] == "drfm"):
        raise TypeError(f"save_model expects a fitted drfm estimator, got {type(model).__name__} from {module}")
    if not any(k.endswith("_") and not k.startswith("_") for k in vars(model)):
        raise ValueError(f"{type(model).__name__} is not fitted yet; call fit before saving it")
    # estimators keep their pickled state on the CPU themselves (``__getstate__``); the header records the device
    portable = model
    header = {
        "drfm_version": __version__,
        "class": f"{module}.{type(model).__name__}",
        "n_features_in": int(getattr(model, "n_features_in_", -1)),
        "classes": [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])],
        "fitted_on_device": getattr(model, "device_", None),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(metadata or {}),
    }
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(MAGIC)
        fh.write(json.dumps(header, default=str).encode() + b"\n")
        pickle.dump(portable, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def read_header(path) -> dict:
    """The JSON header of a model file (nothing is unpickled); ``ModelFileError`` if it is not a drfm model."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"model file {str(path)!r} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC))
        if head != MAGIC:
            raise ModelFileError(f"{str(path)!r} is not a drfm model file (it does not start with the drfm header; "
                                 f"model files are written by `drfm fit --save` or drfm.persistence.save_model)")
        line = fh.readline(1 << 20)
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{str(path)!r} has a damaged drfm header: {exc}") from None
    if not isinstance(header, dict) or "class" not in header:
        raise ModelFileError(f"{str(path)!r} has a damaged drfm header (no model class)")
    return header


def _drfm_class(path: str):
    """The drfm class a header names (files written before a class moved name its old module, which re-exports it)."""
    module, _, name = path.rpartition(".")
    if module.split(".")[0] != "drfm":
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def load_model(path, *, device: str = "cpu"):
    """Load a model written by :func:`save_model`; predictions run on ``device`` ('cpu', 'cuda', 'auto').

    Only load files you trust: the model itself is a pickle.
    """
    header = read_header(path)
    with open(path, "rb") as fh:
        fh.read(len(MAGIC))
        fh.readline(1 << 20)
        try:
            model = pickle.load(fh)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise ModelFileError(f"{str(path)!r} is a damaged drfm model file ({type(exc).__name__}: {exc})") from None
    expected = header["class"]
    got = f"{type(model).__module__}.{type(model).__name__}"
    if got != expected and type(model) is not _drfm_class(expected):
        raise ModelFileError(f"{str(path)!r} holds a {got}, but its header says {expected}")
    return _place(model, resolve_device(device, "load_model"))
