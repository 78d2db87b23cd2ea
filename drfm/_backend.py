"""Device / dtype / RNG resolution shared by drfm estimators (numpy in, torch inside)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import check_random_state

from kernels.memory import default_memory_budget

from ._params import InvalidParameterError

__all__ = ["resolve_device", "resolve_dtype", "make_generator", "resolve_budget", "to_tensor", "finite_tensor",
           "standardization"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str, owner: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an explicit accelerator that is not present is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"The 'device' parameter of {owner} must be 'auto', 'cpu' or an available device. "
                f"Got {device!r} instead (CUDA is not available on this machine)."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidParameterError(
                f"The 'device' parameter of {owner} names {device!r}, but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist."
            )
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidParameterError(
            f"The 'device' parameter of {owner} must be 'auto', 'cpu' or an available device. "
            f"Got {device!r} instead (MPS is not available on this machine)."
        )
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    return _DTYPES[dtype]


def make_generator(random_state) -> torch.Generator:
    """A local CPU ``torch.Generator`` seeded from ``random_state`` (int, RandomState or None); global RNGs untouched."""
    if random_state is None:  # fresh OS entropy: numpy's global RandomState is not drawn from (nor moved)
        seed = int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
    else:
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    return torch.Generator(device="cpu").manual_seed(seed)


def resolve_budget(memory_budget, device: torch.device) -> int:
    return int(memory_budget) if memory_budget is not None else default_memory_budget(device)


def standardization(X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, scale) of the training data (constant features keep scale 1), or (0, 1) when disabled."""
    if not enabled:
        return np.zeros(X.shape[1]), np.ones(X.shape[1])
    # float64, and relative to each feature's largest |value|: squares of float32 features beyond ~1e19 (or float64
    # beyond ~1e154) would overflow
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(over="ignore"):
        scale = X.std(0)
    if not np.all(np.isfinite(scale)):
        peak = np.abs(X).max(0)
        peak = np.where(peak > 0, peak, 1.0)
        scale = (X / peak).std(0) * peak
    return X.mean(0), np.where(scale > 0, scale, 1.0)


def to_tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    arr = np.ascontiguousarray(a)
    if not arr.flags.writeable:
        # read-only input (pandas 3's copy-on-write frames, np.broadcast_to, memory maps): torch would share it and
        # warn that it is not writable; a private copy is what the fit may write into anyway
        arr = arr.copy()
    return torch.as_tensor(arr, device=device).to(dtype)


def finite_tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device, what: str = "X") -> torch.Tensor:
    """:func:`to_tensor`, refusing values that overflow the working precision (finite input becoming inf)."""
    t = to_tensor(a, dtype, device)
    name = str(dtype).replace("torch.", "")
    if not bool(torch.isfinite(t).all()):
        big = float(np.max(np.abs(a)))
        raise ValueError(f"{what} has values beyond the {name} range (largest |value| {big:.3g}): standardise the "
                         "data, or use dtype='float64'.")
    if what == "X" and t.numel():
        # kernel distances are formed from squared norms (one GEMM): those must not overflow either (row norms:
        # n values, no copy of X; an overflowing norm is inf and refused too)
        norm = float(torch.linalg.vector_norm(t, dim=1).max())
        if not norm**2 <= torch.finfo(dtype).max / 4:
            raise ValueError(f"{what} has rows whose squared norms overflow {name} (largest |x| {norm:.3g}): "
                             "standardise the data, or use dtype='float64'.")
    return t
