"""Targets: validation, encoding, classes, and the shape of outputs -- shared by every drfm estimator."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

__all__ = ["accuracy_of_outputs", "decision_values", "encode_regression_targets", "one_hot_classes", "one_hot_of",
           "predict_labels", "r2_of_outputs", "regression_output", "validate_classification_data",
           "validate_regression_data"]

DTYPES = [np.float64, np.float32]


def label_kinds(y) -> set[str]:
    """The kinds of the labels in ``y``: 'text', 'number', or a type name (for the mixed-type check)."""
    y_arr = np.asarray(y)
    if y_arr.dtype.kind in "US":
        return {"text"} if y_arr.size else set()
    if y_arr.dtype.kind in "biuf":
        return {"number"} if y_arr.size else set()
    return {"text" if isinstance(v, (str, bytes)) else "number" if isinstance(v, (int, float, np.number))
            else type(v).__name__ for v in np.ravel(y_arr)}


def validate_classification_data(estimator, X, y, ensure_min_samples: int = 1):
    """``validate_data`` for a classifier's fit, plus the classification-target check (``ensure_min_samples=0``:
    a rank of a distributed fit may hold no rows)."""
    y_arr = np.asarray(y) if not hasattr(y, "dtype") else y
    if getattr(y_arr, "dtype", None) is not None and y_arr.dtype == object:
        kinds = label_kinds(y_arr)
        if len(kinds) > 1:
            raise ValueError(f"y mixes label types ({', '.join(sorted(kinds))}); give every label the same type "
                             "(e.g. all strings)")
    if ensure_min_samples == 0 and len(y_arr) == 0:
        return _no_rows(estimator, X, y_arr)
    X, y = validate_data(estimator, X, y, dtype=DTYPES)
    check_classification_targets(y)
    return X, y


def _no_rows(estimator, X, y):
    """A rank of a distributed fit holding no rows: X checked (features, dtype) with its 0 rows, y empty too."""
    X = validate_data(estimator, X, dtype=DTYPES, ensure_min_samples=0)
    if X.shape[0] != 0:
        raise ValueError(f"X has {X.shape[0]} rows but y has 0.")
    return X, np.asarray(y)


def validate_regression_data(estimator, X, y, ensure_min_samples: int = 1):
    """``validate_data`` for a regressor's fit (numeric, possibly multi-output targets)."""
    if ensure_min_samples == 0 and len(np.asarray(y)) == 0:
        X, y = _no_rows(estimator, X, y)
        return X, y.astype(np.float64)
    return validate_data(estimator, X, y, multi_output=True, y_numeric=True, dtype=DTYPES)


def one_hot_of(y, classes: np.ndarray) -> np.ndarray:
    """The (n, K) one-hot rows of labels ``y`` over ``classes`` (a label not among them: an all-zero row)."""
    return (np.asarray(y)[:, None] == classes[None, :]).astype(np.float64)


def one_hot_classes(y, owner: str):
    """Sorted class labels and the (n, K) one-hot target matrix; at least two classes are required."""
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{owner} needs samples of at least 2 classes in the data, but the data contain only "
            f"one class: {classes[0].item()!r}."
        )
    Y = np.zeros((len(y), len(classes)))
    Y[np.arange(len(y)), idx] = 1.0
    return classes, Y


def encode_regression_targets(estimator, y) -> np.ndarray:
    """(n, c) float targets; remembers on the estimator whether ``y`` was 1-D (``_y_ndim``) for the output shape."""
    y = np.asarray(y, dtype=np.float64)
    estimator._y_ndim = y.ndim
    return y.reshape(-1, 1) if y.ndim == 1 else y.reshape(len(y), -1)


def regression_output(estimator, out: np.ndarray) -> np.ndarray:
    """(n,) or (n, c) like the ``y`` given to fit."""
    return out[:, 0] if estimator._y_ndim == 1 else out


def decision_values(out: np.ndarray) -> np.ndarray:
    """Per-class outputs (n, K); for two classes the (n,) score of ``classes_[1]`` minus ``classes_[0]``."""
    return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out


def predict_labels(classes: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The class with the largest output."""
    return classes[np.argmax(out, axis=1)]


def r2_of_outputs(outputs: np.ndarray, y_true) -> float:
    return float(r2_score(np.asarray(y_true, dtype=np.float64).reshape(outputs.shape), outputs))


def accuracy_of_outputs(classes: np.ndarray):
    """A ``score(outputs, labels)`` function: accuracy of the argmax class."""
    def score(outputs: np.ndarray, y_true) -> float:
        return float(accuracy_score(y_true, predict_labels(classes, outputs)))

    return score


#: predict_proba's softmax temperature without validation data, per unit of the target encoding's range (one-hot
#: targets: 0.1; +-1 targets: 0.2): a perfect output vector e_k then gets probability ~0.9996 among 10 classes
DEFAULT_TEMPERATURE = 0.1


def softmax_proba(out: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities ``softmax(out / temperature)`` per row: they sum to 1, keep the argmax of ``out`` and grow
    with each class's output."""
    z = np.asarray(out, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(out: np.ndarray, y_true, classes: np.ndarray) -> float:
    """The temperature minimising the log-loss of :func:`softmax_proba` on held-out outputs (temperature scaling,
    Guo et al. 2017): a grid over [1e-3, 10] in log scale, then golden-section refinement around its best point."""
    idx = np.searchsorted(classes, np.asarray(y_true))
    rows = np.arange(len(idx))

    def loss(log_t):
        p = softmax_proba(out, np.exp(log_t))
        return -float(np.mean(np.log(np.clip(p[rows, idx], 1e-300, None))))

    grid = np.linspace(np.log(1e-3), np.log(10.0), 41)
    k = int(np.argmin([loss(g) for g in grid]))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))
