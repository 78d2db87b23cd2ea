"""Parameter constraints for drfm estimators, with scikit-learn's error-message style.

Each estimator declares ``_parameter_constraints = {name: [constraint, ...]}``; :func:`validate_params` checks every
parameter at the start of ``fit`` and raises :class:`InvalidParameterError` (a ``ValueError`` and a ``TypeError``)::

    The 'bandwidth' parameter of RFMRegressor must be a float in the range (0, inf). Got -1 instead.

We keep our own small implementation instead of importing scikit-learn's private ``_param_validation`` module.
"""
from __future__ import annotations

import numbers
import re

import numpy as np

__all__ = ["InvalidParameterError", "Interval", "Options", "InstanceOf", "NoneOK", "DeviceString", "plain_params",
           "validate_params"]


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter has an invalid type or value."""


def _fmt_bound(v):
    if v is None:
        return "inf"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v)


class Interval:
    """A real (``kind='float'``) or integral (``kind='int'``) number in an interval; bools are rejected."""

    def __init__(self, kind: str, left=None, right=None, *, closed: str = "both"):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, v) -> bool:
        if isinstance(v, (bool, np.bool_)):
            return False
        ok_type = isinstance(v, numbers.Integral) if self.kind == "int" else isinstance(v, numbers.Real)
        if not ok_type or np.isnan(float(v)):
            return False
        lo_open = self.closed in ("neither", "right")
        hi_open = self.closed in ("neither", "left")
        if self.left is not None and (v < self.left or (lo_open and v == self.left)):
            return False
        if self.right is not None and (v > self.right or (hi_open and v == self.right)):
            return False
        if self.right is None and self.kind == "float" and v == np.inf:
            return False
        return True

    def __str__(self):
        lb = "(" if self.closed in ("neither", "right") or self.left is None else "["
        rb = ")" if self.closed in ("neither", "left") or self.right is None else "]"
        left = "-inf" if self.left is None else _fmt_bound(self.left)
        noun = "an int" if self.kind == "int" else "a float"
        return f"{noun} in the range {lb}{left}, {_fmt_bound(self.right)}{rb}"


class Options:
    """One of a fixed set of strings."""

    def __init__(self, *values: str):
        self.values = values

    def is_satisfied_by(self, v) -> bool:
        return isinstance(v, str) and v in self.values

    def __str__(self):
        return "a str among {" + ", ".join(repr(v) for v in self.values) + "}"


class InstanceOf:
    def __init__(self, *types, name: str | None = None):
        self.types, self.name = types, name

    def is_satisfied_by(self, v) -> bool:
        if bool not in self.types and isinstance(v, bool):
            return False
        return isinstance(v, self.types)

    def __str__(self):
        return self.name or " or ".join(f"an instance of '{t.__name__}'" for t in self.types)


class _NoneOK:
    def is_satisfied_by(self, v) -> bool:
        return v is None

    def __str__(self):
        return "None"


NoneOK = _NoneOK()


class DeviceString:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."""

    _pat = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

    def is_satisfied_by(self, v) -> bool:
        return isinstance(v, str) and bool(self._pat.match(v))

    def __str__(self):
        return "a str among {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}"


BOOL = InstanceOf(bool, np.bool_, name="an instance of 'bool'")
RANDOM_STATE = [Interval("int", 0, 2**32 - 1, closed="both"), InstanceOf(np.random.RandomState), NoneOK]


def validate_params(estimator) -> None:
    """Check every parameter of ``estimator`` against its ``_parameter_constraints`` table."""
    name = type(estimator).__name__
    params = estimator.get_params(deep=False)
    for key, constraints in estimator._parameter_constraints.items():
        value = params[key]
        if any(c.is_satisfied_by(value) for c in constraints):
            continue
        texts = [str(c) for c in constraints]
        expected = texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]
        raise InvalidParameterError(f"The {key!r} parameter of {name} must be {expected}. Got {value!r} instead.")


def plain_params(estimator, drop=()) -> dict:
    """``get_params(deep=True)`` as plain values for reports and JSON: a nested estimator (a Deep RFM's layer
    template) appears through its ``layer__*`` parameters, not as an object; networks and ``drop`` are left out."""
    return {k: v for k, v in estimator.get_params(deep=True).items()
            if k not in drop and k != "module" and not hasattr(v, "get_params")}
