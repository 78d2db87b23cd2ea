"""Saving and loading fitted drfm models in a format that cannot run code when loaded.

A model file (format 2)::

    DRFM-MODEL 2\\n
    {"drfm_version": ..., "class": ..., "format": 2, ...}\\n     (one JSON line: metadata, read without loading)
    <npz archive>                                               (numpy's zip of arrays, read with allow_pickle=False)

The archive holds every array of the fitted model (numeric or text dtypes only) and one member ``state.json``: the
model as a JSON tree whose leaves are plain values or references to the arrays. Loading rebuilds it from an
allow-list -- the five drfm estimators, :class:`~drfm.deep.Layer`, :class:`~drfm.collapse.CollapseReport`, and
``torch.nn.Sequential`` networks of Linear layers, elementwise activations, Identity, Dropout and Flatten -- so a file
can describe data but never name code to run. Anything else in a file is refused with :class:`ModelFileError`.

Format 1 files (``DRFM-MODEL 1``, written by earlier drfm versions) are pickles, which can run code when loaded: they
are refused unless ``allow_pickle=True`` (``drfm predict --allow-pickle``) says the file is trusted.

Fitted state is stored as it is on the CPU, so a model fitted on a GPU loads on a machine without one;
``load_model(..., device=...)`` chooses where predictions run.
"""
from __future__ import annotations

import importlib
import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from .. import __version__
from .._backend import resolve_device
from .files import write_bytes

__all__ = ["FORMAT", "MAGIC", "ModelFileError", "load_model", "read_header", "save_model"]

FORMAT = 2
MAGIC = b"DRFM-MODEL 2\n"
_MAGIC_PREFIX = b"DRFM-MODEL "
_PICKLE_MAGIC = b"DRFM-MODEL 1\n"

#: the classes a model file may name (older module paths that re-export a moved class included)
_ESTIMATORS = {
    "drfm.rfm.RFMRegressor": ("drfm.rfm", "RFMRegressor"),
    "drfm.rfm.RFMClassifier": ("drfm.rfm", "RFMClassifier"),
    "drfm.deep.DeepRFMClassifier": ("drfm.deep", "DeepRFMClassifier"),
    "drfm.deep.DeepRFMRegressor": ("drfm.deep", "DeepRFMRegressor"),
    "drfm.mlp.TorchMLPClassifier": ("drfm.mlp", "TorchMLPClassifier"),
    "drfm.dnn.TorchMLPClassifier": ("drfm.mlp", "TorchMLPClassifier"),
}

#: torch modules a network in a model file may contain, with the constructor arguments kept
_MODULES = {
    "Linear": (), "ReLU": (), "Tanh": (), "Sigmoid": (), "SiLU": (), "Identity": (),
    "LeakyReLU": ("negative_slope",), "GELU": ("approximate",), "ELU": ("alpha",), "Softplus": ("beta", "threshold"),
    "Dropout": ("p",), "Flatten": ("start_dim", "end_dim"),
}


class ModelFileError(ValueError):
    """A file that is not a readable drfm model, or one that names something outside the allow-list."""


def _class_of(path: str):
    if not isinstance(path, str) or path not in _ESTIMATORS:
        raise ModelFileError(f"the model file names the class {path!r}, which is not a drfm estimator")
    module, name = _ESTIMATORS[path]
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------------------------------------
# encoding: a JSON tree plus named arrays
class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray, where: str) -> dict:
        obj = a.dtype == object
        if obj:
            if not all(isinstance(v, str) for v in a.ravel()):
                raise TypeError(f"cannot save {where}: an object array that is not all strings")
            a = a.astype(str)
        if a.dtype.kind not in "biufcUS":
            raise TypeError(f"cannot save {where}: arrays of dtype {a.dtype} are not supported")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = a
        return {"__array__": key, "object": bool(obj)}

    def __call__(self, v, where: str = "model"):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return self.array(v, where)
        if isinstance(v, torch.Tensor):
            return {"__tensor__": self.array(v.detach().cpu().numpy(), where)}
        if isinstance(v, tuple):
            return {"__tuple__": [self(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            return {"__dict__": [[self(k, where), self(x, f"{where}[{k!r}]")] for k, x in v.items()]}
        if isinstance(v, nn.Sequential):
            return self.sequential(v, where)
        if isinstance(v, BaseEstimator):
            return self.estimator(v, where)
        from ..collapse import CollapseReport
        from ..deep import Layer

        if isinstance(v, Layer):
            return {"__layer__": self({k: getattr(v, k) for k in v.__dataclass_fields__}, where)}
        if isinstance(v, CollapseReport):
            return {"__report__": self({"rows": v.rows, "meta": v.meta}, where)}
        raise TypeError(f"cannot save {where}: values of type {type(v).__name__} are not supported in model files")

    def estimator(self, est, where):
        path = f"{type(est).__module__}.{type(est).__name__}"
        _class_of(path)
        params = est.get_params(deep=False)
        state = {k: v for k, v in vars(est).items() if k not in params}
        return {"__estimator__": path, "params": self(params, f"{where}.params"), "state": self(state, where)}

    def sequential(self, net, where):
        specs = []
        for i, m in enumerate(net):
            kind = type(m).__name__
            if type(m) is not getattr(nn, kind, None) or kind not in _MODULES:
                raise TypeError(f"cannot save {where}: layer {i} ({kind}) is not a supported module")
            spec = {"type": kind, **{a: getattr(m, a) for a in _MODULES[kind]}}
            if kind == "Linear":
                spec.update(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None,
                            dtype=str(m.weight.dtype).replace("torch.", ""))
            specs.append(spec)
        return {"__sequential__": specs, "state": self(dict(net.state_dict()), where), "training": net.training}


# ---------------------------------------------------------------------------------------------------------------------
# decoding: only the allow-list
class _Decoder:
    def __init__(self, arrays):
        self.arrays = arrays

    def array(self, ref):
        key = ref.get("__array__")
        if key not in self.arrays:
            raise ModelFileError(f"the model file refers to a missing array {key!r}")
        a = self.arrays[key]
        return a.astype(object) if ref.get("object") else a

    def __call__(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self(x) for x in v]
        if not isinstance(v, dict) or len(v) == 0:
            raise ModelFileError("the model file holds a value drfm does not write")
        if "__array__" in v:
            return self.array(v)
        if "__tensor__" in v:
            return torch.from_numpy(np.array(self.array(v["__tensor__"])))
        if "__tuple__" in v:
            return tuple(self(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {self(k): self(x) for k, x in v["__dict__"]}
        if "__sequential__" in v:
            return self.sequential(v)
        if "__estimator__" in v:
            cls = _class_of(v["__estimator__"])
            params, state = self(v["params"]), self(v["state"])
            if not isinstance(params, dict) or not isinstance(state, dict):
                raise ModelFileError("the model file holds an estimator without its parameters or state")
            known = set(cls._get_param_names())
            odd = [k for k in params if k not in known]
            if odd:
                raise ModelFileError(f"the model file gives {cls.__name__} parameters it does not have: {odd[:3]}")
            # fitted state is data: no key may shadow a method or property of the class, or a parameter
            odd = [k for k in state if not isinstance(k, str) or not k.isidentifier() or hasattr(cls, k)
                   or k in known]
            if odd:
                raise ModelFileError(f"the model file holds {cls.__name__} state under names drfm does not write: "
                                     f"{odd[:3]}")
            est = cls(**params)
            est.__dict__.update(state)
            return est
        if "__layer__" in v:
            from ..deep import Layer

            return Layer(**self(v["__layer__"]))
        if "__report__" in v:
            from ..collapse import CollapseReport

            return CollapseReport(**self(v["__report__"]))
        raise ModelFileError(f"the model file holds an unknown object {sorted(v)[:3]}")

    def sequential(self, v):
        specs, weights = v["__sequential__"], self(v["state"])
        if not isinstance(specs, list) or not isinstance(weights, dict):
            raise ModelFileError("the model file holds a network without its layers or weights")
        mods = []
        for i, spec in enumerate(specs):
            kind = spec.get("type") if isinstance(spec, dict) else None
            if not isinstance(kind, str) or kind not in _MODULES:
                raise ModelFileError(f"the model file names the module {kind!r}, which is not supported")
            if kind == "Linear":
                # the declared shape must be the stored weights' shape before anything is allocated for it
                n_in, n_out, dtype = spec.get("in_features"), spec.get("out_features"), spec.get("dtype")
                w, b = weights.get(f"{i}.weight"), weights.get(f"{i}.bias")
                if not (isinstance(n_in, int) and isinstance(n_out, int) and isinstance(w, torch.Tensor)
                        and tuple(w.shape) == (n_out, n_in) and dtype in ("float32", "float64", "float16")
                        and w.dtype == getattr(torch, dtype)
                        and (b is None) != bool(spec.get("bias")) and (b is None or tuple(b.shape) == (n_out,))):
                    raise ModelFileError(f"the model file's layer {i} (Linear) does not match its stored weights")
                mods.append(nn.Linear(n_in, n_out, bias=b is not None, dtype=getattr(torch, dtype), device="meta"))
            else:
                mods.append(getattr(nn, kind)(**{a: spec[a] for a in _MODULES[kind]}))
        net = nn.Sequential(*mods)
        net.load_state_dict(weights, assign=True)  # the stored tensors themselves: no second copy
        return net.train(bool(v.get("training", False)))


# ---------------------------------------------------------------------------------------------------------------------
def save_model(model, path, *, metadata: dict | None = None) -> Path:
    """Write a fitted drfm estimator to ``path`` (format 2: header + JSON + npz; no pickle); returns the path."""
    module = type(model).__module__
    if not (isinstance(model, BaseEstimator) and module.split(".")[0] == "drfm"):
        raise TypeError(f"save_model expects a fitted drfm estimator, got {type(model).__name__} from {module}")
    if not any(k.endswith("_") and not k.startswith("_") for k in vars(model)):
        raise ValueError(f"{type(model).__name__} is not fitted yet; call fit before saving it")
    if getattr(model, "backbone", None) is not None:
        raise TypeError(f"{type(model).__name__} with a backbone cannot be saved in drfm's model format (it stores "
                        "Linear networks only): save model.backbone_ and model.network_ with torch.save")
    enc = _Encoder()
    tree = enc(model)  # TypeError naming the attribute when something cannot be stored
    header = {
        "drfm_version": __version__,
        "format": FORMAT,
        "class": f"{module}.{type(model).__name__}",
        "n_features_in": int(getattr(model, "n_features_in_", -1)),
        "classes": [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])],
        "fitted_on_device": getattr(model, "device_", None),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(metadata or {}),
    }
    buf = io.BytesIO()
    state = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    np.savez(buf, **{"state.json": state, **enc.arrays})
    # to a temporary file renamed over ``path`` once complete: a failed save leaves a previous model intact
    return write_bytes(path, MAGIC + json.dumps(header, default=str).encode() + b"\n" + buf.getvalue(),
                       what="model file")


def _read_start(path: Path):
    """(magic line, parsed JSON header, offset of the payload); ``ModelFileError`` if it is not a drfm model."""
    if path.is_dir():
        raise ModelFileError(f"model file {str(path)!r} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        magic = fh.readline(64)
        if not magic.startswith(_MAGIC_PREFIX):
            raise ModelFileError(f"{str(path)!r} is not a drfm model file (it does not start with the drfm header; "
                                 f"model files are written by `drfm fit --save` or drfm.persistence.save_model)")
        line = fh.readline(1 << 20)
        offset = fh.tell()
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{str(path)!r} has a damaged drfm header: {exc}") from None
    if not isinstance(header, dict) or "class" not in header:
        raise ModelFileError(f"{str(path)!r} has a damaged drfm header (no model class)")
    header.setdefault("format", 1 if magic == _PICKLE_MAGIC else None)
    return magic, header, offset


def read_header(path) -> dict:
    """The JSON header of a model file (nothing else is read); ``ModelFileError`` if it is not a drfm model."""
    return _read_start(Path(path))[1]


def load_model(path, *, device: str = "cpu", allow_pickle: bool = False):
    """Load a model written by :func:`save_model`; predictions run on ``device`` ('cpu', 'cuda', 'auto').

    Format 2 files cannot run code. Format 1 files (pickles, from earlier drfm versions) are refused unless
    ``allow_pickle=True``: only pass it for files from a source you trust.
    """
    path = Path(path)
    magic, header, offset = _read_start(path)
    if magic == _PICKLE_MAGIC:
        if not allow_pickle:
            raise ModelFileError(
                f"{str(path)!r} is a format 1 drfm model file: a pickle, which can run code when loaded. Load it "
                "only if you trust its source, with allow_pickle=True (drfm predict --allow-pickle), and save it "
                "again to convert it."
            )
        model = _load_pickle(path, offset)
    elif magic == MAGIC:
        model = _load_v2(path, offset, header)
    else:
        version = magic[len(_MAGIC_PREFIX):].strip().decode(errors="replace")
        raise ModelFileError(f"{str(path)!r} is a drfm model file of format {version!r}; this drfm "
                             f"({__version__}) reads format {FORMAT} (and format 1 with allow_pickle=True)")
    if type(model) is not _class_of(header["class"]):
        got = f"{type(model).__module__}.{type(model).__name__}"
        raise ModelFileError(f"{str(path)!r} holds a {got}, but its header says {header['class']}")
    return _place(model, resolve_device(device, "load_model"))


#: dtypes of the arrays in a model file (numbers, booleans, text)
_ARRAY_KINDS = "biufcUS"


def _read_member(archive, info, payload_size: int) -> np.ndarray:
    """One .npy member, its header checked before anything is allocated: stored uncompressed (as drfm writes), no
    larger than the file, a numeric or text dtype, and a shape whose bytes fit the member."""
    import zipfile

    if info.compress_type != zipfile.ZIP_STORED or info.file_size > payload_size:
        raise ModelFileError(f"member {info.filename!r} is compressed or larger than the file")
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ModelFileError(f"member {info.filename!r} has an unknown .npy version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fh, max_header_size=10000)
        if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
            raise ModelFileError(f"member {info.filename!r} has dtype {dtype}, which drfm does not write")
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes > info.file_size - fh.tell():
            raise ModelFileError(f"member {info.filename!r} declares shape {shape} ({nbytes} bytes), more than it "
                                 "holds")
        data = fh.read(nbytes)
    a = np.frombuffer(data, dtype=dtype) if nbytes else np.zeros(0, dtype=dtype)
    return a.reshape(shape, order="F" if fortran else "C").copy()


def _array_refs(tree, out: set) -> set:
    """The array keys a state tree refers to."""
    if isinstance(tree, dict):
        if "__array__" in tree and isinstance(tree["__array__"], str):
            out.add(tree["__array__"])
        for v in tree.values():
            _array_refs(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _array_refs(v, out)
    return out


def _load_v2(path: Path, offset: int, header: dict):
    import zipfile

    size = path.stat().st_size - offset
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            with zipfile.ZipFile(io.BytesIO(fh.read())) as archive:
                members = {info.filename: info for info in archive.infolist()}
                if "state.json.npy" not in members:
                    raise ModelFileError("it has no state.json member")
                tree = json.loads(_read_member(archive, members.pop("state.json.npy"), size).tobytes().decode())
                wanted = {f"{k}.npy" for k in _array_refs(tree, set())}
                extra = sorted(set(members) - wanted)
                if extra:  # drfm writes only the arrays its state refers to
                    raise ModelFileError(f"member {extra[0]!r} is not one drfm writes")
                arrays = {name[:-4]: _read_member(archive, members[name], size) for name in wanted & set(members)}
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive means a damaged file
        raise ModelFileError(f"{str(path)!r} is a damaged drfm model file ({_why(exc)}){_written_by(header)}") from None
    try:
        return _Decoder(arrays)(tree)
    except Exception as exc:  # noqa: BLE001 - a tree drfm did not write
        raise ModelFileError(f"{str(path)!r} is a damaged drfm model file ({_why(exc)}){_written_by(header)}") from None


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ModelFileError) else f"{type(exc).__name__}: {exc}"


def _written_by(header: dict) -> str:
    """'; it was written by drfm X and this is drfm Y' when the versions differ (a newer writer may be the cause)."""
    version = header.get("drfm_version")
    if not isinstance(version, str) or version == __version__:
        return ""
    return f"; it was written by drfm {version} and this is drfm {__version__}"


def _load_pickle(path: Path, offset: int):
    with open(path, "rb") as fh:
        fh.seek(offset)
        try:
            return pickle.load(fh)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise ModelFileError(f"{str(path)!r} is a damaged drfm model file ({type(exc).__name__}: {exc})") from None


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
